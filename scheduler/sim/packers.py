"""Baseline packers for the fill experiment, over one shared per-node state and one GPU rule.

Every packer here keeps a `NodeState` per fleet node and takes GPUs inside a node by `fits`, the
raylet's rule (a shared fraction goes best-fit onto one GPU; whole GPUs are the lowest-indexed fully
free ones), so the packers differ only in which node they choose. All are deterministic.

The rules also stand alone (`pick_gpus` over a list of free milli; `best_fit_leftover` and
`least_resource` over any `Request` and `Capacity`), so the simulator's baseline policies
(`scheduler.sim.baselines`) place jobs by the very same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler import gpus
from scheduler.cluster import Gpu, Node
from scheduler.policy.model import GPU_MILLI, BundleDemand, JobDemand
from scheduler.policy.packing import Placer, Shape
from scheduler.sim.fill import WHOLE_GPU_MILLI, FleetNode, Pod


@dataclass
class NodeState:
    """What is free on one node; `take` and `release` keep the derived totals in step."""

    name: str
    index: int
    cpu_total: int
    memory_total: int
    cpu_free: int
    memory_free: int
    gpu_free: list[int]
    model: str | None
    gpu_free_sum: int = 0
    max_gpu_free: int = 0
    whole_gpus_free: int = 0
    gpu_total: int = 0

    def __post_init__(self) -> None:
        self.gpu_total = len(self.gpu_free) * WHOLE_GPU_MILLI
        self._refresh()

    @classmethod
    def empty(cls, node: FleetNode, index: int) -> NodeState:
        """The state of `node` with nothing placed on it."""
        return cls(
            name=node.name,
            index=index,
            cpu_total=node.cpu_milli,
            memory_total=node.memory_mib,
            cpu_free=node.cpu_milli,
            memory_free=node.memory_mib,
            gpu_free=[WHOLE_GPU_MILLI] * node.gpu_count,
            model=node.gpu_model,
        )

    @property
    def gpu_allocated_milli(self) -> int:
        return self.gpu_total - self.gpu_free_sum

    def _refresh(self) -> None:
        self.gpu_free_sum = sum(self.gpu_free)
        self.max_gpu_free = max(self.gpu_free, default=0)
        self.whole_gpus_free = sum(1 for free in self.gpu_free if free == WHOLE_GPU_MILLI)

    def admits(self, pod: Pod) -> bool:
        """CPU, memory and GPU model allow `pod` here (GPUs not counted)."""
        if pod.cpu_milli > self.cpu_free or pod.memory_mib > self.memory_free:
            return False
        if pod.num_gpu and pod.gpu_spec is not None:
            return self.model is not None and self.model in pod.gpu_spec
        return True

    def can_fit(self, pod: Pod) -> bool:
        """Same answer as `fits(pod, self) is not None`, from the kept totals."""
        if not self.admits(pod):
            return False
        if pod.num_gpu == 0:
            return True
        if pod.is_gpu_share:
            return self.max_gpu_free >= pod.gpu_milli
        return self.whole_gpus_free >= pod.num_gpu

    def take(self, pod: Pod, gpus: Sequence[int]) -> None:
        """Hold `pod`'s CPU, memory and its GPU milli on each of `gpus` (as `fits` chose them)."""
        self.cpu_free -= pod.cpu_milli
        self.memory_free -= pod.memory_mib
        for i in gpus:
            self.gpu_free[i] -= pod.gpu_milli
        self._refresh()

    def release(self, pod: Pod, gpus: Sequence[int]) -> None:
        """Give back what `take(pod, gpus)` held."""
        self.cpu_free += pod.cpu_milli
        self.memory_free += pod.memory_mib
        for i in gpus:
            self.gpu_free[i] += pod.gpu_milli
        self._refresh()


class Request(Protocol):
    """What the node-choice rules read of a request (a `Pod`, or several bundles of a job)."""

    @property
    def cpu_milli(self) -> int: ...

    @property
    def memory_mib(self) -> int: ...

    @property
    def gpu_demand_milli(self) -> int: ...


class Capacity(Protocol):
    """What the node-choice rules read of a node's free capacity (a `NodeState`, or the like)."""

    @property
    def cpu_total(self) -> int: ...

    @property
    def cpu_free(self) -> int: ...

    @property
    def memory_total(self) -> int: ...

    @property
    def memory_free(self) -> int: ...

    @property
    def gpu_total(self) -> int: ...

    @property
    def gpu_free_sum(self) -> int: ...


