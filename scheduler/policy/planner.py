"""`plan(snapshot, queue, running, now) -> Plan`: one scheduling round, as a pure function.

The round, in order:
  1. Free capacity = the snapshot's nodes minus what running jobs hold.
  2. Queue order: priority first (high, normal, low); within a priority, weighted fair share
     across communities: the community holding the fewest GPUs per unit of weight goes next
     (ties: fewer attained GPU-seconds per weight, then name); within a community, FIFO.
  3. Each job in that order is placed if it fits (packing.Placer: fragmentation-aware, all
     bundles or none) without delaying a job that holds a reservation (backfill).
  4. A `high` job that does not fit may preempt `low` preemptible jobs: the set that loses the
     fewest GPU-seconds since their last checkpoint, and only if the job then fits.
  5. A job that still does not fit gets a reserved start (the earliest time that running jobs'
     expected ends free enough room), up to MAX_RESERVATIONS jobs; later, smaller jobs may start
     ahead of it only where they end before that time or leave its resources alone.
  6. Every job left waiting gets its reasons, with numbers, counted per cause.
No I/O, no clock (`now` is an argument), no randomness: the same input gives the same plan.

Deep queues hold many jobs of a few kinds. Jobs the placer cannot tell apart (same bundles,
constraints, measured speeds, and runtime where nodes can fail) are searched for once per state
of the round, and a kind that found no room behind some reservations is not searched again
behind those or more (room only shrinks during a round, until a preemption). The plan is the
same as searching for every job; the searches per round grow with the kinds, not the jobs.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.cluster import ClusterSnapshot
from scheduler.policy.model import (
    GPU_MILLI,
    PRIORITY_NAMES,
    BundleAssignment,
    JobDemand,
    Placement,
    Plan,
    Preemption,
    QueuedJob,
    RunningJob,
    Waiting,
)
from scheduler.policy.packing import Placer, profile_of
from scheduler.policy.reasons import describe_need, duration, explain

MAX_RESERVATIONS = 8  # blocked jobs that hold a reserved start; later ones simply wait
PREEMPTION_NODE_TRIES = 16  # nodes tried one by one when looking for the cheapest victims
# Within a community and priority: "fifo" (first come, first served) or "smallest" (least
# expected GPU-seconds first). Chosen by measurement with `meshctl sim` (benchmarks/README.md).
WITHIN_COMMUNITY = "smallest"
# A job waits for a faster GPU model (one at least this much faster, by its measured speeds)
# when it would end sooner there than on the slower GPUs free now: earliest finish time, from
# the running jobs' expected ends.
FASTER_BY = 0.2
AGING_S = 86400.0  # "smallest": a job counts half its size after waiting this long, a third
# after twice as long, and so on


@dataclass
class _Reservation:
    job: str
    start: float
    bundles: tuple[BundleAssignment, ...]
    demand: JobDemand
    # per node: [milli on each GPU..., cpu milli, memory MiB]
    need: dict[str, list[int]] = field(default_factory=dict)  # what the reservation takes
    released: dict[str, list[int]] = field(default_factory=dict)  # what ends give back by `start`


@dataclass(frozen=True)
class _Active:
    """A job holding capacity during the round: running before it, or placed in it."""

    demand: JobDemand
    bundles: tuple[BundleAssignment, ...]
    end: float


def within_community(d: JobDemand, now: float) -> tuple[float, float, str]:
    """The order of one community's jobs of one priority (WITHIN_COMMUNITY).

    "smallest": least expected GPU-seconds first, a job's size divided by 1 + the time it has
    waited in units of AGING_S, so that large jobs are not starved; jobs without an expected
    runtime (services) come last. "fifo": first come, first served.
    """
    if WITHIN_COMMUNITY == "smallest":
        work = d.gpus * d.runtime_s if d.runtime_s is not None else math.inf
        waited = max(0.0, now - d.submitted_at)
        return (work / (1.0 + waited / AGING_S), d.submitted_at, d.job)
    return (d.submitted_at, 0.0, d.job)


class _Round:
    def __init__(
        self,
        snapshot: ClusterSnapshot,
        queue: Sequence[QueuedJob],
        running: Sequence[RunningJob],
        now: float,
    ) -> None:
        self.snapshot = snapshot
        self.now = now
        self.running = {r.demand.job: r for r in running}
        self.queue = [q.demand for q in queue if q.demand.job not in self.running]
        profile = profile_of([*self.queue, *(r.demand for r in running)])
        self.placer = Placer(
            snapshot.nodes, profile, snapshot.speeds, held=[(r.demand, r.bundles) for r in running]
        )
        self.active: dict[str, _Active] = {}
        for r in running:
            self.active[r.demand.job] = _Active(r.demand, r.bundles, r.expected_end(now))
        self.placements: list[Placement] = []
        self.preemptions: list[Preemption] = []
        self.reservations: list[_Reservation] = []
        self.blocked: dict[str, str] = {}  # job -> reason that is not about capacity
        self.notes: dict[str, list[str]] = {}
        self.order: list[JobDemand] = []
        self._ends: dict[str, list[float]] | None = None
        # Deep queues hold many jobs of a few kinds: where a job of some kind would go, and whether
        # it would rather wait for faster GPUs, is asked once per state of the round and reused
        # for every later job of that kind; `_new_state` forgets both.
        self._tries: dict[tuple[object, ...], tuple[BundleAssignment, ...] | None] = {}
        self._faster: dict[
            tuple[object, ...], tuple[str, float, list[tuple[str, float, float]]] | None
        ] = {}
        self._alike_ids: dict[tuple[object, ...], int] = {}
        self._shape_ids: dict[tuple[object, ...], int] = {}
        self._shape_of: dict[str, int] = {}  # job -> the number of its bundles and constraints
        # reservations set aside on the placer now: (which, undo token, GPU thousandths)
        self._held: tuple[frozenset[int], tuple[int, bool], int] | None = None
        self._failed: dict[int, list[frozenset[int]]] = {}  # cleared by preemption
        self._models = sorted({m for t in self.placer.types for m in t.models})
        self._reliability_matters = any(t.mtbf_h is not None for t in self.placer.types)

    # ------------------------------------------------------------------ 2. order

    def ordered(self) -> list[JobDemand]:
        """The queue in the order jobs are considered (ordering only; placement is separate)."""
        return self._walk(place=False)

    def _walk(self, place: bool) -> list[JobDemand]:
        """The queue in order; with `place`, each job is considered for placement on its turn."""
        weights = self.snapshot.community_weights
        held: dict[str, float] = {}
        attained: dict[str, float] = {}
        for r in self.running.values():
            c = r.demand.community
            held[c] = held.get(c, 0.0) + r.gpus_held()
            attained[c] = attained.get(c, 0.0) + r.attained_gpu_seconds
        out: list[JobDemand] = []
        for prio in sorted({d.priority for d in self.queue}, reverse=True):
            fifo: dict[str, deque[JobDemand]] = {}
            same = (d for d in self.queue if d.priority == prio)
            for d in sorted(same, key=lambda d: within_community(d, self.now)):
                fifo.setdefault(d.community, deque()).append(d)

            def share(c: str) -> tuple[float, float, str]:
                w = max(weights.get(c, 1.0), 1e-9)
                return (held.get(c, 0.0) / w, attained.get(c, 0.0) / w, c)

            # the community with the smallest share goes next: a heap, as only the community
            # whose job was just placed changes its share
            turn = [share(c) for c in fifo]
            heapq.heapify(turn)
            while turn:
                c = heapq.heappop(turn)[2]
                d = fifo[c].popleft()
                placed = self.consider(d) if place else False
                if placed:
                    held[c] = held.get(c, 0.0) + d.gpus
                out.append(d)
                if fifo[c]:
                    heapq.heappush(turn, share(c))
        self._unhold()
        return out

    # ------------------------------------------------------------ 3.-5. placing

    def _end(self, d: JobDemand) -> float:
        return self.now + d.runtime_s if d.runtime_s is not None else math.inf

    def _holds(self, which: frozenset[int]) -> list[tuple[str, list[int], int, int]]:
        """Capacity that must be left alone so that the reservations `which` do not slip."""
        out = []
        for i in sorted(which):
            r = self.reservations[i]
            for node, row in r.need.items():
                rel = r.released.get(node, [0] * len(row))
                held = [max(0, x - y) for x, y in zip(row, rel, strict=True)]
                out.append((node, held[:-2], held[-2], held[-1]))
        return out

    def _hold(self, which: frozenset[int]) -> None:
        """Set aside what the reservations `which` need (undone by `_unhold`). Consecutive
        searches behind the same reservations share one setting-aside."""
        if self._held is not None and self._held[0] == which:
            return
        self._unhold()
        if not which:
            return
        token = self.placer.begin()
        before = self.placer.free_gpu_milli
        for node, gpus, cpu, mem in self._holds(which):
            by_amount: dict[int, list[int]] = {}
            for g, amount in enumerate(gpus):
                if amount:
                    by_amount.setdefault(amount, []).append(g)
            for amount, idxs in by_amount.items():
                self.placer.allocate(node, idxs, amount, 0, 0)
            if cpu or mem:
                self.placer.allocate(node, (), 0, cpu, mem)
        self._held = (which, token, before - self.placer.free_gpu_milli)

    def _unhold(self) -> None:
        """Give back what `_hold` set aside; before anything changes the round's state."""
        if self._held is not None:
            self.placer.end(self._held[1], keep=False)
            self._held = None

    def _alike(self, d: JobDemand) -> int:
        """What decides where the placer puts `d` and whether it waits for faster GPUs, as a
        number: jobs with equal numbers are treated alike (the same bundles and constraints, the
        same measured speeds, None where the catalogue's apply)."""
        measured = self.snapshot.speeds
        speeds = (
            tuple(measured.get((d.job, m)) for m in self._models) if d.speed_sensitive else None
        )
        runtime = d.runtime_s if self._reliability_matters else None
        shape = (d.bundles_key, d.placement, d.exclusive, d.gpu_models, d.min_cc)
        shape_id = self._shape_of[d.job] = self._shape_ids.setdefault(shape, len(self._shape_ids))
        return self._alike_ids.setdefault((shape_id, speeds, runtime), len(self._alike_ids))

    def _new_state(self) -> None:
        """Capacity or reservations changed: forget where kinds of job would go."""
        self._tries.clear()
        self._faster.clear()

    def _where(
        self, d: JobDemand, alike: int
    ) -> tuple[tuple[BundleAssignment, ...] | None, tuple[object, ...]]:
        """Where `d` would go now without delaying a reservation (None: nowhere), and the key
        under which that answer is kept for this state; changes nothing. Capacity only shrinks
        during a round (until a preemption) and reservations are only added, so a job that found
        no room finds none later with the same reservations or more in its way: such failures
        are remembered across the round."""
        end = self._end(d)
        holds = frozenset(i for i, r in enumerate(self.reservations) if end > r.start)
        key = (alike, holds)
        held = self._held[2] if self._held is not None else 0
        if self.placer.least_gpu_milli(d) > self.placer.free_gpu_milli + held:
            return None, key
        if any(h <= holds for h in self._failed.get(alike, ())):
            return None, key
        if key not in self._tries:
            self._hold(holds)
            token = self.placer.begin()
            self._tries[key] = self.placer.place(d)
            self.placer.end(token, keep=False)
            if self._tries[key] is None:
                self._failed.setdefault(alike, []).append(holds)
        return self._tries[key], key

    def _fits(self, d: JobDemand, alike: int) -> bool:
        """Whether `d` would fit now, reservations aside."""
        key = (alike, None)
        if key not in self._tries:
            self._unhold()
            token = self.placer.begin()
            self._tries[key] = self.placer.place(d)
            self.placer.end(token, keep=False)
        return self._tries[key] is not None

    def _record(self, d: JobDemand, bundles: tuple[BundleAssignment, ...]) -> None:
        self._new_state()
        self.placements.append(Placement(d.job, bundles))
        end = self._end(d)
        self.active[d.job] = _Active(d, bundles, end)
        self._add_ends(bundles, end)
        for r in self.reservations:
            if end <= r.start:
                _add_usage(r.released, self.placer, d, bundles)

    def _model_ends(self) -> dict[str, list[float]]:
        """Expected ends of the whole GPUs held, by GPU model (built once a round, kept up)."""
        if self._ends is None:
            self._ends = {}
            for act in self.active.values():
                self._add_ends(act.bundles, act.end)
        return self._ends

    def _add_ends(self, bundles: Sequence[BundleAssignment], end: float) -> None:
        if self._ends is None:
            return
        for a in bundles:
            n = self.placer.by_name.get(a.node)
            if n is None or a.gpu_milli < GPU_MILLI:
                continue
            for g in a.gpus:
                if 0 <= g < len(n.node.gpus):
                    bisect.insort(self._ends.setdefault(n.node.gpus[g].model, []), end)

    def _faster_soon(
        self, d: JobDemand, got: tuple[BundleAssignment, ...], key: tuple[object, ...]
    ) -> str | None:
        """Why `d` should wait rather than start on `got`, when GPUs of a faster model free up
        soon enough that it would end sooner there (earliest finish time); None to start now.
        `key` is the one `_where` kept `got` under: jobs with that key were offered the same."""
        if not (d.speed_sensitive and d.runtime_s and all(a.gpu_milli >= GPU_MILLI for a in got)):
            return None
        if key not in self._faster:
            models = tuple(
                self.placer.by_name[a.node].node.gpus[g].model for a in got for g in a.gpus
            )
            self._faster[key] = self._faster_models(d, models)
        found = self._faster[key]
        if found is None:
            return None
        slow, speed_now, options = found
        end_now = self.now + d.runtime_s / speed_now
        best: tuple[float, str, float] | None = None
        for model, speed, free_at in options:
            end = free_at + d.runtime_s / speed
            if end < end_now and (best is None or end < best[0]):
                best = (end, model, free_at)
        if best is None:
            return None
        end, model, free_at = best
        return (
            f"waits for {model} GPUs, expected free in {duration(free_at - self.now)}: it would "
            f"end in {duration(end - self.now)} there, in {duration(end_now - self.now)} if it "
            f"started now on {slow}"
        )

    def _faster_models(
        self, d: JobDemand, models: tuple[str, ...]
    ) -> tuple[str, float, list[tuple[str, float, float]]] | None:
        """For jobs like `d` offered GPUs of `models`: the slowest of them, its speed, and the
        measurably faster models with the time enough of their GPUs free up. The same for every
        job that `_alike` cannot tell apart, until the next placement."""
        measured = self.snapshot.speeds
        if not models or any((d.job, m) not in measured for m in models):
            return None  # only a measured speed-up is worth waiting for, not the catalogue's guess
        slow = min(models, key=lambda m: self.placer.speed(d, m))
        speed_now = self.placer.speed(d, slow)
        options = []
        for model, ends in self._model_ends().items():
            if (d.job, model) not in measured:
                continue
            speed = measured[(d.job, model)]
            if speed <= speed_now * (1 + FASTER_BY) or len(ends) < len(models):
                continue
            if d.gpu_models is not None and model not in d.gpu_models:
                continue
            options.append((model, speed, max(self.now, ends[len(models) - 1])))
        return slow, speed_now, options

    def consider(self, d: JobDemand) -> bool:
        alike = self._alike(d)
        got, key = self._where(d, alike)
        if got is not None:
            why = self._faster_soon(d, got, key)
            if why is None:
                self._unhold()
                self.placer.allocate_assignments(d, got)
                self._record(d, got)
                return True
            self.blocked[d.job] = why
            return False
        if self.reservations and self._fits(d, alike):
            r = min(self.reservations, key=lambda r: r.start)
            self.blocked[d.job] = (
                f"fits now, but would delay {r.job}, reserved to start in"
                f" {duration(r.start - self.now)}"
                + (
                    f"; it could start now if it ended sooner (expected {duration(d.runtime_s)})"
                    if d.runtime_s is not None
                    else ""
                )
            )
            return False
        self._unhold()
        if d.priority == 2 and self._preempt_for(d):
            got = self.placer.place(d)
            assert got is not None  # _preempt_for only succeeds when the job then fits
            self._record(d, got)
            return True
        if len(self.reservations) < MAX_RESERVATIONS:
            self._reserve(d)
        return False

    # ----------------------------------------------------------- 4. preemption

    def _lost(self, r: RunningJob) -> float:
        since = r.checkpointed_at if r.checkpointed_at is not None else r.started_at
        return r.gpus_held() * max(0.0, self.now - since)

    def _greedy_victims(self, d: JobDemand, order: list[RunningJob]) -> list[RunningJob] | None:
        """Release victims in `order` until `d` fits, then keep only those still needed."""
        token = self.placer.begin()
        chosen: list[RunningJob] = []
        fits = False
        for r in order:
            self.placer.allocate_assignments(r.demand, r.bundles, sign=-1)
            chosen.append(r)
            if self.placer.fits(d):
                fits = True
                break
        if fits:
            for r in sorted(chosen, key=lambda r: (-self._lost(r), r.demand.job)):
                self.placer.allocate_assignments(r.demand, r.bundles)
                if self.placer.fits(d):
                    chosen.remove(r)
                else:
                    self.placer.allocate_assignments(r.demand, r.bundles, sign=-1)
        self.placer.end(token, keep=False)
        return chosen if fits else None

    def _preempt_for(self, d: JobDemand) -> bool:
        cands = sorted(
            (
                r
                for r in self.running.values()
                if r.demand.priority == 0 and r.demand.preemptible and r.demand.job in self.active
            ),
            key=lambda r: (self._lost(r), r.demand.job),
        )
        if not cands:
            return False
        options: list[list[RunningJob]] = []
        everything = self._greedy_victims(d, cands)
        if everything is None:
            self.notes.setdefault(d.job, []).append(
                f"preempting all {len(cands)} preemptible low-priority"
                f" job{'s' if len(cands) != 1 else ''} would not make room"
            )
            return False
        options.append(everything)
        by_node: dict[str, list[RunningJob]] = {}
        for r in cands:
            for node in sorted({a.node for a in r.bundles}):
                by_node.setdefault(node, []).append(r)
        ranked = sorted(by_node, key=lambda n: (sum(self._lost(r) for r in by_node[n]), n))
        for node in ranked[:PREEMPTION_NODE_TRIES]:
            got = self._greedy_victims(d, by_node[node])
            if got is not None:
                options.append(got)
        victims = min(
            options,
            key=lambda v: (sum(self._lost(r) for r in v), sorted(r.demand.job for r in v)),
        )
        self._new_state()
        self._failed.clear()  # capacity given back: what failed before may fit now
        need = describe_need(d)
        for r in sorted(victims, key=lambda r: r.demand.job):
            self.placer.allocate_assignments(r.demand, r.bundles, sign=-1)
            del self.active[r.demand.job]
            lost = self._lost(r)
            self.preemptions.append(
                Preemption(
                    r.demand.job,
                    f"preempted for {d.job} ({PRIORITY_NAMES[d.priority]} priority), which {need};"
                    f" loses {lost:.0f} GPU-seconds since its last checkpoint",
                )
            )
        return True

    # ---------------------------------------------------------- 5. reservation

    def _reserve(self, d: JobDemand) -> None:
        """Find the earliest time running jobs' expected ends leave room for `d`, and hold it."""
        ends = sorted(
            (a for a in self.active.values() if a.end != math.inf),
            key=lambda a: (a.end, a.demand.job),
        )
        # Room only grows as jobs end, so the earliest start is found by galloping, then
        # bisecting, over the distinct end times (cut k = the state after the first k ends), on
        # one scratch copy: ends are given back as the search moves on, trial states undone.
        cuts = [
            i + 1 for i in range(len(ends)) if i + 1 == len(ends) or ends[i + 1].end != ends[i].end
        ]
        if not cuts:
            return
        scratch = self.placer.copy()
        for r in self.reservations:
            scratch.allocate_assignments(r.demand, r.bundles)
        released = 0

        def release_to(k: int) -> None:
            nonlocal released
            for a in ends[released:k]:
                scratch.allocate_assignments(a.demand, a.bundles, sign=-1)
            released = max(released, k)

        def fits_at(k: int) -> bool:
            token = scratch.begin()
            for a in ends[released:k]:
                scratch.allocate_assignments(a.demand, a.bundles, sign=-1)
            ok = scratch.fits(d)
            scratch.end(token, keep=False)
            return ok

        lo, hi, step = -1, -1, 1
        while hi < 0:
            i = min(lo + step, len(cuts) - 1)
            if fits_at(cuts[i]):
                hi = i
            elif i == len(cuts) - 1:
                return  # even when every job with an expected end has ended, it does not fit
            else:
                lo = i
                release_to(cuts[i])
                step *= 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits_at(cuts[mid]):
                hi = mid
            else:
                lo = mid
                release_to(cuts[mid])
        release_to(cuts[hi])
        best = scratch.place(d)
        assert best is not None  # it fitted at this cut a moment ago
        k = cuts[hi]
        res = _Reservation(d.job, ends[k - 1].end, best, d)
        _add_usage(res.need, self.placer, d, best)
        for a in ends[:k]:
            _add_usage(res.released, self.placer, a.demand, a.bundles)
        self.reservations.append(res)
        self._new_state()

    # --------------------------------------------------------------- 6. result

    def result(self) -> Plan:
        placed = {p.job for p in self.placements}
        reserved = {r.job: r for r in self.reservations}
        waiting = []
        cache: dict[object, list[str]] = {}
        for d in self.order:
            if d.job in placed:
                continue
            reasons: list[str] = []
            if d.job in self.blocked:
                reasons.append(self.blocked[d.job])
            else:
                # jobs alike in bundles and constraints wait for the same reasons
                key: object = self._shape_of.get(d.job)
                if key is None:
                    key = _shape_key(d)
                if key not in cache:
                    cache[key] = explain(self.placer, d)
                reasons += cache[key]
            reasons += self.notes.get(d.job, [])
            res = reserved.get(d.job)
            if res is not None:
                n = sum(1 for a in self.active.values() if a.end <= res.start)
                reasons.append(
                    f"reserved to start in {duration(res.start - self.now)}, when"
                    f" {n} running job{'s' if n != 1 else ''} will have ended"
                )
            waiting.append(Waiting(d.job, tuple(reasons)))
        return Plan(
            tuple(self.placements),
            tuple(self.preemptions),
            tuple(waiting),
            {r.job: r.start for r in self.reservations},
        )


