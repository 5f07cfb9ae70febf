"""Fragmentation-aware packing of bundles onto nodes and GPUs.

The `Placer` holds the free capacity of every node (per GPU in thousandths, CPU in milli, memory
in MiB) and places whole jobs, all bundles or none. Where a bundle goes is decided by FGD
(Weng et al., "Beware of Fragmentation", USENIX ATC'23): a node's *fragmentation* is the GPU
capacity left on it that a job drawn from the workload would not be able to use, weighted by how
common that kind of job is; each placement goes where fragmentation grows least. That keeps
large GPUs and whole nodes free for the jobs that need them, where plain first-fit or Ray's
worst-fit scatter small jobs over them (ray#35422).

The ranking of candidate nodes, in order: a perfect fit (the node's GPUs filled, or a shared GPU
to within PERFECT_FIT); the growth of fragmentation plus contention (taking GPU models that jobs
restricted to few models need), in steps of COST_STEP; for training and batch jobs, speed; then
the node left tightest (best-fit), then the name.

Within a node, a shared (fractional) bundle takes the GPU with the least free capacity that
still fits (best-fit), the same rule as Ray's raylet, so the planner's accounting of shared GPUs
matches what Ray enforces (notes/ray-2.60.md); FGD's own choice within a node (the GPU that grows
fragmentation least) measured no better on the openb lists (benchmarks/README.md). Whole GPUs are
taken lowest index first.

Nodes in the same state (same GPUs, same free capacity) are interchangeable, so the search runs
over classes of identical nodes with cached scores; the first node by name in the best class wins.
Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from scheduler.cluster import Node
from scheduler.gpus import find as find_gpu
from scheduler.policy.model import (
    GPU_MILLI,
    BundleAssignment,
    BundleDemand,
    JobDemand,
    cpu_milli,
    mib,
)

PROFILE_SHAPES = 32
# The cost of a placement (growth in fragmentation plus contention, in GPUs) is compared in steps
# of a tenth of a GPU; within a step the faster GPU wins for training and batch jobs, then the
# node left tighter (best-fit). Measured on the openb fleet (benchmarks/packing.py), steps beat
# both exact comparison and coarser steps.
COST_STEP = 0.1
# Before any of that, a perfect fit wins: one that leaves its node no free GPU, or a shared GPU
# with less than this many thousandths free. Such a placement wastes (almost) nothing now, and
# on the openb lists taking it first cuts unallocated GPUs by a few percent more.
PERFECT_FIT = 50
# Taking a GPU that jobs restricted to few models need (see `_pressures`) costs this much per
# unit of pressure per GPU, in the same units as fragmentation (GPUs).
CONTENTION = 0.25
# A node that may fail during the job costs this much per GPU taken, times the chance that it
# fails before the job's expected end (so long jobs avoid flaky volunteers; short ones do not care).
RELIABILITY = 1.0
# Faster GPUs are preferred in steps of 10% of speed, after fragmentation and contention.
SPEED_STEP = math.log(1.1)
# the most common demand shapes kept in the workload profile


@dataclass(frozen=True, eq=False)
class NodeType:
    """What does not change about a node: its GPUs. Interned: one object per distinct type."""

    models: tuple[str, ...]
    gpu_memory_mib: tuple[int, ...]
    cc: tuple[tuple[int, int], ...]
    mtbf_h: float | None = None  # the node's MTBF, rounded to a power of sqrt(2); None: reliable


@dataclass(frozen=True)
class Shape:
    """A bundle together with the job-level constraints that decide where it may go."""

    bundle: BundleDemand
    exclusive: bool = False
    models: frozenset[str] | None = None
    min_cc: tuple[int, int] | None = None

    @classmethod
    def of(cls, demand: JobDemand, bundle: BundleDemand) -> Shape:
        return cls(bundle, demand.exclusive, demand.gpu_models, demand.min_cc)


class Sig(NamedTuple):
    """A node's state: nodes with equal signatures are interchangeable."""

    type: NodeType
    free: tuple[int, ...]
    cpu: int
    mem: int


