"""The baseline policies the simulator compares `mesh` against, each a `SimPolicy`.

`fifo-firstfit`, `las` (least attained service), `best-fit` and `ray-default` (Ray 2.60's own
placement). Each call of `plan(snapshot, queue, running, now)`:
  1. Free capacity = the snapshot's schedulable nodes less what `running` holds: each bundle's
     `gpu_milli` on each of its GPUs, and its CPU and memory from `demand.bundles`.
  2. The queue in the policy's order: FIFO by `submitted_at` then id; LAS by GPU-seconds attained.
  3. Each job in turn is placed whole or not at all (gang); one that does not fit waits and later
     jobs may still start: greedy, no reservations; only LAS preempts (jobs of a lower queue).
  4. Every queued job not placed gets a `Waiting` with its reason.

The node rules are the FGD fill packers' (`scheduler.sim.packers`), called, not copied: GPUs in a
node by the raylet's rule (`pick_gpus`), best-fit's key (`best_fit_leftover`), Ray's scorer
(`least_resource`). No policy breaks CPU, memory, a job's GPU allow-list, `min_cc`, per-GPU memory
or `strict_pack`; none prefers a GPU model, a speed or an unfragmented node. A bundle sharing GPUs
(`BundleDemand.share_on`) takes its share of each of its GPUs, the largest any usable GPU of the
node asks where their memory differs, so one `gpu_milli` describes it. A job's bundles may share a
GPU, as in Ray.

Speed: nodes in the same state are one class and classes are grouped by summed free GPU milli, so
a search visits each class once and skips nodes without the GPU a job needs. Capacity only shrinks
during a call, so a shape that found no room waits without a search for the rest of it.
Pure and deterministic: no I/O, no clock, no randomness; ties go to the snapshot's node order.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from scheduler.cluster import ClusterSnapshot, Node
from scheduler.policy.model import (
    GPU_MILLI,
    BundleAssignment,
    BundleDemand,
    JobDemand,
    Placement,
    Plan,
    Preemption,
    QueuedJob,
    RunningJob,
    Waiting,
    cpu_milli,
    mib,
)
from scheduler.policy.packing import Shape
from scheduler.policy.reasons import describe_need
from scheduler.sim.packers import best_fit_leftover, least_resource, pick_gpus

CHECKPOINT_INTERVAL_S = 3600.0  # every baseline checkpoints hourly, wherever a job runs
_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class _Layout:
    """A node's GPUs as (model, memory MiB, compute capability); interned, hashed by identity."""

    gpus: tuple[tuple[str, int, tuple[int, int]], ...]


class _Need(NamedTuple):
    """One bundle on one layout: the GPUs it may use, its share of each, what it asks in all."""

    usable: tuple[int, ...]
    all_usable: bool
    gpus: int
    share: int
    cpu_milli: int
    memory_mib: int
    gpu_demand_milli: int  # the three `packers.Request` fields, for one bundle


class _Request(NamedTuple):
    """`count` bundles together, as the packers' rules read a request."""

    cpu_milli: int
    memory_mib: int
    gpu_demand_milli: int


class _Node:
    """Free capacity of one node; the attribute names are the packers' `Capacity` protocol."""

    def __init__(self, idx: int, node: Node, layout: _Layout) -> None:
        self.idx = idx
        self.name = node.name
        self.layout = layout
        self.free = [GPU_MILLI] * len(node.gpus)
        self.cpu_total = self.cpu_free = cpu_milli(node.cpus) if node.cpus else 0
        self.memory_total = self.memory_free = mib(node.memory_gb) if node.memory_gb else 0
        self.gpu_total = len(node.gpus) * GPU_MILLI
        self.gpu_free_sum = self.gpu_total
        self.fixed = (layout, self.cpu_total, self.memory_total)
        self.state: tuple[object, ...] = ()

    def refresh(self) -> None:
        self.gpu_free_sum = sum(f for f in self.free if f > 0)
        self.state = (self.fixed, tuple(self.free), self.cpu_free, self.memory_free)