def _shape_key(d: JobDemand) -> JobDemand:
    """Jobs that differ only in name, community, priority and time wait for the same reasons."""
    return JobDemand(
        job="",
        community="",
        priority=0,
        bundles=d.bundles,
        placement=d.placement,
        exclusive=d.exclusive,
        gpu_models=d.gpu_models,
        min_cc=d.min_cc,
    )


def _add_usage(
    rows: dict[str, list[int]],
    placer: Placer,
    d: JobDemand,
    bundles: Sequence[BundleAssignment],
) -> None:
    """Add what `bundles` of `d` hold to per-node rows [milli per GPU..., cpu, memory]."""
    for a, b in zip(bundles, d.bundles, strict=False):
        if a.node not in placer.by_name:
            continue
        n = placer.by_name[a.node]
        row = rows.setdefault(a.node, [0] * (len(n.free) + 2))
        for g in a.gpus:
            if 0 <= g < len(n.free):
                row[g] += a.gpu_milli
        row[-2] += b.cpu_milli
        row[-1] += b.memory_mib


def plan(
    snapshot: ClusterSnapshot,
    queue: Sequence[QueuedJob],
    running: Sequence[RunningJob] = (),
    now: float = 0.0,
) -> Plan:
    """Decide where queued jobs run now, whom to preempt, and why the rest wait."""
    rnd = _Round(snapshot, queue, running, now)
    rnd.order = rnd._walk(place=True)
    return rnd.result()


def queue_order(
    snapshot: ClusterSnapshot, queue: Sequence[QueuedJob], running: Sequence[RunningJob] = ()
) -> list[str]:
    """The order in which `plan` would consider the queued jobs, assuming none is placed."""
    return [d.job for d in _Round(snapshot, queue, running, 0.0).ordered()]
