"""The discrete-event simulator: a trace played against a cluster under one policy.

`simulate(snapshot, trace, policy)` advances time from event to event (arrivals, completions,
node down and up, plan ticks), never by fixed steps. Each round, in order:

  1. Take the next time at which anything happens and every event at that time (one batch):
     arrivals join the queue; completions end jobs; a node going down interrupts the jobs on
     it (work since their last checkpoint is lost, they return to the queue with what is left)
     and its capacity disappears until it comes back up.
  2. If jobs wait, call the policy exactly as the controller calls `plan()`: the up nodes, the
     queue, the running jobs, `now`. At most once per `plan_interval_s` of simulated time: a call
     due sooner is made by one plan tick at the last call + the interval (`PLAN_RULE`). The rule
     is the same for every policy.
  3. Apply the plan, the engine acting as referee: preempted jobs checkpoint (they keep all their
     progress) and return to the queue; placed jobs start if every bundle is on an up node and no
     GPU, CPU or memory is over-committed, else an AssertionError names the policy.
  4. Stop when no arrival is left, nothing runs and the queue is empty or stuck (its jobs placed
     nowhere on the whole cluster, every node up), or at `horizon_s`.

A running job progresses at 1 / `SimJob.duration_on(models of its GPUs)` of its work per second,
except while it checkpoints: after every `policy.checkpoint_interval_s(...)` seconds of work it
pauses `checkpoint_cost_s` (work stops, its GPUs stay held); the checkpoint counts when the pause
ends. No checkpoint is taken at the end of a job. The cost is paid in time, never in lost work.

Speed: running jobs live in dicts, nodes keep the set of jobs on them, completions sit in a heap
and are invalidated lazily (a version number per job) when a job stops early; no step costs
O(jobs) except building the policy's own inputs.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from scheduler.cluster import ClusterSnapshot, Node
from scheduler.policy.model import (
    GPU_MILLI,
    BundleAssignment,
    QueuedJob,
    RunningJob,
    cpu_milli,
    mib,
)
from scheduler.sim.churn import ChurnSpec, node_mtbf_s, outages
from scheduler.sim.model import SimJob, SimPolicy, Trace

PLAN_RULE = (
    "the policy is called after each batch of simultaneous events while jobs wait, at most once"
    " per {interval:g} s of simulated time (a call due sooner is made at the last call +"
    " {interval:g} s)"
)
PROGRESS_EVERY = 1_000  # events between two calls of the progress callback
_EPS = 1e-9

# Event kinds, in the order they are applied within one batch (a job that ends at the very moment
# its node goes down has finished).
_COMPLETE, _NODE_UP, _NODE_DOWN, _TICK = 0, 1, 2, 3


class PolicyError(AssertionError):
    """A policy broke the rules: it over-committed capacity or placed onto a node that is down."""


@runtime_checkable
class AttainedAware(Protocol):
    """A policy that reads each job's attained GPU-seconds (LAS); set before every call."""

    attained_gpu_seconds: Mapping[str, float]


@dataclass(frozen=True)
class JobRecord:
    """One job's fate in a run; times in simulated seconds."""

    id: str
    community: str
    arrival_s: float
    duration_s: float
    first_start_s: float | None
    finish_s: float | None
    preemptions: int
    interruptions: int

    @property
    def jct_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s


@dataclass(frozen=True)
class SimResult:
    """What one run measured; `scheduler.sim.metrics.summary` turns it into the reported figures."""

    policy: str
    jobs: tuple[JobRecord, ...]
    dropped: int
    start_s: float
    end_s: float
    gpu_seconds_held: float
    gpu_seconds_up: float
    lost_gpu_seconds: float
    plan_calls: int
    probe_calls: int  # whole-cluster calls that decide whether a waiting queue is stuck
    events: int
    wall_s: float
    plan_rule: str
    plan_interval_s: float
    checkpoint_cost_s: float
    churn: str | None
    seed: int