def pick_gpus(
    gpu_free: Sequence[int], count: int, share: int, usable: Iterable[int] | None = None
) -> list[int] | None:
    """The raylet's rule: the `count` GPUs (of `usable`, in index order; default all) that a bundle
    taking `share` milli of each gets, in index order; None if there are not enough.

    A shared fraction (`share` < 1000) goes best-fit: the GPUs with the least free milli that still
    hold it, lowest index on ties. Whole GPUs are the lowest-indexed fully free ones.
    """
    indices = range(len(gpu_free)) if usable is None else usable
    if share < WHOLE_GPU_MILLI:
        holding = sorted((gpu_free[i], i) for i in indices if gpu_free[i] >= share)
        return sorted(i for _, i in holding[:count]) if len(holding) >= count else None
    whole = [i for i in indices if gpu_free[i] == WHOLE_GPU_MILLI]
    return whole[:count] if len(whole) >= count else None


def fits(pod: Pod, node: NodeState) -> list[int] | None:
    """The GPU indices `pod` would take on `node` by the raylet's rule (`pick_gpus`); None if it
    does not fit. A CPU-only pod takes [].
    """
    if not node.admits(pod):
        return None
    if pod.num_gpu == 0:
        return []
    return pick_gpus(node.gpu_free, pod.num_gpu, pod.gpu_milli)


@dataclass(frozen=True)
class Placement:
    """Where one placed pod landed."""

    pod: str
    node: str
    gpus: tuple[int, ...]


class NodeStatePacker:
    """A packer over one `NodeState` per fleet node; a subclass says which node to choose.

    The class is itself a `PackerFactory`: `FirstFitPacker(fleet, distribution)`.
    """

    name: str = "node-state"

    def __init__(
        self, nodes: Sequence[FleetNode], distribution: Sequence[tuple[Pod, float]] = ()
    ) -> None:
        self.nodes = [NodeState.empty(node, i) for i, node in enumerate(nodes)]
        self.distribution = list(distribution)
        self.placements: list[Placement] = []

    def choose(self, pod: Pod) -> tuple[NodeState, list[int]] | None:
        """The node for `pod` and the GPUs it takes there, or None for a failed pod."""
        raise NotImplementedError

    def place(self, pod: Pod) -> bool:
        choice = self.choose(pod)
        if choice is None:
            return False
        node, gpus = choice
        node.take(pod, gpus)
        self.placements.append(Placement(pod=pod.name, node=node.name, gpus=tuple(gpus)))
        return True

    def allocated_gpu_milli(self) -> int:
        return sum(node.gpu_allocated_milli for node in self.nodes)


def _chosen(pod: Pod, node: NodeState | None) -> tuple[NodeState, list[int]] | None:
    if node is None:
        return None
    gpus = fits(pod, node)
    return None if gpus is None else (node, gpus)


class FirstFitPacker(NodeStatePacker):
    """The first node, in the node list's order, where the pod fits."""

    name = "first-fit"

    def choose(self, pod: Pod) -> tuple[NodeState, list[int]] | None:
        for node in self.nodes:
            if node.can_fit(pod):
                return _chosen(pod, node)
        return None


def best_fit_leftover(request: Request, node: Capacity) -> float:
    """Best-fit's key: the sum, over CPU, memory and GPU, of the fraction of the node's capacity
    still free after `request` lands (the GPU term only on GPU nodes). Smaller is tighter."""
    key = (node.cpu_free - request.cpu_milli) / node.cpu_total if node.cpu_total else 0.0
    if node.memory_total:
        key += (node.memory_free - request.memory_mib) / node.memory_total
    if node.gpu_total:
        key += (node.gpu_free_sum - request.gpu_demand_milli) / node.gpu_total
    return key


class BestFitPacker(NodeStatePacker):
    """The node left with the least free resources after placement (FGD's "Best-fit" baseline).

    The smallest `best_fit_leftover` wins, ties to node-list order.
    """

    name = "best-fit"

    def choose(self, pod: Pod) -> tuple[NodeState, list[int]] | None:
        best: NodeState | None = None
        best_key = 0.0
        for node in self.nodes:
            if not node.can_fit(pod):
                continue
            key = best_fit_leftover(pod, node)
            if best is None or key < best_key:
                best, best_key = node, key
        return _chosen(pod, best)


def least_resource_score(pod: Pod, node: NodeState) -> float | None:
    """Ray's LeastResourceScorer of `node` for a one-bundle group, as the GCS sees it; None: no fit.

    The GCS sees only the node's summed free GPU (`least_resource`).
    """
    if not node.admits(pod):
        return None
    return least_resource(pod, node)


