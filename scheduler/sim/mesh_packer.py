"""The mesh policy's own packing (`scheduler.policy.packing.Placer`) behind the fill `Packer`
protocol, so the packing benchmark and the simulator measure the code the controller runs."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler import gpus
from scheduler.cluster import Gpu, Node
from scheduler.policy.model import GPU_MILLI, BundleDemand, JobDemand
from scheduler.policy.packing import Placer, Shape
from scheduler.sim.fill import FleetNode, Pod


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
