"""Why a job waits, with numbers, counted per cause (STYLE.md 4: errors a user can act on).

``needs 4 GPUs with >= 40 GB in one node (strict_pack): 3 nodes have GPUs < 40 GB; 1 node has
2 free of 4``: first what the job needs, then, for every node that cannot take it, the first
reason in a fixed order (not schedulable, no GPUs, GPU model, compute capability, GPU memory,
too few GPUs, CPUs, host memory, GPUs in use), counted.
"""

from __future__ import annotations

import functools

from scheduler.policy.model import GPU_MILLI, JobDemand, cpu_milli, mib
from scheduler.policy.packing import NodeState, Placer, Shape


def _num(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def _gb(mib: int) -> str:
    return _num(round(mib / 1024, 2))


def _count(n: int, one: str, many: str) -> str:
    return f"{n} node {one}" if n == 1 else f"{n} nodes {many}"


def duration(seconds: float) -> str:
    """A short human duration: 45s, 12m, 1h 20m, 2d 3h."""
    return _duration(max(0, int(round(seconds))))


@functools.lru_cache(maxsize=8192)
def _duration(s: int) -> str:
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h {m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d {h}h" if h else f"{d}d"


def one_node(demand: JobDemand) -> bool:
    """Whether all of the job's bundles must share one node."""
    return len(demand.bundles) == 1 or demand.placement == "strict_pack"


def describe_need(demand: JobDemand) -> str:
    """``needs 4 GPUs with >= 40 GB in one node (strict_pack)``."""
    b = demand.bundles[0]
    n = len(demand.bundles)
    if demand.gpus == 0:
        cpus = _num(b.cpu_milli * n / 1000)
        return (
            f"needs {cpus} CPU{'s' if cpus != '1' else ''} and {_gb(b.memory_mib * n)} GB memory"
            " on one node"
        )
    text = f"needs {demand.gpus} GPU{'s' if demand.gpus != 1 else ''}"
    if b.gpu_memory_mib is not None:
        text += f" with >= {_gb(b.gpu_memory_mib)} GB"
    if demand.gpu_models:
        text += " of type " + " or ".join(sorted(demand.gpu_models))
    if demand.min_cc is not None:
        text += f" with compute capability >= {demand.min_cc[0]}.{demand.min_cc[1]}"
    if one_node(demand):
        text += " in one node"
        if demand.placement == "strict_pack":
            text += " (strict_pack)"
    else:
        text += f" ({demand.placement})"
    return text


def _node_cause(
    placer: Placer, n: NodeState, shape: Shape, per_node: int, idle: bool
) -> tuple[int, str, tuple[int, ...]] | None:
    """The first reason node n cannot take `per_node` bundles, as (order, key, numbers)."""
    b = shape.bundle
    if not n.schedulable:
        return (0, "unschedulable", ())
    cpu = cpu_total(n) if idle else n.cpu
    mem = mem_total(n) if idle else n.mem
    if b.gpus:
        t = n.type
        if not t.models:
            return (1, "no-gpus", ())
        allowed = [g for g, m in enumerate(t.models) if shape.models is None or m in shape.models]
        if not allowed:
            return (2, "model", ())
        allowed = [g for g in allowed if shape.min_cc is None or t.cc[g] >= shape.min_cc]
        if not allowed:
            return (3, "cc", ())
        shares = placer.shares(t, shape)
        allowed = [g for g in allowed if shares[g] is not None]
        if not allowed:
            return (4, "gpu-memory", ())
        most = _most_of_one_model(t.models, allowed)
        if most < b.gpus * per_node:
            return (5, "few-gpus", (most, len(t.models)))
    if cpu < b.cpu_milli * per_node:
        return (6, "cpus", (b.cpu_milli * per_node,))
    if mem < b.memory_mib * per_node:
        return (7, "memory", (b.memory_mib * per_node,))
    if b.gpus and not idle:
        shares = placer.shares(n.type, shape)
        usable = [g for g, s in enumerate(shares) if s is not None]
        free = [g for g in usable if n.free[g] >= (shares[g] or GPU_MILLI)]
        most = _most_of_one_model(n.type.models, free)
        if most < b.gpus * per_node:
            return (8, "busy", (most, len(usable)))
    return None


def _most_of_one_model(models: tuple[str, ...], gpus: list[int]) -> int:
    """The most GPUs among `gpus` that share one model (a job's bundles use one model a node)."""
    counts: dict[str, int] = {}
    for g in gpus:
        counts[models[g]] = counts.get(models[g], 0) + 1
    return max(counts.values(), default=0)


def cpu_total(n: NodeState) -> int:
    return cpu_milli(n.node.cpus)


def mem_total(n: NodeState) -> int:
    return mib(n.node.memory_gb)


def _cause_text(key: str, nums: tuple[int, ...], count: int, demand: JobDemand) -> str:
    if key == "unschedulable":
        return _count(count, "is not schedulable", "are not schedulable")
    if key == "no-gpus":
        return _count(count, "has no GPUs", "have no GPUs")
    if key == "model":
        return _count(count, "has other GPU models", "have other GPU models")
    if key == "cc":
        assert demand.min_cc is not None
        cc = f"{demand.min_cc[0]}.{demand.min_cc[1]}"
        return _count(count, f"has compute capability < {cc}", f"have compute capability < {cc}")
    if key == "gpu-memory":
        gb = _gb(demand.bundles[0].gpu_memory_mib or 0)
        return _count(count, f"has GPUs < {gb} GB", f"have GPUs < {gb} GB")
    if key == "few-gpus":
        k, total = nums
        what = f"{k}{' suitable' if k != total else ''} GPU{'s' if k != 1 else ''}"
        return _count(count, f"has only {what}", f"have only {what}")
    if key == "cpus":
        c = _num(nums[0] / 1000)
        return _count(count, f"has < {c} free CPUs", f"have < {c} free CPUs")
    if key == "memory":
        gb = _gb(nums[0])
        return _count(count, f"has < {gb} GB free memory", f"have < {gb} GB free memory")
    free, total = nums
    return _count(count, f"has {free} free of {total}", f"have {free} free of {total}")


def _causes(placer: Placer, demand: JobDemand) -> list[str]:
    """Why each node cannot take the job now, counted per cause."""
    shape = Shape.of(demand, demand.bundles[0])
    per_node = len(demand.bundles) if one_node(demand) else 1
    counts: dict[tuple[int, str, tuple[int, ...]], int] = {}
    # nodes in one state have the same cause: one look per class of interchangeable nodes
    for n, count in placer.states():
        cause = _node_cause(placer, n, shape, per_node, idle=False)
        if cause is not None:
            counts[cause] = counts.get(cause, 0) + count
    return [_cause_text(k[1], k[2], c, demand) for k, c in sorted(counts.items())]


def capacity_now(placer: Placer, demand: JobDemand) -> int:
    """How many of the job's bundles fit now, each node taking as many as it can."""
    shape = Shape.of(demand, demand.bundles[0])
    total = 0
    for sid, members in placer.classes.items():
        ev = placer.evaluate(sid, shape, 0)
        if ev is not None:
            total += len(ev.picks) * len(members)
    return total


def explain(placer: Placer, demand: JobDemand) -> list[str]:
    """The reasons a job does not fit the placer's current free capacity."""
    if not demand.bundles:
        return ["has no bundles to place"]
    head = describe_need(demand)
    causes = _causes(placer, demand)
    if not one_node(demand):
        fit = min(capacity_now(placer, demand), len(demand.bundles))
        causes.insert(0, f"{fit} of {len(demand.bundles)} fit now")
    reasons = [head + (": " + "; ".join(causes) if causes else "")]
    if not _fits_idle(placer, demand):
        reasons.append(
            "it cannot run here even on an idle cluster: ask for less, or add nodes that have it"
        )
    return reasons


def _fits_idle(placer: Placer, demand: JobDemand) -> bool:
    shape = Shape.of(demand, demand.bundles[0])
    if one_node(demand):
        return any(
            _node_cause(placer, n, shape, len(demand.bundles), idle=True) is None
            for n, _ in placer.kinds()
        )
    slots = 0
    for n, count in placer.kinds():
        if _node_cause(placer, n, shape, 1, idle=True) is None:
            b = shape.bundle
            by_gpu = len(demand.bundles)
            if b.gpus:
                counts: dict[str, int] = {}
                for g, s in enumerate(placer.shares(n.type, shape)):
                    if s is not None:
                        counts[n.type.models[g]] = counts.get(n.type.models[g], 0) + 1
                by_gpu = sum(c // b.gpus for c in counts.values())
            by_cpu = cpu_total(n) // b.cpu_milli if b.cpu_milli else len(demand.bundles)
            by_mem = mem_total(n) // b.memory_mib if b.memory_mib else len(demand.bundles)
            slots += min(by_gpu, by_cpu, by_mem) * count
    return slots >= len(demand.bundles)
