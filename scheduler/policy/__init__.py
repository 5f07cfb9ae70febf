"""Pure placement and queueing policy: no ray, no clock, no randomness, no I/O.

`plan(snapshot, queue, running, now) -> Plan` is the one decision function; the controller,
`meshctl plan` and the simulator all call it.
"""

from scheduler.policy.model import (
    BundleAssignment,
    BundleDemand,
    JobDemand,
    Placement,
    Plan,
    Preemption,
    QueuedJob,
    RunningJob,
    Waiting,
    demand_from_spec,
)
from scheduler.policy.packing import Placer, Shape, profile_of
from scheduler.policy.planner import plan, queue_order

__all__ = [
    "BundleAssignment",
    "BundleDemand",
    "JobDemand",
    "Placement",
    "Placer",
    "Plan",
    "Preemption",
    "QueuedJob",
    "RunningJob",
    "Shape",
    "Waiting",
    "demand_from_spec",
    "plan",
    "profile_of",
    "queue_order",
]
