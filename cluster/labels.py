"""Node labels (DESIGN.md "Node labels"): how a node tells the mesh what it is, and back.

`labels_for(node)` writes them when a node starts; `node_from_labels` reads a Ray node's labels
and resources back into the policy's `Node`. Values are Kubernetes-label-valid.
"""

from __future__ import annotations

from collections.abc import Mapping

from scheduler import gpus
from scheduler.cluster import Gpu, Node

NODE = "mesh/node"
GPU_MODEL = "mesh/gpu-model"
GPU_MEMORY_GB = "mesh/gpu-memory-gb"
COMPUTE_CAPABILITY = "mesh/compute-capability"
OWNER = "mesh/owner"
SIMULATED = "mesh/simulated"


def _number(x: float) -> str:
    return f"{x:g}"


def labels_for(node: Node) -> dict[str, str]:
    """The labels a node carries in Ray. A node's GPUs are of one model (one group per node)."""
    labels = {NODE: node.name}
    if node.gpus:
        g = node.gpus[0]
        labels[GPU_MODEL] = gpus.label_value(g.model)
        labels[GPU_MEMORY_GB] = _number(g.memory_gb)
        labels[COMPUTE_CAPABILITY] = gpus.format_compute_capability(g.compute_capability)
    if node.owner:
        labels[OWNER] = node.owner
    if node.simulated:
        labels[SIMULATED] = "true"
    return labels


class LabelError(ValueError):
    """A Ray node whose labels do not describe a mesh node."""


def node_from_labels(
    labels: Mapping[str, str], cpus: float, memory_gb: float, gpu_count: int
) -> Node:
    """The policy's view of a Ray node from its labels and its Ray resources."""
    name = labels.get(NODE)
    if not name:
        raise LabelError(f"no {NODE} label: the node did not join through meshctl")
    node_gpus: tuple[Gpu, ...] = ()
    if gpu_count:
        model_label = labels.get(GPU_MODEL)
        if not model_label:
            raise LabelError(f"{name} has {gpu_count} GPUs but no {GPU_MODEL} label")
        model = gpus.find(model_label)
        if model is None:
            raise LabelError(f"{name}: GPU model {model_label!r} is not in the catalogue")
        memory = float(labels.get(GPU_MEMORY_GB, model.memory_gb))
        cc_text = labels.get(COMPUTE_CAPABILITY)
        cc = gpus.parse_compute_capability(cc_text) if cc_text else model.compute_capability
        node_gpus = tuple(Gpu(i, model.name, memory, cc) for i in range(gpu_count))
    return Node(
        name=name,
        cpus=cpus,
        memory_gb=memory_gb,
        gpus=node_gpus,
        owner=labels.get(OWNER) or None,
        simulated=labels.get(SIMULATED) == "true",
    )