class _Job:
    """A job's mutable state during a run."""

    __slots__ = tuple(
        "sim queued left bundles held run_s need_s start interval resumed attained version"
        " first_start finish preemptions interruptions nodes".split()
    )

    def __init__(self, sim: SimJob) -> None:
        self.sim = sim
        self.queued = QueuedJob(sim.demand)
        self.left = 1.0  # fraction of the work not yet saved
        self.bundles: tuple[BundleAssignment, ...] = ()
        self.held = 0.0  # GPUs held while running (fractions count)
        self.run_s = 0.0  # duration of the whole job at this placement's speed
        self.need_s = 0.0  # work seconds left when this run started
        self.start = 0.0
        self.interval = math.inf
        self.resumed = False
        self.attained = 0.0  # GPU-seconds held before this run
        self.version = 0
        self.first_start: float | None = None
        self.finish: float | None = None
        self.preemptions = 0
        self.interruptions = 0
        self.nodes: tuple[str, ...] = ()


class _Node:
    """A node's free capacity, whether it is up, and the running jobs on it."""

    __slots__ = ("node", "free", "cpu", "mem", "up", "jobs", "models", "gpus")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.free = [GPU_MILLI] * len(node.gpus)
        self.cpu = cpu_milli(node.cpus)
        self.mem = mib(node.memory_gb)
        self.up = True
        self.jobs: set[str] = set()
        self.models = tuple(g.model for g in node.gpus)
        self.gpus = len(node.gpus)


ProgressFn = Callable[[int, float], None]


def simulate(
    snapshot: ClusterSnapshot,
    trace: Trace,
    policy: SimPolicy,
    *,
    churn: ChurnSpec | None = None,
    seed: int = 0,
    plan_interval_s: float = 60.0,
    checkpoint_cost_s: float = 60.0,
    outages_s: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    horizon_s: float | None = None,
    progress: ProgressFn | None = None,
) -> SimResult:
    """Play `trace` on `snapshot` under `policy`; see the module docstring for the rules.

    `churn` draws each node's outages from `seed`; `outages_s` gives them instead, as
    (down_at, up_at) per node name (scripted scenarios); not both. `progress(events, now)` is
    called every PROGRESS_EVERY events.
    """
    if churn is not None and outages_s is not None:
        raise ValueError("give churn or outages_s, not both")
    if plan_interval_s < 0 or checkpoint_cost_s < 0:
        raise ValueError("plan_interval_s and checkpoint_cost_s must be >= 0")
    engine = _Engine(snapshot, trace, policy, seed, plan_interval_s, checkpoint_cost_s, progress)
    engine.add_outages(churn, outages_s)
    return engine.run(horizon_s)