class _Job:
    """A queued job as the search sees it: its (alike) bundles and, per layout, their `_Need`."""

    def __init__(self, demand: JobDemand) -> None:
        first = demand.bundles[0] if demand.bundles else BundleDemand(0, 0, 0)
        if demand.bundles != (first,) * len(demand.bundles):
            raise ValueError(f"{demand.job}: the bundles of one job must all be alike")
        self.demand = demand
        self.shape = Shape.of(demand, first)
        self.bundle = first
        self.count = len(demand.bundles)
        self._needs: dict[_Layout, _Need | None] = {}

    def need(self, layout: _Layout) -> _Need | None:
        """The bundle on a node of `layout`; None where too few of its GPUs are usable."""
        if layout in self._needs:
            return self._needs[layout]
        b, shape = self.bundle, self.shape
        usable = tuple(
            g
            for g, (model, memory, cc) in enumerate(layout.gpus)
            if (shape.models is None or model in shape.models)
            and (shape.min_cc is None or cc >= shape.min_cc)
            and (b.gpu_memory_mib is None or memory >= b.gpu_memory_mib)
        )
        found: _Need | None = None
        if b.gpus == 0:
            found = _Need((), True, 0, 0, b.cpu_milli, b.memory_mib, 0)
        elif len(usable) >= b.gpus:
            share = max(b.share_on(layout.gpus[g][1], shape.exclusive) for g in usable)
            share = min(max(share, 1), GPU_MILLI)
            every = len(usable) == len(layout.gpus)
            found = _Need(usable, every, b.gpus, share, b.cpu_milli, b.memory_mib, b.gpus * share)
        self._needs[layout] = found
        return found

    def least_gpu_milli(self, count: int) -> int:
        """A floor on the summed free GPU milli a node needs for `count` bundles."""
        return count * self.bundle.gpus * (_fixed_share(self.bundle, self.shape.exclusive) or 1)


def _fixed_share(b: BundleDemand, exclusive: bool) -> int | None:
    """The share of each GPU a bundle takes on any node; None where it depends on GPU memory."""
    if exclusive or (b.gpu_milli is None and b.gpu_memory_mib is None):
        return GPU_MILLI
    return None if b.gpu_milli is None else min(max(b.gpu_milli, 1), GPU_MILLI)


def _no_room_key(demand: JobDemand) -> tuple[object, ...] | None:
    """The key under which 'no room' holds for the rest of a call, or None where it need not.

    With whole GPUs or one GPU a bundle, every placement takes exactly one of the cluster's slots
    for a shape, so no room now means no room later. Flat, so that a long queue of waiting jobs
    costs one cheap lookup each.
    """
    if not demand.bundles:
        return None
    b = demand.bundles[0]
    if b.gpus > 1 and _fixed_share(b, demand.exclusive) != GPU_MILLI:
        return None
    return (
        *(b.gpus, b.cpu_milli, b.memory_mib, b.gpu_memory_mib, b.gpu_milli, demand.exclusive),
        *(demand.gpu_models, demand.min_cc, len(demand.bundles), demand.placement),
    )


class _Fail(NamedTuple):
    reason: str
    final: bool  # no room for this shape for the rest of the round


Picks = list[tuple[int, ...]]
Chooser = Callable[[_Job, int, set[int]], tuple[int, Picks] | None]


