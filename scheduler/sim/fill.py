"""FGD's "fill" experiment: how many GPUs a packer leaves unallocated as a fleet fills up.

The procedure is the one of Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads
with Fragmentation Gradient Descent" (USENIX ATC'23), run on their Alibaba openb data
(alibaba/clusterdata, cluster-trace-gpu-v2023; read in place from ../shared/traces):

1. Read the fleet (a `FleetNode` per row of a node list) and a pod population (a `Pod` per row).
2. Draw the arrival sequence once from `random.Random(seed)`: pods uniformly with replacement from
   the population, until the GPUs requested by all arrived pods reach `until` x the fleet's
   capacity. It does not depend on where pods land, so one seed gives every packer the same pods.
3. Offer each arriving pod to the packer once. Pods never leave; a pod that fits nowhere fails.
4. When the GPUs requested first reach each checkpoint fraction of capacity, record the GPUs left
   unallocated (capacity minus what placed pods hold, fractions included) and the pods failed.

A packer keeps its own view of the fleet; `fill` only offers pods and reads its allocated total.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from scheduler.gpus import resolve

OPENB = "alibaba-openb-2023"
LISTS = {
    "default": "openb_pod_list_default.csv",
    "gpushare40": "openb_pod_list_gpushare40.csv",
    "multigpu30": "openb_pod_list_multigpu30.csv",
    "gpuspec10": "openb_pod_list_gpuspec10.csv",
}
NODE_LISTS = {
    "gpu_node": "openb_node_list_gpu_node.csv",
    "all_node": "openb_node_list_all_node.csv",
}
WHOLE_GPU_MILLI = 1000


@dataclass(frozen=True)
class Pod:
    """One openb pod: a single bundle that must fit on one node.

    `num_gpu` 0 is a CPU-only pod; 1 with `gpu_milli` < 1000 is a shared fraction of one GPU;
    otherwise `num_gpu` whole GPUs (`gpu_milli` 1000). `gpu_spec` lists the GPU models (catalogue
    names) the pod accepts; None accepts any.
    """

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0:
            raise ValueError(f"pod {self.name}: cpu_milli and memory_mib must be >= 0")
        if self.num_gpu < 0:
            raise ValueError(f"pod {self.name}: num_gpu must be >= 0, got {self.num_gpu}")
        if self.num_gpu == 0 and self.gpu_milli != 0:
            raise ValueError(f"pod {self.name}: gpu_milli must be 0 when num_gpu is 0")
        if self.num_gpu == 1 and not 0 < self.gpu_milli <= WHOLE_GPU_MILLI:
            raise ValueError(f"pod {self.name}: gpu_milli must be in 1..1000, got {self.gpu_milli}")
        if self.num_gpu > 1 and self.gpu_milli != WHOLE_GPU_MILLI:
            raise ValueError(
                f"pod {self.name}: {self.num_gpu} GPUs must be whole (gpu_milli 1000), "
                f"got {self.gpu_milli}"
            )

    @property
    def gpu_demand_milli(self) -> int:
        """Thousandths of a GPU the pod holds in all: 460 for a 0.46 share, 8000 for 8 GPUs."""
        return self.num_gpu * self.gpu_milli

    @property
    def is_gpu_share(self) -> bool:
        """True for a fraction of one GPU, which may share that GPU with other pods."""
        return self.num_gpu == 1 and self.gpu_milli < WHOLE_GPU_MILLI


@dataclass(frozen=True)
class FleetNode:
    """One node of the fleet as the node list describes it (empty)."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpu_count: int
    gpu_model: str | None


class Packer(Protocol):
    """A placement rule with its own view of the fleet; `fill` offers it each pod once."""

    name: str

    def place(self, pod: Pod) -> bool:
        """Put `pod` on one node where CPU, memory, GPUs and model all fit; False if none does."""
        ...

    def allocated_gpu_milli(self) -> int:
        """Thousandths of a GPU held by the pods placed so far."""
        ...


PackerFactory = Callable[[Sequence[FleetNode], Sequence[tuple[Pod, float]]], Packer]
"""(fleet, pod-type distribution with weights summing to 1) -> a fresh packer on the empty fleet."""


class TraceNotFoundError(FileNotFoundError):
    """The openb trace folder is missing; the message says where it looked and how to fix it."""


