"""The policies `meshctl sim` compares, by name: ours (`mesh`) and the baselines.

`mesh` is the controller's own `scheduler.policy.plan`, with Daly's checkpoint interval for each
placement; the baselines (`scheduler.sim.baselines`) checkpoint every hour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from scheduler.cluster import ClusterSnapshot
from scheduler.policy import BundleAssignment, JobDemand, Plan, QueuedJob, RunningJob, plan
from scheduler.policy.checkpoint import placement_mtbf_s, young_daly_interval_s
from scheduler.sim.baselines import BestFit, FifoFirstFit, Las, RayDefault
from scheduler.sim.model import SimPolicy

DEFAULT_CHECKPOINT_COST_S = 60.0


class MeshPolicy:
    """Ours: exactly what the controller runs."""

    name = "mesh"

    def __init__(self, checkpoint_cost_s: float = DEFAULT_CHECKPOINT_COST_S) -> None:
        self.checkpoint_cost_s = checkpoint_cost_s

    def plan(
        self,
        snapshot: ClusterSnapshot,
        queue: Sequence[QueuedJob],
        running: Sequence[RunningJob],
        now: float,
    ) -> Plan:
        return plan(snapshot, queue, running, now)

    def checkpoint_interval_s(
        self, demand: JobDemand, bundles: Sequence[BundleAssignment], snapshot: ClusterSnapshot
    ) -> float:
        nodes = {b.node for b in bundles}
        mtbf = placement_mtbf_s(snapshot.node(n).mtbf_h for n in sorted(nodes))
        return young_daly_interval_s(self.checkpoint_cost_s, mtbf)


BASELINES: dict[str, Callable[[], SimPolicy]] = {
    "fifo-firstfit": FifoFirstFit,
    "las": Las,
    "best-fit": BestFit,
    "ray-default": RayDefault,
}


POLICY_NAMES = ("mesh", "fifo-firstfit", "las", "best-fit", "ray-default")


def policy_by_name(name: str, *, checkpoint_cost_s: float = DEFAULT_CHECKPOINT_COST_S) -> SimPolicy:
    """A fresh policy; ValueError naming the valid names for an unknown one."""
    if name == "mesh":
        return MeshPolicy(checkpoint_cost_s)
    if name not in BASELINES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return BASELINES[name]()
