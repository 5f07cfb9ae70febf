"""Value types of the policy: what it is asked (demands) and what it answers (a plan).

Internal units are integers so that accounting never drifts: CPU in thousandths of a core
(milli), memory in MiB, a GPU's capacity in thousandths (1000 = one whole GPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.spec import JobSpec

GPU_MILLI = 1000

PRIORITY_NAMES = {0: "low", 1: "normal", 2: "high"}


def cpu_milli(cpus: float) -> int:
    return math.ceil(round(cpus * 1000, 6))


def mib(gb: float) -> int:
    return math.ceil(round(gb * 1024, 6))


@dataclass(frozen=True)
class BundleDemand:
    """One bundle: what one worker, shard or replica needs on a single node."""

    gpus: int
    cpu_milli: int
    memory_mib: int
    gpu_memory_mib: int | None = None  # needed on each GPU
    gpu_milli: int | None = None  # an explicit share of each GPU (traces); else from memory

    def share_on(self, gpu_memory_mib: int, exclusive: bool) -> int:
        """The thousandths of a GPU with `gpu_memory_mib` this bundle takes there."""
        if exclusive:
            return GPU_MILLI
        if self.gpu_milli is not None:
            return self.gpu_milli
        if self.gpu_memory_mib is not None and self.gpu_memory_mib < gpu_memory_mib:
            return max(1, math.ceil(round(self.gpu_memory_mib * GPU_MILLI / gpu_memory_mib, 6)))
        return GPU_MILLI


@dataclass(frozen=True)
class JobDemand:
    """Everything the policy needs to know about a job, independent of its kind.

    All bundles of a job are alike (DESIGN.md "Bundles"): one per worker, shard or replica.
    """

    job: str  # community/name
    community: str
    priority: int  # 0 low, 1 normal, 2 high
    bundles: tuple[BundleDemand, ...]
    placement: str = "pack"  # pack | spread | strict_pack
    exclusive: bool = False
    preemptible: bool = False
    gpu_models: frozenset[str] | None = None  # allowed catalogue names
    min_cc: tuple[int, int] | None = None
    runtime_s: float | None = None  # expected runtime; None = runs until stopped
    submitted_at: float = 0.0
    speed_sensitive: bool = False  # finishes sooner on faster GPUs (training, batch inference)
    kind: str = ""

    @property
    def gpus(self) -> int:
        one = self._repeated()
        return one.gpus * len(self.bundles) if one else sum(b.gpus for b in self.bundles)

    @property
    def bundles_key(self) -> tuple[object, ...]:
        """The bundles as a key that is cheap to hash: (bundle, count) when they are one object
        repeated (the usual case), else the bundles themselves."""
        one = self._repeated()
        return (one, len(self.bundles)) if one else self.bundles

    def _repeated(self) -> BundleDemand | None:
        """The bundle when all bundles are that one object (checked by identity, cheaply)."""
        b = self.bundles
        return b[0] if b and all(x is b[0] for x in b) else None


def demand_from_spec(spec: JobSpec, submitted_at: float = 0.0) -> JobDemand:
    """The policy's view of a validated job spec (DESIGN.md "Bundles")."""
    r = spec.resources
    kind = spec.kind.value
    bundle = BundleDemand(
        gpus=spec.gpus_per_bundle,
        cpu_milli=cpu_milli(r.cpus),
        memory_mib=mib(r.memory_gb),
        gpu_memory_mib=mib(r.gpu_memory_gb) if r.gpu_memory_gb is not None else None,
    )
    return JobDemand(
        job=spec.job_id,
        community=spec.community,
        priority=spec.priority.order,
        bundles=(bundle,) * spec.bundle_count,
        placement=r.placement.value,
        exclusive=bool(r.exclusive),
        preemptible=spec.preemptible,
        gpu_models=frozenset(r.gpu_types) if r.gpu_types else None,
        min_cc=r.min_compute_capability,
        runtime_s=spec.default_runtime_s,
        submitted_at=submitted_at,
        speed_sensitive=kind in ("FineTune", "BatchInference"),
        kind=kind,
    )


@dataclass(frozen=True)
class BundleAssignment:
    """A bundle bound to a node and to GPU indices there, each at `gpu_milli` thousandths."""

    node: str
    gpus: tuple[int, ...]
    gpu_milli: int = GPU_MILLI

    @property
    def gpu_fraction(self) -> float:
        return self.gpu_milli / GPU_MILLI if self.gpus else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "gpus": list(self.gpus), "gpu_fraction": self.gpu_fraction}


@dataclass(frozen=True)
class QueuedJob:
    demand: JobDemand

    @classmethod
    def from_spec(cls, spec: JobSpec, submitted_at: float = 0.0) -> QueuedJob:
        return cls(demand_from_spec(spec, submitted_at))


@dataclass(frozen=True)
class RunningJob:
    demand: JobDemand
    bundles: tuple[BundleAssignment, ...]
    started_at: float = 0.0
    attained_gpu_seconds: float = 0.0
    checkpointed_at: float | None = None  # last checkpoint; work since then is lost on preemption

    def expected_end(self, now: float) -> float:
        if self.demand.runtime_s is None:
            return math.inf
        return max(self.started_at + self.demand.runtime_s, now)

    def gpus_held(self) -> float:
        return sum(len(b.gpus) * b.gpu_milli for b in self.bundles) / GPU_MILLI


@dataclass(frozen=True)
class Placement:
    job: str
    bundles: tuple[BundleAssignment, ...]

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "bundles": [b.to_json() for b in self.bundles]}


@dataclass(frozen=True)
class Preemption:
    job: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "reason": self.reason}


@dataclass(frozen=True)
class Waiting:
    job: str
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...] = ()
    preemptions: tuple[Preemption, ...] = ()
    waiting: tuple[Waiting, ...] = ()
    # Start times reserved for blocked jobs (job -> time), so callers can show them.
    reservations: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "placements": [p.to_json() for p in self.placements],
            "preemptions": [p.to_json() for p in self.preemptions],
            "waiting": [w.to_json() for w in self.waiting],
        }