class NodeState:
    __slots__ = ("idx", "name", "node", "type", "free", "cpu", "mem", "schedulable", "sid")

    def __init__(self, idx: int, node: Node, ntype: NodeType, cpu: int, mem: int) -> None:
        self.idx = idx
        self.name = node.name
        self.node = node
        self.type = ntype
        self.free = [GPU_MILLI] * len(node.gpus)
        self.cpu = cpu
        self.mem = mem
        self.schedulable = node.schedulable
        self.sid = -1

    def signature(self) -> Sig:
        return Sig(self.type, tuple(self.free), self.cpu, self.mem)


Profile = Sequence[tuple[Shape, float]]


def mtbf_bucket(mtbf_h: float | None) -> float | None:
    """An MTBF rounded to a power of sqrt(2), so that nodes of similar reliability stay in one
    class of interchangeable nodes."""
    if mtbf_h is None or mtbf_h <= 0 or math.isinf(mtbf_h):
        return None
    return float(2 ** (round(2 * math.log2(mtbf_h)) / 2))


def failure_chance(runtime_s: float, mtbf_h: float) -> float:
    """The chance that a node with this MTBF fails within `runtime_s` (exponential lifetimes)."""
    return 1.0 - math.exp(-runtime_s / (mtbf_h * 3600.0))


def profile_of(
    demands: Iterable[JobDemand], limit: int = PROFILE_SHAPES
) -> list[tuple[Shape, float]]:
    """The workload's distribution of bundle shapes (the `limit` most common), weights sum to 1."""
    kinds: dict[tuple[Any, ...], list[Any]] = {}  # jobs alike in shape counted once, then expanded
    for d in demands:
        key = (d.bundles_key, d.exclusive, d.gpu_models, d.min_cc)
        if key not in kinds:
            kinds[key] = [d, 0]
        kinds[key][1] += 1
    counts: dict[Shape, int] = {}
    for first, n in kinds.values():
        for b in first.bundles:
            if b.gpus:
                s = Shape(b, first.exclusive, first.gpu_models, first.min_cc)
                counts[s] = counts.get(s, 0) + n
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    total = sum(c for _, c in ranked)
    return [(s, c / total) for s, c in ranked] if total else []


@dataclass(frozen=True)
class _Eval:
    """Placing `count` bundles of one shape on a node of some class: the outcome."""

    delta: float  # growth of expected fragmentation, in thousandths of a GPU
    leftover: int  # free GPU thousandths left on the node (less = tighter packing)
    picks: tuple[tuple[tuple[int, ...], int], ...]  # per bundle: GPU indices and share
    model: str | None