class _Engine:
    def __init__(
        self,
        snapshot: ClusterSnapshot,
        trace: Trace,
        policy: SimPolicy,
        seed: int,
        plan_interval_s: float,
        checkpoint_cost_s: float,
        progress: ProgressFn | None,
    ) -> None:
        self.base = snapshot
        self.trace = trace
        self.policy = policy
        self.seed = seed
        self.interval = plan_interval_s
        self.cost = checkpoint_cost_s
        self.progress = progress
        self.arrivals = sorted(trace.jobs, key=lambda j: j.arrival_s)  # stable: trace order
        self.next_arrival = 0
        self.start_s = self.arrivals[0].arrival_s if self.arrivals else 0.0
        self.nodes = {n.name: _Node(n) for n in snapshot.nodes}
        self.seen = {n.name: n for n in snapshot.nodes}  # the nodes as the policy sees them
        self.all_jobs: list[_Job] = []
        self.queue: dict[str, _Job] = {}
        self.running: dict[str, _Job] = {}
        self.speeds: dict[tuple[str, str], float] = {}
        self.heap: list[tuple[float, int, int, str, int]] = []
        self.seq = 0
        self.outages: dict[str, Iterator[tuple[float, float]]] = {}
        self.next_progress = PROGRESS_EVERY
        self.churn_text: str | None = None
        self.last_plan: float | None = None
        self.tick_pending = False
        self.plan_calls = self.probe_calls = self.events = 0
        self.gpu_seconds_held = self.lost_gpu_seconds = 0.0
        self.up_gpus = sum(n.gpus for n in self.nodes.values())
        self.gpu_seconds_up = 0.0
        self.up_since = 0.0
        self.up_nodes: tuple[Node, ...] | None = None
        self.snap: ClusterSnapshot | None = None
        self.speeds_changed = True
        self.probed: tuple[int, bool] | None = None  # (queue version, stuck) of the last probe
        self.queue_version = 0

    # --------------------------------------------------------------------------- events

    def _push(self, at: float, kind: int, name: str = "", version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, name, version))

    def add_outages(
        self,
        churn: ChurnSpec | None,
        scripted: Mapping[str, Sequence[tuple[float, float]]] | None,
    ) -> None:
        """Each node's first outage goes in the heap; the next is drawn when it comes back up."""
        if churn is not None:
            self.churn_text = churn.text or None
            mtbf = node_mtbf_s(self.base.nodes, churn, self.seed)
            for node in self.base.nodes:
                self.seen[node.name] = replace(
                    node,
                    mtbf_h=mtbf[node.name] / 3600.0,
                    availability=churn.availability(mtbf[node.name]),
                )
                drawn = outages(node.name, mtbf[node.name], churn, self.seed)
                # a node's timeline starts with the trace
                self.outages[node.name] = ((self.start_s + d, self.start_s + u) for d, u in drawn)
        elif scripted is not None:
            for name, periods in scripted.items():
                if name not in self.nodes:
                    raise ValueError(f"outages name node {name!r}, which the cluster lacks")
                ordered = sorted(periods)
                ends = [self.start_s, *(u for _, u in ordered)]
                if any(d < prev or u < d for (d, u), prev in zip(ordered, ends, strict=False)):
                    raise ValueError(
                        f"outages of {name}: periods (down_at, up_at) must not overlap, have"
                        f" up_at >= down_at and begin at or after the first arrival; got {ordered}"
                    )
                self.outages[name] = iter(ordered)
        for name in self.outages:
            self._next_outage(name)

    def _next_outage(self, name: str) -> None:
        period = next(self.outages[name], None)
        if period is not None:
            down, up = period
            self._push(down, _NODE_DOWN, name)
            self._push(up, _NODE_UP, name)

    # ---------------------------------------------------------------------------- the loop

    def run(self, horizon_s: float | None) -> SimResult:
        started = time.perf_counter()
        start_s = self.start_s
        now = self.up_since = start_s
        arrivals = self.arrivals
        while True:
            # 4. Stop when nothing is left to do.
            idle = self.next_arrival == len(arrivals) and not self.running and not self.tick_pending
            if idle and (not self.queue or self._stuck(now)):
                break
            # 1. The next batch of simultaneous events.
            t = self.heap[0][0] if self.heap else math.inf
            if self.next_arrival < len(arrivals):
                t = min(t, arrivals[self.next_arrival].arrival_s)
            if t == math.inf:
                break
            if horizon_s is not None and t > horizon_s:
                now = max(now, horizon_s)
                break
            now = t
            changed = False
            while self.next_arrival < len(arrivals) and arrivals[self.next_arrival].arrival_s == t:
                self._arrive(arrivals[self.next_arrival])
                self.next_arrival += 1
                changed = True
            while self.heap and self.heap[0][0] == t:
                _, kind, _, name, version = heapq.heappop(self.heap)
                changed |= self._apply(kind, name, version, t)
            if self.progress is not None and self.events >= self.next_progress:
                self.progress(self.events, now)
                self.next_progress = self.events + PROGRESS_EVERY
            # 2.-3. Plan, at most once per interval, and apply the plan.
            if changed:
                self._maybe_plan(t)
        return self._result(start_s, now, time.perf_counter() - started)

    def _apply(self, kind: int, name: str, version: int, t: float) -> bool:
        """Apply one event; False for a stale completion."""
        if kind == _COMPLETE:
            job = self.running.get(name)
            if job is None or job.version != version:
                return False
            self._stop(job, t, "complete")
        elif kind == _NODE_DOWN:
            self._node_down(name, t)
        elif kind == _NODE_UP:
            self._node_up(name, t)
            self._next_outage(name)
        else:
            self.tick_pending = False
        self.events += 1
        return True

    def _arrive(self, sim: SimJob) -> None:
        job = _Job(sim)
        self.all_jobs.append(job)
        self._enqueue(job)
        if sim.durations:
            for model, d in sim.durations.items():
                if d > 0:
                    self.speeds[(sim.id, model)] = sim.duration_s / d
            self.speeds_changed = True
        self.events += 1

    def _enqueue(self, job: _Job) -> None:
        self.queue[job.sim.id] = job
        self.queue_version += 1

    # ----------------------------------------------------------------------------- nodes

    def _capacity_changes(self, t: float, delta: int) -> None:
        self.gpu_seconds_up += self.up_gpus * max(0.0, t - self.up_since)
        self.up_since = max(self.up_since, t)
        self.up_gpus += delta
        self.up_nodes = None

    def _node_down(self, name: str, t: float) -> None:
        node = self.nodes[name]
        if not node.up:
            return
        for job_id in sorted(node.jobs):
            self._stop(self.running[job_id], t, "interrupt")
        node.up = False
        self._capacity_changes(t, -node.gpus)

    def _node_up(self, name: str, t: float) -> None:
        node = self.nodes[name]
        if node.up:
            return
        node.up = True
        self._capacity_changes(t, node.gpus)

    # --------------------------------------------------------------------------- planning

    def _maybe_plan(self, t: float) -> None:
        if not self.queue:
            return
        if self.last_plan is None or t - self.last_plan >= self.interval - _EPS:
            self._plan(t)
        elif not self.tick_pending:
            self._push(self.last_plan + self.interval, _TICK)
            self.tick_pending = True

    def _snapshot(self) -> ClusterSnapshot:
        if self.up_nodes is None:
            self.up_nodes = tuple(self.seen[n] for n, st in self.nodes.items() if st.up)
            self.snap = None
        if self.snap is None or self.speeds_changed:
            self.snap = ClusterSnapshot(
                nodes=self.up_nodes,
                community_weights=self.base.community_weights,
                speeds=dict(self.speeds),
            )
            self.speeds_changed = False
        return self.snap

    def _running_view(self, job: _Job, t: float) -> RunningJob:
        _, _, checkpointed = self._work(job, t)
        if checkpointed is None and job.resumed:
            checkpointed = job.start  # it resumed from a checkpoint
        return RunningJob(
            job.sim.demand,
            job.bundles,
            job.start,
            job.attained + (t - job.start) * job.held,
            checkpointed,
        )

    def _plan(self, t: float) -> None:
        self.last_plan = t
        self.plan_calls += 1
        snapshot = self._snapshot()
        queue = [j.queued for j in self.queue.values()]
        running = [self._running_view(j, t) for j in self.running.values()]
        if isinstance(self.policy, AttainedAware):
            attained = {j.sim.id: j.attained for j in self.queue.values()}
            attained.update((r.demand.job, r.attained_gpu_seconds) for r in running)
            self.policy.attained_gpu_seconds = attained
        result = self.policy.plan(snapshot, queue, running, t)
        name = self.policy.name
        for p in result.preemptions:
            job = self.running.get(p.job)
            if job is None:
                raise PolicyError(f"policy {name} preempted {p.job}, which is not running")
            self._stop(job, t, "preempt")
        for placement in result.placements:
            job = self.queue.get(placement.job)
            if job is None:
                raise PolicyError(f"policy {name} placed {placement.job}, which is not queued")
            self._start(job, placement.bundles, t, snapshot)

    def _stuck(self, now: float) -> bool:
        """Whether the waiting jobs can never start: the policy places none on the whole cluster.

        Without outages the last call already saw the whole cluster. With them, one probe call
        per state of the queue asks about the whole cluster, every node up.
        """
        if not self.outages:
            return True
        if self.probed is not None and self.probed[0] == self.queue_version:
            return self.probed[1]
        self.probe_calls += 1
        whole = ClusterSnapshot(
            nodes=tuple(self.seen[n] for n in self.nodes),
            community_weights=self.base.community_weights,
            speeds=dict(self.speeds),
        )
        got = self.policy.plan(whole, [j.queued for j in self.queue.values()], [], now)
        self.probed = (self.queue_version, not got.placements)
        return self.probed[1]

    # ---------------------------------------------------------------------- starts, stops

    def _hold(self, job: _Job, bundles: tuple[BundleAssignment, ...]) -> None:
        """Take the capacity of `bundles` for `job`: the referee checks every step of it."""
        d, name = job.sim.demand, self.policy.name
        if len(bundles) != len(d.bundles):
            raise PolicyError(
                f"policy {name} placed {d.job} on {len(bundles)} bundles, not {len(d.bundles)}"
            )
        for a, b in zip(bundles, d.bundles, strict=True):
            node = self.nodes.get(a.node)
            if node is None or not node.up:
                raise PolicyError(f"policy {name} placed {d.job} on {a.node}, which is not up")
            if (
                len(a.gpus) != b.gpus
                or len(set(a.gpus)) != b.gpus
                or not all(0 <= g < node.gpus for g in a.gpus)
            ):
                raise PolicyError(
                    f"policy {name} gave {d.job} GPUs {a.gpus} of {a.node} for a bundle of {b.gpus}"
                )
            least = b.gpu_milli or (GPU_MILLI if b.gpu_memory_mib is None or d.exclusive else 1)
            if a.gpus and not least <= a.gpu_milli <= GPU_MILLI:
                raise PolicyError(
                    f"policy {name} gave {d.job} {a.gpu_milli} thousandths of a GPU, not {least}"
                )
            for g in a.gpus:
                node.free[g] -= a.gpu_milli
            node.cpu -= b.cpu_milli
            node.mem -= b.memory_mib
            if node.cpu < 0 or node.mem < 0 or any(node.free[g] < 0 for g in a.gpus):
                raise PolicyError(
                    f"policy {name} over-commits {a.node} with {d.job}: left free would be"
                    f" GPUs {node.free} (thousandths), {node.cpu} CPU milli, {node.mem} MiB"
                )

    def _release(self, job: _Job) -> None:
        for a, b in zip(job.bundles, job.sim.demand.bundles, strict=True):
            node = self.nodes[a.node]
            for g in a.gpus:
                node.free[g] += a.gpu_milli
            node.cpu += b.cpu_milli
            node.mem += b.memory_mib
            node.jobs.discard(job.sim.id)

    def _start(
        self, job: _Job, bundles: tuple[BundleAssignment, ...], t: float, snap: ClusterSnapshot
    ) -> None:
        self._hold(job, bundles)
        del self.queue[job.sim.id]
        self.queue_version += 1
        models = list(dict.fromkeys(self.nodes[a.node].models[g] for a in bundles for g in a.gpus))
        interval = self.policy.checkpoint_interval_s(job.sim.demand, bundles, snap)
        if not interval >= 0 or (interval == 0 and self.cost > 0):
            raise PolicyError(
                f"policy {self.policy.name} checkpoints {job.sim.id} every {interval} s, each"
                f" costing {self.cost:g} s"
            )
        job.bundles = bundles
        job.nodes = tuple(dict.fromkeys(a.node for a in bundles))
        job.held = sum(len(a.gpus) * a.gpu_milli for a in bundles) / GPU_MILLI
        job.run_s = job.sim.duration_on(models)
        job.need_s = job.left * job.run_s
        job.start = t
        job.interval = interval
        job.resumed = job.left < 1.0
        job.version += 1
        if job.first_start is None:
            job.first_start = t
        for n in job.nodes:
            self.nodes[n].jobs.add(job.sim.id)
        self.running[job.sim.id] = job
        pauses = 0
        if 0 < interval < math.inf and job.need_s > 0:
            pauses = max(0, math.ceil(round(job.need_s / interval, 9)) - 1)
        self._push(t + job.need_s + pauses * self.cost, _COMPLETE, job.sim.id, job.version)

    def _work(self, job: _Job, t: float) -> tuple[float, float, float | None]:
        """At `t`: the work done in this run, the part its checkpoints saved, and when the last
        of them was taken (None: none yet in this run)."""
        elapsed = t - job.start
        if job.interval == math.inf:
            return min(elapsed, job.need_s), 0.0, None
        if job.interval == 0:  # free checkpoints, taken all the time
            done = min(elapsed, job.need_s)
            return done, done, t
        cycle = job.interval + self.cost
        k = int(elapsed // cycle)
        done = min(k * job.interval + min(elapsed - k * cycle, job.interval), job.need_s)
        if not k:
            return done, 0.0, None
        return done, min(k * job.interval, job.need_s), job.start + k * cycle

    def _stop(self, job: _Job, t: float, why: str) -> None:
        """End `job`'s run: 'complete', 'preempt' (keeps its work) or 'interrupt' (loses some)."""
        self._release(job)
        del self.running[job.sim.id]
        job.version += 1
        held_s = (t - job.start) * job.held
        self.gpu_seconds_held += held_s
        job.attained += held_s
        if why == "complete":
            job.left, job.finish = 0.0, t
            for model in job.sim.durations or ():
                self.speeds.pop((job.sim.id, model), None)
                self.speeds_changed = True
            return
        done, saved, last = self._work(job, t)
        if why == "preempt":
            job.preemptions += 1
            saved = done
        else:
            job.interruptions += 1
            self.lost_gpu_seconds += (t - (job.start if last is None else last)) * job.held
        if job.run_s > 0:
            job.left = max(0.0, job.left - saved / job.run_s)
        self._enqueue(job)

    # ---------------------------------------------------------------------------- result

    def _result(self, start_s: float, end_s: float, wall_s: float) -> SimResult:
        for job in self.running.values():  # still running at the horizon
            self.gpu_seconds_held += (end_s - job.start) * job.held
        self._capacity_changes(end_s, 0)
        records = tuple(
            JobRecord(
                id=j.sim.id,
                community=j.sim.demand.community,
                arrival_s=j.sim.arrival_s,
                duration_s=j.sim.duration_s,
                first_start_s=j.first_start,
                finish_s=j.finish,
                preemptions=j.preemptions,
                interruptions=j.interruptions,
            )
            for j in self.all_jobs
        )
        never = tuple(
            JobRecord(s.id, s.demand.community, s.arrival_s, s.duration_s, None, None, 0, 0)
            for s in self.arrivals[self.next_arrival :]
        )
        return SimResult(
            policy=self.policy.name,
            jobs=records + never,
            dropped=self.trace.dropped,
            start_s=start_s,
            end_s=end_s,
            gpu_seconds_held=self.gpu_seconds_held,
            gpu_seconds_up=self.gpu_seconds_up,
            lost_gpu_seconds=self.lost_gpu_seconds,
            plan_calls=self.plan_calls,
            probe_calls=self.probe_calls,
            events=self.events,
            wall_s=wall_s,
            plan_rule=PLAN_RULE.format(interval=self.interval),
            plan_interval_s=self.interval,
            checkpoint_cost_s=self.cost,
            churn=self.churn_text,
            seed=self.seed,
        )
