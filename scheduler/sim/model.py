"""What the simulator runs: jobs from a trace, and the policies it compares.

A trace adapter (`scheduler.sim.traces`) turns a trace into `SimJob`s; the engine
(`scheduler.sim.engine`) plays them against a `ClusterSnapshot` under each `SimPolicy`. Every
policy answers with the `Plan` type of `scheduler.policy`, so `mesh` is the controller's own
`plan()` and the baselines are held to the same contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler.cluster import ClusterSnapshot
from scheduler.policy import BundleAssignment, JobDemand, Plan, QueuedJob, RunningJob


@dataclass(frozen=True)
class SimJob:
    """One job of a trace.

    `demand` is what the policy sees (its `job` is this job's id; `runtime_s` the expected
    runtime the policy is told, when the trace has one). `duration_s` is how long it really runs
    on the reference GPU speed; `durations` (Gavel) gives the duration per GPU model instead:
    a job whose bundles hold several models runs at the pace of the slowest.
    """

    demand: JobDemand
    arrival_s: float
    duration_s: float
    durations: Mapping[str, float] | None = None

    @property
    def id(self) -> str:
        return self.demand.job

    def duration_on(self, models: Sequence[str]) -> float:
        """How long the job runs when its bundles hold GPUs of `models` (empty: CPU only)."""
        if self.durations is None or not models:
            return self.duration_s
        known = [self.durations[m] for m in models if m in self.durations]
        return max(known) if len(known) == len(models) else self.duration_s


@dataclass(frozen=True)
class Trace:
    """The jobs of one trace in arrival order, and what the adapter had to leave out."""

    jobs: tuple[SimJob, ...]
    source: str
    dropped: int = 0  # jobs the adapter could not use (e.g. no throughput entry)
    dropped_why: str = ""


class SimPolicy(Protocol):
    """A scheduling policy as the simulator calls it, exactly as the controller calls `plan()`."""

    name: str

    def plan(
        self,
        snapshot: ClusterSnapshot,
        queue: Sequence[QueuedJob],
        running: Sequence[RunningJob],
        now: float,
    ) -> Plan: ...

    def checkpoint_interval_s(
        self, demand: JobDemand, bundles: Sequence[BundleAssignment], snapshot: ClusterSnapshot
    ) -> float:
        """Seconds between checkpoints of a job placed on `bundles` (work since the last one is
        lost when a node goes down)."""
        ...