class Placer:
    """Free capacity of a cluster and the placement of jobs onto it, all or nothing."""

    def __init__(
        self,
        nodes: Sequence[Node],
        profile: Profile = (),
        speeds: Mapping[tuple[str, str], float] | None = None,
        held: Iterable[tuple[JobDemand, Sequence[BundleAssignment]]] = (),
    ) -> None:
        """`held`: the jobs (demand, bundles) already holding capacity, taken in bulk; the same
        as `allocate_assignments` for each, in one pass (a round starts with thousands)."""
        types: dict[tuple[Any, ...], NodeType] = {}
        by_kinds: dict[tuple[Any, ...], NodeType] = {}  # the same, looked up by raw values
        sizes: dict[tuple[float, float], tuple[int, int]] = {}  # (cpus, GB) -> (milli, MiB)
        self.nodes: list[NodeState] = []
        for i, node in enumerate(sorted(nodes, key=lambda n: n.name)):
            raw = (node.gpu_kinds, node.mtbf_h)
            ntype = by_kinds.get(raw)
            if ntype is None:
                models, memory_gb, cc = node.gpu_kinds
                key = (models, tuple(mib(m) for m in memory_gb), cc, mtbf_bucket(node.mtbf_h))
                if key not in types:
                    types[key] = NodeType(*key)
                ntype = by_kinds[raw] = types[key]
            size = sizes.get((node.cpus, node.memory_gb))
            if size is None:
                size = sizes[(node.cpus, node.memory_gb)] = (
                    cpu_milli(node.cpus) if node.cpus else 0,
                    mib(node.memory_gb) if node.memory_gb else 0,
                )
            self.nodes.append(NodeState(i, node, ntype, *size))
        self.by_name = {n.name: n for n in self.nodes}
        for demand, bundles in held:
            for a, b in zip(bundles, demand.bundles, strict=False):
                n = self.by_name.get(a.node)
                if n is None:
                    continue  # a node that left: nothing to account
                if a.gpus:
                    free = n.free
                    for g in a.gpus:
                        if 0 <= g < len(free):
                            free[g] -= a.gpu_milli
                n.cpu -= b.cpu_milli
                n.mem -= b.memory_mib
        self.types = list(types.values())
        self.profile = list(profile)
        self.speeds = dict(speeds or {})
        self._catalogue_speed: dict[str, float] = {}
        self._best_speeds: dict[tuple[str, int], float] = {}
        # States and shapes are numbered once, so the hot loop hashes small integers only.
        self._sig_ids: dict[Sig, int] = {}
        self._sigs: list[Sig] = []
        self._shape_ids: dict[Shape, int] = {}
        self.classes: dict[int, list[int]] = {}  # state id -> indices of nodes in that state
        self.free_gpu_milli = 0  # free GPU capacity of the schedulable nodes, in thousandths
        for n in self.nodes:
            n.sid = self._sid(n)
            if n.schedulable:
                self.classes.setdefault(n.sid, []).append(n.idx)
                self.free_gpu_milli += sum(n.free)
        self._frag: dict[int, float] = {}
        self._evals: dict[tuple[int, int, int], _Eval | None] = {}
        self._shares: dict[tuple[NodeType, Shape], tuple[int | None, ...]] = {}
        self.pressure = self._pressures()
        self._log: list[tuple[int, tuple[int, ...], int, int, int]] | None = None
        self._kinds: list[tuple[NodeState, int]] | None = None

    def copy(self) -> Placer:
        """An independent placer in the same state (caches are shared: they key on state)."""
        other = Placer.__new__(Placer)
        other.nodes = []
        for n in self.nodes:
            c = NodeState.__new__(NodeState)
            c.idx, c.name, c.node, c.type = n.idx, n.name, n.node, n.type
            c.free, c.cpu, c.mem, c.schedulable = list(n.free), n.cpu, n.mem, n.schedulable
            c.sid = n.sid
            other.nodes.append(c)
        other.by_name = {n.name: n for n in other.nodes}
        other.types, other.profile, other.pressure = self.types, self.profile, self.pressure
        other.speeds, other._catalogue_speed = self.speeds, self._catalogue_speed
        other._best_speeds = self._best_speeds
        other.classes = {sid: list(members) for sid, members in self.classes.items()}
        other.free_gpu_milli = self.free_gpu_milli
        other._sig_ids, other._sigs, other._shape_ids = self._sig_ids, self._sigs, self._shape_ids
        other._frag, other._evals, other._shares = self._frag, self._evals, self._shares
        other._log = None
        other._kinds = None
        return other

    def states(self) -> list[tuple[NodeState, int]]:
        """One node of each state and how many are in it; the unschedulable ones as one group."""
        out = [(self.nodes[members[0]], len(members)) for members in self.classes.values()]
        off = [n for n in self.nodes if not n.schedulable]
        if off:
            out.append((off[0], len(off)))
        return out

    def kinds(self) -> list[tuple[NodeState, int]]:
        """One node of each kind (GPUs, CPUs and memory in all, schedulable or not) and how many
        there are: what an idle cluster offers."""
        if self._kinds is None:
            counts: dict[tuple[Any, ...], list[Any]] = {}
            for n in self.nodes:
                key = (n.type, n.node.cpus, n.node.memory_gb, n.schedulable)
                if key in counts:
                    counts[key][1] += 1
                else:
                    counts[key] = [n, 1]
            self._kinds = [(n, c) for n, c in counts.values()]
        return self._kinds

    def _pressures(self) -> dict[str, float]:
        """How much of the workload can run only on a subset of GPU models, per model.

        A shape that only some models can take (an allow-list, a memory or compute-capability
        floor) puts its weight x GPUs, scaled by how scarce those models are, on each of them.
        Jobs that could run elsewhere then avoid contended models, so constrained jobs are not
        starved by flexible ones. Shapes that every model can take put no pressure anywhere.
        """
        capacity: dict[str, int] = {}
        for n in self.nodes:
            if n.schedulable:
                for m in n.type.models:
                    capacity[m] = capacity.get(m, 0) + 1
        total = sum(capacity.values())
        out = dict.fromkeys(capacity, 0.0)
        for shape, w in self.profile:
            if not shape.bundle.gpus:
                continue
            eligible = {
                t.models[g]
                for t in self.types
                for g, share in enumerate(self.shares(t, shape))
                if share is not None and t.models[g] in capacity
            }
            if not eligible or len(eligible) == len(capacity):
                continue
            scarce = total / sum(capacity[m] for m in eligible)
            for m in eligible:
                out[m] += w * shape.bundle.gpus * scarce
        return {m: round(v, 2) for m, v in out.items()}

    # ----------------------------------------------------------------- accounting

    def _sid(self, n: NodeState) -> int:
        sig = n.signature()
        sid = self._sig_ids.get(sig)
        if sid is None:
            sid = self._sig_ids[sig] = len(self._sigs)
            self._sigs.append(sig)
        return sid

    def shape_id(self, shape: Shape) -> int:
        found = self._shape_ids.get(shape)
        if found is None:
            found = self._shape_ids[shape] = len(self._shape_ids)
        return found

    def shares(self, ntype: NodeType, shape: Shape) -> tuple[int | None, ...]:
        """Per GPU of a node type: the share this shape takes there, or None where not allowed."""
        key = (ntype, shape)
        found = self._shares.get(key)
        if found is not None:
            return found
        b = shape.bundle
        out: list[int | None] = []
        for model, mem, cc in zip(ntype.models, ntype.gpu_memory_mib, ntype.cc, strict=True):
            ok = (
                (shape.models is None or model in shape.models)
                and (shape.min_cc is None or cc >= shape.min_cc)
                and (b.gpu_memory_mib is None or mem >= b.gpu_memory_mib)
            )
            out.append(b.share_on(mem, shape.exclusive) if ok else None)
        result = tuple(out)
        self._shares[key] = result
        return result

    def _unlist(self, n: NodeState) -> None:
        members = self.classes[n.sid]
        members.pop(bisect.bisect_left(members, n.idx))
        if not members:
            del self.classes[n.sid]

    def allocate(
        self, node: str | int, gpus: Sequence[int], share: int, cpu: int, mem: int
    ) -> None:
        """Take capacity on a node (negative amounts give it back)."""
        n = self.nodes[node] if isinstance(node, int) else self.by_name[node]
        idxs = tuple(g for g in gpus if 0 <= g < len(n.free))
        if n.schedulable:
            self._unlist(n)
        for g in idxs:
            n.free[g] -= share
        n.cpu -= cpu
        n.mem -= mem
        n.sid = self._sid(n)
        if n.schedulable:
            bisect.insort(self.classes.setdefault(n.sid, []), n.idx)
            self.free_gpu_milli -= share * len(idxs)
        if self._log is not None:
            self._log.append((n.idx, idxs, share, cpu, mem))

    def release(self, node: str | int, gpus: Sequence[int], share: int, cpu: int, mem: int) -> None:
        self.allocate(node, gpus, -share, -cpu, -mem)

    def allocate_assignments(
        self, demand: JobDemand, bundles: Sequence[BundleAssignment], sign: int = 1
    ) -> None:
        """Account (sign 1) or give back (sign -1) a job's bundles; unknown nodes are skipped."""
        for a, b in zip(bundles, demand.bundles, strict=False):
            if a.node in self.by_name:
                self.allocate(
                    a.node,
                    a.gpus,
                    sign * (a.gpu_milli if a.gpus else 0),
                    sign * b.cpu_milli,
                    sign * b.memory_mib,
                )

    def begin(self) -> tuple[int, bool]:
        """Start (or nest) recording allocations so that `end` can undo them."""
        if self._log is None:
            self._log = []
            return 0, True
        return len(self._log), False

    def end(self, token: tuple[int, bool], keep: bool) -> None:
        """Keep or undo what was allocated since `begin` returned `token`."""
        mark, outer = token
        assert self._log is not None
        if not keep:
            undo = self._log[mark:]
            del self._log[mark:]
            log, self._log = self._log, None
            for idx, gpus, share, cpu, mem in reversed(undo):
                self.allocate(idx, gpus, -share, -cpu, -mem)
            self._log = log
        if outer:
            self._log = None

    # ------------------------------------------------------------- fragmentation

    def fragmentation(self, sid: int) -> float:
        """Expected GPU thousandths on a node in state `sid` that the workload cannot use."""
        found = self._frag.get(sid)
        if found is not None:
            return found
        ntype, free, cpu, mem = self._sigs[sid]
        frees = [f if f > 0 else 0 for f in free]
        total = sum(frees)
        result = 0.0
        if total:
            for shape, w in self.profile:
                b = shape.bundle
                if cpu < b.cpu_milli or mem < b.memory_mib:
                    result += w * total
                    continue
                usable = 0
                count = 0
                for f, s in zip(frees, self.shares(ntype, shape), strict=True):
                    if s is not None and f >= s:
                        count += 1
                        usable += f
                result += w * (total - usable if count >= b.gpus else total)
        self._frag[sid] = result
        return result

    # ------------------------------------------------------------------ search

    @staticmethod
    def _pick(
        ntype: NodeType,
        shares: tuple[int | None, ...],
        free: list[int],
        gpus: int,
        taken: set[int],
        only: str | None = None,
    ) -> tuple[tuple[int, ...], int, str | None] | None:
        """GPUs of one model for one bundle: best-fit for shared GPUs, lowest index for whole.

        A job never shares a GPU with itself: GPUs in `taken` (its other bundles) are skipped.
        With `only`, just GPUs of that model are considered.
        """
        if gpus == 0:
            return (), 0, None
        by_model: dict[str, list[int]] = {}
        for g, s in enumerate(shares):
            if s is not None and free[g] >= s and g not in taken:
                if only is not None and ntype.models[g] != only:
                    continue
                by_model.setdefault(ntype.models[g], []).append(g)
        for model in sorted(by_model, key=lambda m: (ntype.gpu_memory_mib[by_model[m][0]], m)):
            cands = by_model[model]
            if len(cands) < gpus:
                continue
            share = shares[cands[0]]
            assert share is not None
            if share < GPU_MILLI:
                cands = sorted(cands, key=lambda g: (free[g], g))
            return tuple(sorted(cands[:gpus])), share, model
        return None

    def evaluate(self, sid: int, shape: Shape, count: int) -> _Eval | None:
        """Place `count` bundles of `shape` on a node in state `sid`; count 0 = as many as fit."""
        key = (sid, self.shape_id(shape), count)
        if key in self._evals:
            return self._evals[key]
        ntype, free_t, cpu0, mem0 = self._sigs[sid]
        b = shape.bundle
        shares = self.shares(ntype, shape)
        target = count or 1024
        # All bundles of a job on one node use one GPU model: try each model the node has,
        # smallest memory first, and keep the first that holds `count` (or the one holding most).
        models: list[str | None] = [None]
        if b.gpus and len(set(ntype.models)) > 1:
            seen = {m: ntype.gpu_memory_mib[g] for g, m in reversed(list(enumerate(ntype.models)))}
            models = [m for _, m in sorted((mem_, m) for m, mem_ in seen.items())]
        picks: list[tuple[tuple[int, ...], int]] = []
        free: list[int] = list(free_t)
        cpu, mem = cpu0, mem0
        model: str | None = None
        for only in models:
            t_free, t_cpu, t_mem = list(free_t), cpu0, mem0
            t_picks: list[tuple[tuple[int, ...], int]] = []
            t_model: str | None = None
            taken: set[int] = set()
            while len(t_picks) < target:
                if t_cpu < b.cpu_milli or t_mem < b.memory_mib:
                    break
                got = self._pick(ntype, shares, t_free, b.gpus, taken, only)
                if got is None or (t_model is not None and got[2] != t_model):
                    break
                gidx, share, t_model = got
                taken.update(gidx)
                for g in gidx:
                    t_free[g] -= share
                t_cpu -= b.cpu_milli
                t_mem -= b.memory_mib
                t_picks.append((gidx, share))
            if len(t_picks) > len(picks):
                picks, free, cpu, mem, model = t_picks, t_free, t_cpu, t_mem, t_model
            if count and len(picks) == count:
                break
        result: _Eval | None = None
        if picks and (count == 0 or len(picks) == count):
            after = Sig(ntype, tuple(free), cpu, mem)
            aid = self._sig_ids.get(after)
            if aid is None:
                aid = self._sig_ids[after] = len(self._sigs)
                self._sigs.append(after)
            result = _Eval(
                self.fragmentation(aid) - self.fragmentation(sid),
                sum(f for f in free if f > 0),
                tuple(picks),
                model,
            )
        self._evals[key] = result
        return result

    def _perfect(self, sid: int, ev: _Eval) -> bool:
        """A placement that fills its node's GPUs, or a shared GPU to within PERFECT_FIT."""
        if not ev.picks or not ev.picks[0][0]:
            return False
        if ev.leftover == 0:
            return True
        (gpus, share), *rest = ev.picks
        if rest or share >= GPU_MILLI:
            return False
        return self._sigs[sid].free[gpus[0]] - share < PERFECT_FIT

    def speed(self, demand: JobDemand, model: str) -> float:
        """The job's speed on a model: measured when the snapshot has it, else the catalogue's."""
        return self._speed(demand, model)

    def _speed(self, demand: JobDemand, model: str) -> float:
        s = self.speeds.get((demand.job, model))
        if s is None:
            s = self._catalogue_speed.get(model)
            if s is None:
                g = find_gpu(model)
                s = self._catalogue_speed[model] = g.relative_speed if g is not None else 1.0
        return max(s, 1e-6)

    def _best_speed(self, demand: JobDemand, shape: Shape) -> float:
        key = (demand.job, self.shape_id(shape))
        found = self._best_speeds.get(key)
        if found is None:
            best = 0.0
            for t in self.types:
                for g, s in enumerate(self.shares(t, shape)):
                    if s is not None:
                        best = max(best, self._speed(demand, t.models[g]))
            found = self._best_speeds[key] = best or 1.0
        return found

    def _choose(
        self,
        demand: JobDemand,
        shape: Shape,
        count: int,
        avoid: set[int],
        best_speed: float,
        most: bool = False,
    ) -> tuple[int, _Eval] | None:
        """The node for `count` bundles (0: as many as fit), cheapest first; `most` = most first."""
        best: tuple[tuple[float, ...], int, _Eval] | None = None
        evals = self._evals
        shid = self.shape_id(shape)
        for sid, members in self.classes.items():
            ekey = (sid, shid, count)
            ev = evals[ekey] if ekey in evals else self.evaluate(sid, shape, count)
            if ev is None:
                continue
            idx = members[0]
            if avoid:
                idx = next((m for m in members if m not in avoid), -1)
                if idx < 0:
                    continue
            model = ev.model
            slower = 0
            if demand.speed_sensitive and model is not None:
                slower = round(math.log(best_speed / self._speed(demand, model)) / SPEED_STEP)
            cost = ev.delta / GPU_MILLI
            taken = len(ev.picks) * shape.bundle.gpus
            if model is not None:
                cost += CONTENTION * self.pressure.get(model, 0.0) * taken
            mtbf = self._sigs[sid].type.mtbf_h
            if mtbf is not None and demand.runtime_s and taken:
                cost += RELIABILITY * failure_chance(demand.runtime_s, mtbf) * taken
            key = (
                -len(ev.picks) if most else 0,
                0 if self._perfect(sid, ev) else 1,
                round(cost / COST_STEP),
                slower,
                ev.leftover,
                idx,
            )
            if best is None or key < best[0]:
                best = (key, idx, ev)
        return None if best is None else (best[1], best[2])

    def _apply(
        self, idx: int, shape: Shape, ev: _Eval, hidden: list[tuple[int, int, int]] | None = None
    ) -> list[BundleAssignment]:
        """Take what `ev` picked on node idx. With `hidden`, the rest of each GPU taken is
        held too (and noted there) so later bundles of the same job cannot share it."""
        out = []
        b = shape.bundle
        n = self.nodes[idx]
        for gidx, share in ev.picks:
            self.allocate(idx, gidx, share, b.cpu_milli, b.memory_mib)
            out.append(BundleAssignment(n.name, gidx, share if gidx else GPU_MILLI))
            if hidden is not None:
                for g in gidx:
                    if n.free[g] > 0:
                        hidden.append((idx, g, n.free[g]))
                        self.allocate(idx, (g,), n.free[g], 0, 0)
        return out

    def least_gpu_milli(self, demand: JobDemand) -> int:
        """A lower bound of the GPU capacity the job needs, in thousandths."""
        need = 0
        for b in demand.bundles:
            if b.gpus:
                whole = demand.exclusive or (b.gpu_milli is None and b.gpu_memory_mib is None)
                need += b.gpus * (GPU_MILLI if whole else (b.gpu_milli or 1))
        return need

    def place(self, demand: JobDemand) -> tuple[BundleAssignment, ...] | None:
        """Place every bundle of the job, or none; on success the capacity is taken."""
        if not demand.bundles:
            return ()
        if self.least_gpu_milli(demand) > self.free_gpu_milli:
            return None  # not enough free GPU capacity anywhere: no search needed
        first = demand.bundles[0]
        if any(b != first for b in demand.bundles[1:]):
            raise ValueError(f"{demand.job}: the bundles of one job must all be alike")
        shape = Shape.of(demand, first)
        n = len(demand.bundles)
        best_speed = self._best_speed(demand, shape) if demand.speed_sensitive else 1.0
        token = self.begin()
        placed: list[BundleAssignment] = []
        hidden: list[tuple[int, int, int]] = []
        ok = False
        if demand.placement == "spread" and n > 1:
            used: set[int] = set()
            for _ in range(n):
                got = self._choose(demand, shape, 1, used, best_speed)
                if got is None:
                    got = self._choose(demand, shape, 1, set(), best_speed)
                if got is None:
                    break
                used.add(got[0])
                placed += self._apply(got[0], shape, got[1], hidden)
            ok = len(placed) == n
        else:
            got = self._choose(demand, shape, n, set(), best_speed)
            if got is not None:
                placed = self._apply(got[0], shape, got[1])
                ok = True
            elif demand.placement == "pack" and n > 1:
                while len(placed) < n:
                    got = self._choose(demand, shape, 0, set(), best_speed, most=True)
                    if got is None:
                        break
                    idx, ev = got
                    take = min(len(ev.picks), n - len(placed))
                    if take < len(ev.picks):
                        exact = self.evaluate(self.nodes[idx].sid, shape, take)
                        assert exact is not None
                        ev = exact
                    placed += self._apply(idx, shape, ev, hidden)
                ok = len(placed) == n
        for idx, g, amount in hidden:
            self.allocate(idx, (g,), -amount, 0, 0)
        self.end(token, keep=ok)
        return tuple(placed) if ok else None

    def fits(self, demand: JobDemand) -> bool:
        """Whether the job would fit now; changes nothing."""
        token = self.begin()
        got = self.place(demand)
        self.end(token, keep=False)
        return got is not None

    def unallocated_gpu_milli(self) -> int:
        return sum(f for n in self.nodes for f in n.free if f > 0)