class _Cluster:
    """Free capacity during one call, indexed, with tentative takes that can be undone."""

    def __init__(self, snapshot: ClusterSnapshot, running: Sequence[RunningJob]) -> None:
        layouts: dict[tuple[tuple[str, float, tuple[int, int]], ...], _Layout] = {}
        self.nodes: list[_Node] = []
        for i, node in enumerate(snapshot.nodes):
            key = tuple((g.model, g.memory_gb, g.compute_capability) for g in node.gpus)
            layout = layouts.get(key)
            if layout is None:
                layout = layouts[key] = _Layout(tuple((m, mib(gb), cc) for m, gb, cc in key))
            self.nodes.append(_Node(i, node, layout))
        by_name = {n.name: n for n in self.nodes}
        for r in running:
            for a, b in zip(r.bundles, r.demand.bundles, strict=False):
                n = by_name.get(a.node)
                if n is None:
                    continue
                for g in a.gpus:
                    if 0 <= g < len(n.free):
                        n.free[g] -= a.gpu_milli
                n.cpu_free -= b.cpu_milli
                n.memory_free -= b.memory_mib
        # summed free GPU milli -> state -> indices of the nodes in that state, ascending
        self.buckets: dict[int, dict[tuple[object, ...], list[int]]] = {}
        self.sums: list[int] = []  # the keys of `buckets`, ascending
        for n, node in zip(self.nodes, snapshot.nodes, strict=True):
            n.refresh()
            if node.schedulable:
                self._enter(n)
        self.log: list[tuple[int, tuple[int, ...], int, int, int]] = []
        self.cpu_most = max((n.cpu_total for n in self.nodes), default=0)
        self.memory_most = max((n.memory_total for n in self.nodes), default=0)

    # ------------------------------------------------------------------ the index

    def _enter(self, n: _Node) -> None:
        bucket = self.buckets.get(n.gpu_free_sum)
        if bucket is None:
            bucket = self.buckets[n.gpu_free_sum] = {}
            bisect.insort(self.sums, n.gpu_free_sum)
        bisect.insort(bucket.setdefault(n.state, []), n.idx)

    def _leave(self, n: _Node) -> None:
        bucket = self.buckets[n.gpu_free_sum]
        members = bucket[n.state]
        members.pop(bisect.bisect_left(members, n.idx))
        if not members:
            del bucket[n.state]
            if not bucket:
                del self.buckets[n.gpu_free_sum]
                self.sums.pop(bisect.bisect_left(self.sums, n.gpu_free_sum))

    def classes(self, least: int, descending: bool = False) -> Iterator[tuple[int, list[int]]]:
        """(summed free GPU milli, members) of every class with at least `least` free milli."""
        sums = self.sums[bisect.bisect_left(self.sums, least) :]
        for s in reversed(sums) if descending else sums:
            for members in self.buckets[s].values():
                yield s, members

    def take(self, idx: int, gpus: Sequence[int], share: int, cpu: int, memory: int) -> None:
        """Hold capacity on node idx (negative amounts give it back); `undo` can revert it."""
        n = self.nodes[idx]
        self._leave(n)
        for g in gpus:
            n.free[g] -= share
        n.cpu_free -= cpu
        n.memory_free -= memory
        n.refresh()
        self._enter(n)
        self.log.append((idx, tuple(gpus), share, cpu, memory))

    def undo(self, mark: int) -> None:
        """Give back everything taken since the log was `mark` long."""
        for idx, gpus, share, cpu, memory in reversed(self.log[mark:]):
            self.take(idx, gpus, -share, -cpu, -memory)
        del self.log[mark:]

    def assign(self, idx: int, job: _Job, picks: Picks) -> list[BundleAssignment]:
        """Take what `picks` chose on node idx, one bundle of `job` per entry."""
        n = self.nodes[idx]
        need = job.need(n.layout)
        assert need is not None
        out = []
        for gpus in picks:
            self.take(idx, gpus, need.share, need.cpu_milli, need.memory_mib)
            out.append(BundleAssignment(n.name, gpus, need.share if gpus else GPU_MILLI))
        return out

    # --------------------------------------------------------- one node, one rule

    @staticmethod
    def exact(n: _Node, need: _Need, count: int) -> Picks | None:
        """The GPUs `count` bundles take on n by the raylet's rule, CPU and memory checked."""
        if n.cpu_free < need.cpu_milli * count or n.memory_free < need.memory_mib * count:
            return None
        if not need.gpus:
            return [()] * count
        free = n.free
        out: Picks = []
        for i in range(count):
            got = pick_gpus(free, need.gpus, need.share, need.usable)
            if got is None:
                return None
            out.append(tuple(got))
            if i + 1 < count:
                free = list(free) if i == 0 else free
                for g in got:
                    free[g] -= need.share
        return out

    @staticmethod
    def _member(members: list[int], avoid: set[int]) -> int:
        """The first node of a class that is not in `avoid`; -1 if none."""
        if members[0] not in avoid:
            return members[0]
        return next((m for m in members if m not in avoid), -1)

    def _fitting(
        self, job: _Job, count: int, avoid: set[int], below: list[int]
    ) -> Iterator[tuple[int, _Node, _Need, Picks]]:
        """One node per class where `count` bundles fit, skipping `avoid` and any index not
        below `below[0]` (a bound the caller may lower as it goes)."""
        for _, members in self.classes(job.least_gpu_milli(count)):
            idx = self._member(members, avoid)
            if 0 <= idx < below[0]:
                n = self.nodes[idx]
                need = job.need(n.layout)
                picks = None if need is None else self.exact(n, need, count)
                if need is not None and picks is not None:
                    yield idx, n, need, picks

    def first_fit(self, job: _Job, count: int, avoid: set[int]) -> tuple[int, Picks] | None:
        """The first node, in snapshot order, that holds `count` bundles (packers.FirstFit)."""
        below, best = [len(self.nodes)], None
        for idx, _, _, picks in self._fitting(job, count, avoid, below):
            below[0], best = idx, (idx, picks)
        return best

    def best_fit(self, job: _Job, count: int, avoid: set[int]) -> tuple[int, Picks] | None:
        """The node left tightest by `best_fit_leftover` (packers.BestFit), ties to order."""
        best: tuple[float, int, Picks] | None = None
        for idx, n, need, picks in self._fitting(job, count, avoid, [len(self.nodes)]):
            key = best_fit_leftover(_times(need, count), n)
            if best is None or (key, idx) < best[:2]:
                best = (key, idx, picks)
        return None if best is None else (best[1], best[2])

    def gcs_best(self, job: _Job, count: int, avoid: set[int], among: set[int] | None) -> int:
        """Ray's GCS: the node with the highest `least_resource` score for `count` bundles as it
        sees them (the GPU as a summed amount), among `among` (default all) less `avoid`; -1 if
        none. Classes come by summed free GPU, most first, and the search stops where even a
        perfect CPU and memory score could not reach the best found."""
        best, best_score = -1, -1.0
        least = job.least_gpu_milli(count)
        # no node's CPU or memory term beats an idle node's of the largest totals
        pairs = [(job.bundle.cpu_milli * count, self.cpu_most)]
        pairs.append((job.bundle.memory_mib * count, self.memory_most))
        other_terms = sum((most - amount) / most for amount, most in pairs if 0 < amount < most)
        if among is not None:
            sources: Iterator[tuple[int, list[int]]] = iter(
                [(self.nodes[i].gpu_free_sum, [i]) for i in sorted(among) if i not in avoid]
            )
        else:
            sources = self.classes(least, descending=True)
        prune = among is None and least > 0  # classes come most free GPU first
        asks: dict[_Layout, _Request] = {}
        for s, members in sources:
            if prune and best >= 0 and other_terms + (s - least) / s < best_score - _EPS:
                break
            idx = members[0] if members[0] not in avoid else self._member(members, avoid)
            if idx < 0:
                continue
            n = self.nodes[idx]
            ask = asks.get(n.layout)
            if ask is None:
                need = job.need(n.layout)
                if need is None or (not need.all_usable and _gcs_room(n, need) < count):
                    continue
                if need.all_usable:
                    ask = asks[n.layout] = _times(need, count)
                else:
                    ask = _times(need, count)
            score = least_resource(ask, n)
            if score is not None and (score > best_score or (score == best_score and idx < best)):
                best, best_score = idx, score
        return best