def least_resource(request: Request, node: Capacity) -> float | None:
    """Ray's LeastResourceScorer: the sum over the resources requested (CPU, memory, GPU; those
    requested as 0 are skipped) of `(available - request) / available`, the GPU as the node's
    summed free milli; None where one does not fit. Higher leaves more free (worst-fit).
    """
    score = 0.0
    for amount, available in (
        (request.cpu_milli, node.cpu_free),
        (request.memory_mib, node.memory_free),
        (request.gpu_demand_milli, node.gpu_free_sum),
    ):
        if amount == 0:
            continue
        if available == 0 or amount > available:
            return None
        score += (available - amount) / available
    return score


class RayDefaultPacker(NodeStatePacker):
    """Ray 2.60's own placement of a one-bundle PACK placement group, emulated.

    1. The GCS scores every feasible node with Ray's LeastResourceScorer (`least_resource_score`)
       and picks the highest score, i.e. the node with the most free share left (worst-fit); ties go
       to node-list order here (Ray's own order among equal scores is a hash map's).
    2. The GCS sees a node's GPUs only as one summed free amount, so a node whose free capacity is
       4 x 400 milli is feasible for a 450-milli pod.
    3. The chosen node's raylet then takes GPUs by the per-GPU rule (`fits`). If they do not fit
       there, the pod fails and holds nothing: Ray keeps retrying the same node and the group never
       becomes ready. (Ray can also leave "phantom" usage in the GCS view after such a failure,
       ray#52133, ray#54729; that is not modelled.)

    Measured on 12-node samples of the openb fleet, pods replayed to 100% of capacity over 10 seeds
    (notes/ray-2.60.md): Ray 2.60 left 8.75% of GPUs unallocated against 5.2% for first-fit and 5.0%
    for best-fit, and a Python emulation of this rule matched Ray exactly on 10 of 13 runs.
    """

    name = "ray-2.60"

    def __init__(
        self, nodes: Sequence[FleetNode], distribution: Sequence[tuple[Pod, float]] = ()
    ) -> None:
        super().__init__(nodes, distribution)
        self.stuck_on_fragments = 0
        """Pods the GCS sent to a node whose raylet could not take their GPUs (step 3)."""

    def choose(self, pod: Pod) -> tuple[NodeState, list[int]] | None:
        best: NodeState | None = None
        best_score = -1.0
        for node in self.nodes:
            score = least_resource_score(pod, node)
            if score is not None and score > best_score:
                best, best_score = node, score
        if best is None:
            return None
        chosen = _chosen(pod, best)
        if chosen is None:
            self.stuck_on_fragments += 1
        return chosen


# The mesh policy's own packing (`scheduler.policy.packing.Placer`) behind the same protocol,
# so the packing benchmark and the simulator measure the code the controller runs.


def _bundle(pod: Pod) -> BundleDemand:
    return BundleDemand(
        gpus=pod.num_gpu,
        cpu_milli=pod.cpu_milli,
        memory_mib=pod.memory_mib,
        gpu_milli=pod.gpu_milli if pod.is_gpu_share else None,
    )


def fleet_node(node: FleetNode) -> Node:
    """A fleet node as the policy sees it (GPU memory and compute capability from the catalogue)."""
    model = gpus.resolve(node.gpu_model) if node.gpu_model else None
    return Node(
        name=node.name,
        cpus=node.cpu_milli / 1000,
        memory_gb=node.memory_mib / 1024,
        gpus=tuple(
            Gpu(i, model.name, model.memory_gb, model.compute_capability)
            for i in range(node.gpu_count)
            if model is not None
        ),
        simulated=True,
    )


class MeshPacker:
    """FGD-style fragmentation-aware packing, told the pod-type distribution it will see."""

    name = "mesh"

    def __init__(self, nodes: Sequence[FleetNode], profile: Sequence[tuple[Pod, float]]) -> None:
        shapes = [
            (Shape(_bundle(pod), models=pod.gpu_spec), weight)
            for pod, weight in profile
            if pod.num_gpu
        ]
        self.placer = Placer([fleet_node(n) for n in nodes], shapes)
        self.capacity = sum(len(n.free) for n in self.placer.nodes) * GPU_MILLI

    def place(self, pod: Pod) -> bool:
        demand = JobDemand(
            job=pod.name,
            community="openb",
            priority=1,
            bundles=(_bundle(pod),),
            gpu_models=pod.gpu_spec,
        )
        return self.placer.place(demand) is not None

    def allocated_gpu_milli(self) -> int:
        return self.capacity - self.placer.unallocated_gpu_milli()