def trace_dir() -> Path:
    """The openb folder: `$MESH_TRACES/alibaba-openb-2023`, or `../shared/traces/...` by the repo.

    `MESH_TRACES` names the traces folder (the one that holds `alibaba-openb-2023/`); the openb
    folder itself is accepted too.
    """
    override = os.environ.get("MESH_TRACES")
    if override:
        base = Path(override)
        candidates = [base / OPENB, base]
        origin = f"MESH_TRACES={override}"
    else:
        repo = Path(__file__).resolve().parents[2]
        candidates = [repo.parent / "shared" / "traces" / OPENB]
        origin = f"the default beside the repository ({repo})"
    for folder in candidates:
        if (folder / NODE_LISTS["gpu_node"]).is_file():
            return folder
    raise TraceNotFoundError(
        f"the Alibaba openb trace is not at {candidates[0]} ({origin}). To fix: set MESH_TRACES "
        f"to the traces folder that holds {OPENB}/ (the project reads ../shared/traces)."
    )


def _int_field(row: dict[str, str], column: str, where: str) -> int:
    raw = row.get(column)
    if raw is None:
        raise ValueError(f"{where}: no {column!r} column")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{where}: {column} must be an integer, got {raw!r}") from None


def _catalogue_name(raw: str, where: str) -> str:
    try:
        return resolve(raw).name
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def read_nodes(path: str | Path) -> list[FleetNode]:
    """The fleet from an openb node list (`sn,cpu_milli,memory_mib,gpu,model`), in file order."""
    p = Path(path)
    nodes: list[FleetNode] = []
    with p.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            where = f"{p.name}:{line}"
            model = (row.get("model") or "").strip()
            nodes.append(
                FleetNode(
                    name=row.get("sn") or f"node-{line - 2}",
                    cpu_milli=_int_field(row, "cpu_milli", where),
                    memory_mib=_int_field(row, "memory_mib", where),
                    gpu_count=_int_field(row, "gpu", where),
                    gpu_model=_catalogue_name(model, where) if model else None,
                )
            )
    return nodes


def read_pods(path: str | Path) -> list[Pod]:
    """The pods of an openb pod list, in file order; a missing `gpu_spec` column means any model."""
    p = Path(path)
    pods: list[Pod] = []
    with p.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            where = f"{p.name}:{line}"
            spec = (row.get("gpu_spec") or "").strip()
            models = (
                frozenset(_catalogue_name(m.strip(), where) for m in spec.split("|") if m.strip())
                if spec
                else None
            )
            try:
                pods.append(
                    Pod(
                        name=row.get("name") or f"pod-{line - 2}",
                        cpu_milli=_int_field(row, "cpu_milli", where),
                        memory_mib=_int_field(row, "memory_mib", where),
                        num_gpu=_int_field(row, "num_gpu", where),
                        gpu_milli=_int_field(row, "gpu_milli", where),
                        gpu_spec=models or None,
                    )
                )
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
    return pods


def pod_type_distribution(pods: Sequence[Pod]) -> list[tuple[Pod, float]]:
    """Each distinct pod shape (cpu, memory, GPUs, share, models) with its frequency in `pods`.

    The representative pod of a shape is its first occurrence. Ordered by frequency, most common
    first, then by first occurrence; the weights sum to 1.
    """
    counts: dict[tuple[object, ...], int] = {}
    first: dict[tuple[object, ...], Pod] = {}
    for pod in pods:
        key = (pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.gpu_milli, pod.gpu_spec)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, pod)
    order = sorted(counts, key=lambda k: -counts[k])  # stable: ties keep first-occurrence order
    return [(first[k], counts[k] / len(pods)) for k in order]


@dataclass(frozen=True)
class Checkpoint:
    """The state of a fill when the GPUs requested first reached `fraction` x capacity."""

    fraction: float
    arrived: int
    failed: int
    unallocated_gpus: float