def _times(need: _Need, count: int) -> _Request:
    return _Request(need.cpu_milli * count, need.memory_mib * count, need.gpu_demand_milli * count)


def _gcs_room(n: _Node, need: _Need) -> int:
    """How many bundles Ray's GCS sees room for on n: CPU, memory and summed usable free GPU."""
    gpu = n.gpu_free_sum if need.all_usable else sum(max(n.free[g], 0) for g in need.usable)
    pairs = [(need.cpu_milli, n.cpu_free), (need.memory_mib, n.memory_free)]
    pairs.append((need.gpu_demand_milli, gpu))
    return min((max(free, 0) // amount for amount, free in pairs if amount), default=1 << 30)


# --------------------------------------------------------------------- placing one job


def _greedy(cluster: _Cluster, job: _Job, choose: Chooser) -> tuple[BundleAssignment, ...] | _Fail:
    """First-fit's or best-fit's placement of a whole job, all bundles or none.

    One bundle or `strict_pack`: the node `choose` gives for all of them. `pack`: bundle by
    bundle, each where `choose` puts it (first-fit fills the first node with room, then the next).
    `spread`: bundle by bundle on nodes the job does not use yet, else on any.
    """
    one_node = job.count == 1 or job.demand.placement == "strict_pack"
    count = job.count if one_node else 1
    mark = len(cluster.log)
    out: list[BundleAssignment] = []
    used: set[int] = set()
    for _ in range(1 if one_node else job.count):
        got = choose(job, count, used) if job.demand.placement == "spread" else None
        got = got or choose(job, count, set())
        if got is None:
            cluster.undo(mark)
            return _Fail(f"no room: {describe_need(job.demand)}", final=True)
        used.add(got[0])
        out += cluster.assign(got[0], job, got[1])
    return tuple(out)


def _ray(cluster: _Cluster, job: _Job) -> tuple[BundleAssignment, ...] | _Fail:
    """Ray 2.60's placement of a job's placement group, emulated (packers.RayDefault).

    1. The GCS chooses nodes by `least_resource` over what it sees, a node's summed free GPU:
       STRICT_PACK one node for all bundles; PACK the best node for one bundle, then as many more
       as it sees room for there, then the next best node; SPREAD the best unused node per bundle,
       else the best used one.
    2. Each chosen node's raylet takes GPUs by the per-GPU rule. Where they do not fit (a node
       whose free GPU is in fragments too small for the bundle), the group never becomes ready:
       the job holds nothing and waits (ray#52133's phantom usage is not modelled).
    """
    mark = len(cluster.log)
    out: list[BundleAssignment] = []
    left = job.count
    used: set[int] = set()
    placement = job.demand.placement
    while left:
        count = left if placement == "strict_pack" or job.count == 1 else 1
        idx = cluster.gcs_best(job, count, used, None)
        if idx < 0 and placement == "spread" and used:
            idx = cluster.gcs_best(job, count, set(), used)
        if idx < 0:
            cluster.undo(mark)
            return _Fail(f"no room: {describe_need(job.demand)}", final=True)
        n = cluster.nodes[idx]
        need = job.need(n.layout)
        assert need is not None
        if placement == "pack":
            count = min(left, _gcs_room(n, need))
        picks = cluster.exact(n, need, count)
        if picks is None:
            cluster.undo(mark)
            stuck = (
                f"stuck: Ray 2.60 picks node {n.name} by its summed free GPU, but its GPUs are too"
                f" fragmented to hold {count} x {need.gpus} GPU at {need.share / GPU_MILLI:g}"
                " each; the group would not become ready"
            )
            return _Fail(stuck, final=False)
        out += cluster.assign(idx, job, picks)
        used.add(idx)
        left -= count
    return tuple(out)


# --------------------------------------------------------------------------- policies


class _Greedy:
    """A baseline: queue order, then each job placed whole by one rule, greedily."""

    name = ""

    def order(self, queue: Sequence[JobDemand]) -> list[JobDemand]:
        """FIFO: by submission time, then job id."""
        return sorted(queue, key=lambda d: (d.submitted_at, d.job))

    def place(self, cluster: _Cluster, job: _Job) -> tuple[BundleAssignment, ...] | _Fail:
        return _greedy(cluster, job, cluster.first_fit)

    def plan(
        self,
        snapshot: ClusterSnapshot,
        queue: Sequence[QueuedJob],
        running: Sequence[RunningJob],
        now: float,
    ) -> Plan:
        # 1. free capacity: the snapshot less what running jobs hold
        cluster = _Cluster(snapshot, running)
        # 2. the queue in this policy's order (a job already running is not queued again)
        held = {r.demand.job for r in running}
        queued = {q.demand.job: q.demand for q in queue if q.demand.job not in held}
        placements: list[Placement] = []
        waiting: list[Waiting] = []
        no_room: dict[tuple[object, ...], str] = {}
        # 3. each job whole or not at all; one that does not fit waits, later ones may start
        for demand in self.order(list(queued.values())):
            key = _no_room_key(demand)
            reason = no_room.get(key) if key is not None else None
            got = _Fail(reason, True) if reason else self.place(cluster, _Job(demand))
            if isinstance(got, _Fail):  # 4. why it waits
                waiting.append(Waiting(demand.job, (got.reason,)))
                if got.final and key is not None:
                    no_room[key] = got.reason
            else:
                placements.append(Placement(demand.job, got))
        return Plan(placements=tuple(placements), waiting=tuple(waiting))

    def checkpoint_interval_s(
        self, demand: JobDemand, bundles: Sequence[BundleAssignment], snapshot: ClusterSnapshot
    ) -> float:
        return CHECKPOINT_INTERVAL_S


class FifoFirstFit(_Greedy):
    """FIFO; each job on the first nodes, in snapshot order, with room for it."""

    name = "fifo-firstfit"


LAS_THRESHOLDS_S = (3600.0,)
"""Tiresias's discretized queues: a job with less than 1 GPU-hour attained is in queue 0, one
with more in queue 1 (its two-queue setting for the Philly traces Gavel's are drawn from)."""
LAS_MAX_VICTIMS = 64  # running jobs a queued job may look at to make room


def _least_share(demand: JobDemand) -> float:
    """The least fraction of a GPU each of the job's GPUs takes (1 for whole GPUs)."""
    if demand.exclusive:
        return 1.0
    if any(b.gpu_milli is None and b.gpu_memory_mib is not None for b in demand.bundles):
        return 0.0  # its share depends on the GPU it lands on
    shares = [b.gpu_milli / GPU_MILLI for b in demand.bundles if b.gpu_milli is not None]
    return min(shares) if shares else 1.0


class Las(_Greedy):
    """Tiresias-style discretized least attained service (2D-LAS), placed first-fit.

    A job's queue is set by the GPU-seconds it attained (`LAS_THRESHOLDS_S`); the queue goes
    lowest queue first, FIFO within a queue. A queued job that does not fit preempts running jobs
    of a lower queue (higher index), the most attained first, when stopping them makes room for
    it; jobs of the same queue never preempt each other. Preempted jobs keep their work (the
    engine checkpoints them) and wait in their queue. `JobDemand` carries no attained figure, so
    the engine sets `attained_gpu_seconds` (job id -> GPU-seconds, running jobs included) before
    each call; a job not in it has attained none.
    """

    name = "las"

    def __init__(self, attained_gpu_seconds: Mapping[str, float] | None = None) -> None:
        self.attained_gpu_seconds: Mapping[str, float] = dict(attained_gpu_seconds or {})

    def level(self, job: str) -> int:
        return bisect.bisect_right(LAS_THRESHOLDS_S, self.attained_gpu_seconds.get(job, 0.0))

    def order(self, queue: Sequence[JobDemand]) -> list[JobDemand]:
        return sorted(queue, key=lambda d: (self.level(d.job), d.submitted_at, d.job))

    def plan(
        self,
        snapshot: ClusterSnapshot,
        queue: Sequence[QueuedJob],
        running: Sequence[RunningJob],
        now: float,
    ) -> Plan:
        kept = list(running)
        placed: list[RunningJob] = []  # this call's placements, as the cluster holds them
        preempted: list[Preemption] = []
        cluster = _Cluster(snapshot, kept)
        held = {r.demand.job for r in running}
        queued = [q.demand for q in queue if q.demand.job not in held]
        waiting: list[Waiting] = []
        for demand in self.order(queued):
            got = self.place(cluster, _Job(demand))
            if isinstance(got, _Fail):
                made = self._make_room(snapshot, demand, kept, placed)
                if made is None:
                    waiting.append(Waiting(demand.job, (got.reason,)))
                    continue
                cluster, got, victims = made
                kept = [r for r in kept if r not in victims]
                queue_of = self.level(demand.job)
                preempted += [
                    Preemption(
                        v.demand.job,
                        f"las: queue {self.level(v.demand.job)} job stopped for {demand.job}"
                        f" (queue {queue_of})",
                    )
                    for v in victims
                ]
            placed.append(RunningJob(demand, got, now))
        return Plan(
            placements=tuple(Placement(r.demand.job, r.bundles) for r in placed),
            preemptions=tuple(preempted),
            waiting=tuple(waiting),
        )

    def _make_room(
        self,
        snapshot: ClusterSnapshot,
        demand: JobDemand,
        kept: list[RunningJob],
        placed: list[RunningJob],
    ) -> tuple[_Cluster, tuple[BundleAssignment, ...], list[RunningJob]] | None:
        """The fewest running jobs of lower queues, most attained first, whose stop lets
        `demand` start; the cluster without them and with `demand`; None if none do."""
        mine = self.level(demand.job)
        lower = sorted(
            (r for r in kept if self.level(r.demand.job) > mine),
            key=lambda r: (-self.level(r.demand.job), -r.attained_gpu_seconds, r.demand.job),
        )[:LAS_MAX_VICTIMS]
        if not lower:
            return None
        # whole GPUs free now: stopping fewer victims than make up the rest cannot be enough
        total = sum(len(n.gpus) for n in snapshot.nodes if n.schedulable)
        free = total - sum(r.gpus_held() for r in kept) - sum(r.gpus_held() for r in placed)
        victims: list[RunningJob] = []
        freed = 0.0
        for r in lower:
            victims.append(r)
            freed += r.gpus_held()
            if free + freed + _EPS < demand.gpus * _least_share(demand):
                continue
            rest = [k for k in kept if k not in victims] + placed
            cluster = _Cluster(snapshot, rest)
            got = self.place(cluster, _Job(demand))
            if not isinstance(got, _Fail):
                return cluster, got, victims
        return None


class BestFit(_Greedy):
    """FIFO; each job where it leaves its node tightest (packers.BestFitPacker's key)."""

    name = "best-fit"

    def place(self, cluster: _Cluster, job: _Job) -> tuple[BundleAssignment, ...] | _Fail:
        return _greedy(cluster, job, cluster.best_fit)


class RayDefault(_Greedy):
    """FIFO; Ray 2.60's own placement of each job's placement group (`_ray`)."""

    name = "ray-default"

    def place(self, cluster: _Cluster, job: _Job) -> tuple[BundleAssignment, ...] | _Fail:
        return _ray(cluster, job)


BASELINES: dict[str, type[_Greedy]] = {p.name: p for p in (FifoFirstFit, Las, BestFit, RayDefault)}
"""The baseline policies by `name`; each class builds a policy with no arguments."""
