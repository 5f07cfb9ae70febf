"""Seeded synthetic inputs for the simulator where no public trace fits: a volunteer fleet (home
PCs, workstations, lab servers, each kind with its own reliability) and a job stream.

Stated with every result that uses them. Deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from scheduler import gpus
from scheduler.cluster import ClusterSnapshot, Gpu, Node
from scheduler.policy import BundleDemand, JobDemand
from scheduler.sim.model import SimJob, Trace


@dataclass(frozen=True)
class MachineKind:
    name: str
    share: float  # of the fleet's GPUs
    models: tuple[str, ...]
    gpus: tuple[int, ...]  # GPU counts a machine of this kind may have
    cpus: int
    memory_gb: int
    mtbf_h: float | None  # mean; None: always on (a lab server in a machine room)


# A community fleet: many home PCs with one or two consumer GPUs that come and go, some
# workstations, a few lab servers that stay up.
VOLUNTEER_MIX = (
    MachineKind("home", 0.45, ("RTX-3060", "RTX-3090", "RTX-4090"), (1, 1, 2), 16, 64, 24.0),
    MachineKind("ws", 0.20, ("RTX-A6000", "RTX-4090"), (1, 2), 32, 128, 200.0),
    MachineKind("lab", 0.35, ("A100-80GB", "L40S"), (4, 8), 64, 512, None),
)


def volunteer_fleet(total_gpus: int, seed: int = 0) -> ClusterSnapshot:
    """About `total_gpus` GPUs in machines of VOLUNTEER_MIX, each with its kind's MTBF."""
    rng = random.Random(seed)
    nodes: list[Node] = []
    for kind in VOLUNTEER_MIX:
        want, have, i = round(total_gpus * kind.share), 0, 0
        while have < want:
            model = gpus.resolve(rng.choice(kind.models))
            count = min(rng.choice(kind.gpus), want - have)
            nodes.append(
                Node(
                    name=f"{kind.name}-{i:05d}",
                    cpus=kind.cpus,
                    memory_gb=kind.memory_gb,
                    gpus=tuple(
                        Gpu(g, model.name, model.memory_gb, model.compute_capability)
                        for g in range(count)
                    ),
                    mtbf_h=kind.mtbf_h,
                )
            )
            have, i = have + count, i + 1
    return ClusterSnapshot(tuple(nodes))


def job_stream(
    n: int,
    *,
    seed: int = 0,
    communities: int = 8,
    mean_interarrival_s: float = 30.0,
    median_duration_s: float = 3600.0,
    sigma: float = 1.2,
) -> Trace:
    """`n` fine-tunes: Poisson arrivals, lognormal durations, 1/2/4/8 GPUs (70/15/10/5%)."""
    rng = random.Random(seed)
    jobs, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(1.0 / mean_interarrival_s)
        duration = median_duration_s * math.exp(rng.gauss(0.0, sigma))
        g = rng.choices((1, 2, 4, 8), weights=(70, 15, 10, 5))[0]
        community = f"c{rng.randrange(communities)}"
        bundle = BundleDemand(gpus=1, cpu_milli=2000, memory_mib=8192)
        demand = JobDemand(
            job=f"{community}/j{i}",
            community=community,
            priority=1,
            bundles=(bundle,) * g,
            exclusive=True,
            preemptible=True,
            runtime_s=duration,
            submitted_at=t,
            speed_sensitive=True,
            kind="FineTune",
        )
        jobs.append(SimJob(demand=demand, arrival_s=t, duration_s=duration))
    return Trace(tuple(jobs), source=f"job_stream(n={n}, seed={seed})")