@dataclass(frozen=True)
class FillResult:
    """One packer's fill of one fleet with one seed; GPU figures are in GPUs, not fractions."""

    packer: str
    seed: int
    gpus_total: float
    unallocated_at_100: float
    unallocated_at_130: float
    failed_at_100: int
    failed_at_130: int
    arrived_at_130: int
    checkpoints: tuple[Checkpoint, ...] = field(default=())

    @property
    def unallocated_fraction_100(self) -> float:
        return self.unallocated_at_100 / self.gpus_total

    @property
    def unallocated_fraction_130(self) -> float:
        return self.unallocated_at_130 / self.gpus_total


def _threshold_milli(fraction: float, capacity_milli: int) -> int:
    # 1.3 * 10_000 is 13000.000000000002 in floating point; the rounding keeps it 13000.
    return math.ceil(round(fraction * capacity_milli, 6))


def arrivals(pods: Sequence[Pod], capacity_milli: int, seed: int, until: float) -> list[Pod]:
    """Pods drawn uniformly with replacement until their GPU demand reaches `until` x capacity."""
    if not pods:
        raise ValueError("no pods to draw from")
    if not any(pod.gpu_demand_milli for pod in pods):
        raise ValueError("no pod in the list requests a GPU, so the fill would never end")
    rng = random.Random(seed)
    target = _threshold_milli(until, capacity_milli)
    drawn: list[Pod] = []
    requested = 0
    while requested < target:
        pod = pods[rng.randrange(len(pods))]
        drawn.append(pod)
        requested += pod.gpu_demand_milli
    return drawn


def _check_checkpoints(checkpoints: Iterable[float], until: float) -> tuple[float, ...]:
    marks = tuple(sorted(set(checkpoints)))
    missing = [c for c in (1.0, 1.3) if c not in marks]
    if missing:
        raise ValueError(
            f"checkpoints must include 1.0 and 1.3, which FillResult reports; got {marks}"
        )
    if marks[0] <= 0 or marks[-1] > until:
        raise ValueError(f"checkpoints must lie in (0, until={until}]; got {marks}")
    return marks


def fill(
    nodes: Sequence[FleetNode],
    pods: Sequence[Pod],
    factory: PackerFactory,
    seed: int,
    *,
    until: float = 1.3,
    checkpoints: Iterable[float] = (1.0, 1.3),
) -> FillResult:
    """FGD's fill of `nodes` with pods drawn from `pods` by `seed`, placed by `factory`'s packer."""
    marks = _check_checkpoints(checkpoints, until)
    capacity_milli = sum(node.gpu_count for node in nodes) * WHOLE_GPU_MILLI
    if capacity_milli == 0:
        raise ValueError("the fleet has no GPUs")

    # 1. The arrival sequence, drawn once and independent of placement.
    sequence = arrivals(pods, capacity_milli, seed, until)
    # 2. A fresh packer, told the pod-type distribution it will see.
    packer = factory(nodes, pod_type_distribution(pods))
    thresholds = [_threshold_milli(mark, capacity_milli) for mark in marks]

    # 3. Offer each pod once; record each checkpoint as the requested GPUs first reach it.
    recorded: list[Checkpoint] = []
    requested = failed = 0
    for arrived, pod in enumerate(sequence, start=1):
        if not packer.place(pod):
            failed += 1
        requested += pod.gpu_demand_milli
        while len(recorded) < len(marks) and requested >= thresholds[len(recorded)]:
            allocated = packer.allocated_gpu_milli()
            if not 0 <= allocated <= capacity_milli:
                raise RuntimeError(
                    f"packer {packer.name} reports {allocated} GPU milli allocated on a fleet of "
                    f"{capacity_milli}"
                )
            recorded.append(
                Checkpoint(
                    fraction=marks[len(recorded)],
                    arrived=arrived,
                    failed=failed,
                    unallocated_gpus=(capacity_milli - allocated) / WHOLE_GPU_MILLI,
                )
            )

    # 4. The report at 100% and 130% of capacity requested.
    at = {c.fraction: c for c in recorded}
    return FillResult(
        packer=packer.name,
        seed=seed,
        gpus_total=capacity_milli / WHOLE_GPU_MILLI,
        unallocated_at_100=at[1.0].unallocated_gpus,
        unallocated_at_130=at[1.3].unallocated_gpus,
        failed_at_100=at[1.0].failed,
        failed_at_130=at[1.3].failed,
        arrived_at_130=at[1.3].arrived,
        checkpoints=tuple(recorded),
    )
