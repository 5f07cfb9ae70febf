"""The mesh controller: a detached named Ray actor that owns the store and runs the loop.

    1. read the queue and the store (SQLite, audit chain)
    2. snapshot the cluster: Ray nodes + labels + what is allocated
    3. plan = policy.plan(snapshot, queue, running, now)   (pure, no Ray)
    4. actuator: placement groups pinned to nodes, workload actors inside them, preemptions
    5. watch: completions, failures, node deaths -> events -> back to 1

The loop runs on events (a submission, a cancellation, a workload ending) and at least every
`loop_interval_s`. All Ray calls go through `scheduler.actuator`. State lives in the store, so a
restarted controller reloads it and reconciles with the placement groups it finds on Ray.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from cluster.labels import LabelError, node_from_labels
from scheduler import actuator, verify
from scheduler.cluster import ClusterSnapshot
from scheduler.controller_api import ControllerApi
from scheduler.documents import SpecError
from scheduler.jobio import finetune_provenance, queue_job, resolve_inputs
from scheduler.node_keeping import NodeKeeping
from scheduler.policy import (
    BundleAssignment,
    JobDemand,
    QueuedJob,
    RunningJob,
    demand_from_spec,
    plan,
)
from scheduler.policy.checkpoint import placement_mtbf_s
from scheduler.spec import JobSpec, parse_job
from scheduler.store import JobRow, Principal, State, Store
from scheduler.views import ApiError, job_view, node_views

LOAD_STALE_S = 5.0  # a Service's load not reported for this long counts as none
REPLICA_MARK = "#"  # `job#k`: the policy's name for the lost replica k of a Service
RUNNABLE_KINDS = frozenset({"Probe", "FineTune", "BatchInference", "Service"})
# A bundle of a multi-bundle job that fails may only be the echo of a peer whose node died
# (its collective call breaks first): the peers are asked whether they live, for at most this.
PEER_CHECK_S = 60.0
WATCH_SLICE_S = 0.05  # the loop looks for a wake-up (a submission) at least this often
LOCKED = frozenset({"cancel"})  # API methods that change what the loop works on


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loop_interval_s: float = 1.0  # the loop runs at least this often
    placement_timeout_s: float = 30.0  # a pinned group not ready by then is placed again
    log_interval_s: float = 1.0  # how often running workers are asked for new log lines
    # callers of a public Service who are not of its community: requests a minute, and burst
    serve_rate_per_minute: float = 600.0
    serve_burst: float = 60.0
    # a Service scales to ceil(requests in flight / replicas.target_ongoing_requests) replicas,
    # between replicas.min and max, once the load has asked for it this long
    serve_upscale_delay_s: float = 10.0
    serve_downscale_delay_s: float = 120.0
    # a fine-tune on a draining node that has not checkpointed by then is moved all the same
    drain_checkpoint_timeout_s: float = 120.0


@dataclass
class Suspect:
    """A bundle failed while the job's other bundles may have lost their node."""

    bundle: int
    result: actuator.Outcome
    deadline: float
    pings: dict[Any, int]  # ref -> the peer bundle asked


@dataclass
class Retiring:
    """A Service replica on a draining node whose replacement starts elsewhere: it serves on
    until the replacement does, then leaves the serving table, then stops."""

    worker: Any
    group: str
    app: str | None
    node: str
    unlisted_at: float | None = None


@dataclass
class Active:
    """A job that holds a placement group: PLACED (group not ready yet) or RUNNING."""

    job: str
    run: int
    attempt: int
    kind: str
    spec: dict[str, Any]
    demand: JobDemand
    bundles: tuple[BundleAssignment, ...]
    group: str
    pg: Any
    placed_at: float
    ready_ref: Any = None
    started_at: float | None = None
    workers: list[Any] = field(default_factory=list)
    waits: dict[Any, int] = field(default_factory=dict)  # ref -> bundle
    alive_refs: list[Any] = field(default_factory=list)  # workers answering: RUNNING
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    log_next: list[int] = field(default_factory=list)
    log_refs: dict[Any, int] = field(default_factory=dict)
    logs_polled_at: float = 0.0
    progress: dict[str, Any] | None = None
    suspect: Suspect | None = None  # a failed bundle, judged once its peers answer
    bundle_progress: dict[int, dict[str, Any]] = field(default_factory=dict)  # Service replicas
    generations: list[int] = field(default_factory=list)  # Service: placements of each replica
    missing: set[int] = field(default_factory=set)  # Service replicas lost, waiting for a node
    scaling: tuple[int, float] | None = None  # Service: (replicas the load asks for, since)
    stop_deadline: float | None = None  # asked to checkpoint and stop (a drain) until then
    stop_reason: str = ""
    moving: dict[int, float] = field(default_factory=dict)  # Service replica -> drain began
    retiring: dict[int, Retiring] = field(default_factory=dict)  # replaced, still serving

    @property
    def requests(self) -> list[actuator.BundleRequest]:
        return [
            actuator.BundleRequest(
                node=a.node,
                cpus=d.cpu_milli / 1000,
                gpus=len(a.gpus) * a.gpu_fraction if a.gpu_milli == 1000 else a.gpu_fraction,
            )
            for a, d in zip(self.bundles, self.demand.bundles, strict=True)
        ]

    def gpus_held(self) -> float:
        return sum(len(a.gpus) * a.gpu_fraction for a in self.live_bundles())

    def nodes(self) -> set[str]:
        held = {b.node for i, b in enumerate(self.bundles) if i not in self.missing}
        return held | {r.node for r in self.retiring.values()}

    def slot_group(self, bundle: int) -> str:
        """The group a Service replica's keeper and application are named after: the
        placement's, and `~g` once the replica was placed again for the g-th time."""
        g = self.generations[bundle] if bundle < len(self.generations) else 0
        return self.group if g == 0 else f"{self.group}~{g}"

    def live_demand(self) -> JobDemand:
        """The demand of the bundles held now (a Service's lost replicas hold nothing)."""
        if not self.missing:
            return self.demand
        kept = len(self.bundles) - len(self.missing)
        return dataclasses.replace(self.demand, bundles=self.demand.bundles[:kept])

    def forget_keeper(self, bundle: int) -> None:
        """Stop watching replica `bundle`'s keeper: its end, its log replies (one already on
        its way would pass for the next keeper's) and its progress."""
        self.waits = {r: i for r, i in self.waits.items() if i != bundle}
        self.log_refs = {r: i for r, i in self.log_refs.items() if i != bundle}
        self.bundle_progress.pop(bundle, None)

    def live_bundles(self) -> tuple[BundleAssignment, ...]:
        return tuple(b for i, b in enumerate(self.bundles) if i not in self.missing)


def _placement_json(bundles: tuple[BundleAssignment, ...]) -> list[dict[str, Any]]:
    return [b.to_json() for b in bundles]


def _bundles_from_json(placement: list[dict[str, Any]]) -> tuple[BundleAssignment, ...]:
    return tuple(
        BundleAssignment(
            node=b["node"],
            gpus=tuple(b["gpus"]),
            gpu_milli=round(b["gpu_fraction"] * 1000) if b["gpus"] else 1000,
        )
        for b in placement
    )


class MeshController(NodeKeeping, ControllerApi):
    """Run as `ray.remote(MeshController)` by `scheduler.deploy`; methods answer the API."""

    def __init__(self, home: str, settings: dict[str, Any] | None = None) -> None:
        self.settings = Settings(**(settings or {}))
        self.store = Store(Path(home) / "mesh.db")
        self.active: dict[str, Active] = {}
        self._specs: dict[tuple[str, int], tuple[JobSpec, JobDemand]] = {}
        self._init_nodes()
        self._waiting: dict[str, list[str]] = {}  # the reasons last written, per job
        self._load: dict[str, tuple[float, int]] = {}  # Service -> (when, requests in flight)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self.rounds = 0
        self.placed = 0
        with self._lock:
            self._observe_nodes(time.time())
            self._reconcile(time.time())
        self._thread = threading.Thread(target=self._loop, name="mesh-loop", daemon=True)
        self._thread.start()

    # --- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                with self._lock:
                    self._round(time.time())
            except Exception:
                traceback.print_exc(file=sys.stderr)
            self._sleep()

    def _sleep(self) -> None:
        """Until an event: a wake-up, a ref of ours becoming ready, or the loop interval."""
        deadline = time.monotonic() + self.settings.loop_interval_s
        while not self._wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._lock:
                refs = [r for a in self.active.values() for r in a.waits]
                refs += [a.ready_ref for a in self.active.values() if a.ready_ref is not None]
                refs += [r for a in self.active.values() for r in a.alive_refs]
                refs += [r for a in self.active.values() if a.suspect for r in a.suspect.pings]
            if refs:
                if actuator.ready(refs, timeout=min(left, WATCH_SLICE_S)):
                    break
            else:
                self._wake.wait(left)
        self._wake.clear()

    def _round(self, now: float) -> None:
        self.rounds += 1
        # 1-2. the store and the cluster as they are now
        lost = self._observe_nodes(now)
        for a in list(self.active.values()):
            gone = a.nodes() & lost or a.nodes() - set(self._nodes)
            if gone and a.kind == "Service" and a.started_at is not None:
                for i in [i for i, r in a.retiring.items() if r.node in gone]:
                    self._stop_retiring(a, i)
                for i, b in enumerate(a.bundles):
                    if b.node in gone and i not in a.missing:
                        self._replica_lost(a, i, f"node {b.node} was lost", now)
            elif gone:
                self._interrupt(a, f"node {', '.join(sorted(gone))} was lost", now)
        # 5. watch what is in flight
        self._progress(now)
        self._autoscale(now)
        self._drain_nodes(now)
        self._retire_moved(now)
        self._verify_nodes(now)
        # 3. plan (a node's verification is placed on it above, never by the policy)
        queued = [(job, run) for job, run in self.store.queued() if not verify.is_verify_job(job)]
        replacing = self._replacements()
        if not queued and not replacing:
            return
        snapshot = ClusterSnapshot(
            nodes=tuple(self._nodes.values()),
            community_weights=self.store.community_weights(),
        )
        queue = [QueuedJob(self._demand_of(job, run)) for job, run in queued]
        queue += [QueuedJob(d) for d in replacing.values()]
        self._forget_specs({*queued, *((a.job, a.run) for a in self.active.values())})
        running = [
            RunningJob(
                demand=a.live_demand(),
                bundles=a.live_bundles(),
                started_at=a.started_at or a.placed_at,
            )
            for a in self.active.values()
        ]
        result = plan(snapshot, queue, running, now)
        # 4. act on it
        for p in result.preemptions:
            if p.job in self.active:
                self._requeue(self.active[p.job], State.PREEMPTED, p.reason, now)
        for placement in result.placements:
            if placement.job in replacing:
                job, _, bundle = placement.job.rpartition(REPLICA_MARK)
                if job in self.active:
                    self._replace(self.active[job], int(bundle), placement.bundles[0], now)
                continue
            row = self.store.job(placement.job)
            if row is not None and row.state == State.QUEUED:
                self._place(row, placement.bundles, now)
        reasons = {w.job: list(w.reasons) for w in result.waiting if w.job not in replacing}
        changed = {j: r for j, r in reasons.items() if self._waiting.get(j) != r}
        if changed:
            self.store.set_waiting(changed)
        self._waiting = reasons

    # --- jobs in flight ---------------------------------------------------------------------

    def _demand_of(self, job_id: str, run: int) -> JobDemand:
        """A queued job's demand: parsed once per run of the job, then kept."""
        if (job_id, run) not in self._specs:
            row = self.store.job(job_id)
            assert row is not None, job_id
            return self._demand(row)
        return self._specs[(job_id, run)][1]

    def _forget_specs(self, keep: set[tuple[str, int]]) -> None:
        if len(self._specs) > 2 * len(keep) + 100:
            self._specs = {k: v for k, v in self._specs.items() if k in keep}

    def _demand(self, row: JobRow) -> JobDemand:
        key = (row.id, row.run)
        if key not in self._specs:
            spec = parse_job(row.spec, source=row.id)
            self._specs[key] = (spec, demand_from_spec(spec, row.submitted_at))
        return self._specs[key][1]

    def _place(self, row: JobRow, bundles: tuple[BundleAssignment, ...], now: float) -> None:
        attempt = row.attempt + 1
        group = actuator.group_name(row.id, row.run, attempt)
        a = Active(
            job=row.id,
            run=row.run,
            attempt=attempt,
            kind=row.kind,
            spec=row.spec,
            demand=self._demand(row),
            bundles=bundles,
            group=group,
            pg=None,
            placed_at=now,
        )
        where = ", ".join(
            f"{b.node}[{','.join(map(str, b.gpus)) or 'cpu'}]"
            + (f"x{b.gpu_fraction:g}" if b.gpus and b.gpu_milli < 1000 else "")
            for b in bundles
        )
        self.store.transition(
            row.id,
            State.PLACED,
            f"placed on {where}",
            now,
            placement=_placement_json(bundles),
            attempt=attempt,
            data={"group": group},
        )
        self.active[row.id] = a
        self.placed += 1
        if a.kind == "Service":  # each replica's Serve application holds its own bundle
            self._start(a)
            return
        a.pg, a.ready_ref = actuator.reserve(group, a.requests)

    def _start(self, a: Active) -> None:
        """The group is ready: start the workers; the job is RUNNING once they all answer."""
        a.ready_ref = None
        row = self.store.job(a.job)
        # a node's MTBF: its observed history, else its stated mtbf_h (`_observe_nodes`)
        mtbf_s = placement_mtbf_s(
            self._nodes[b.node].mtbf_h if b.node in self._nodes else None for b in a.bundles
        )
        if a.kind == "Service" and not a.generations:
            a.generations = [0] * len(a.bundles)
        inputs = row.inputs if row else {}
        contexts = [self._context(a, i, inputs, mtbf_s) for i in range(len(a.bundles))]
        a.workers = actuator.start_workers(
            a.pg, a.group, a.job, a.kind, a.spec, a.requests, contexts
        )
        self._watch(a)
        a.alive_refs = actuator.pings(a.workers)

    @staticmethod
    def _context(
        a: Active, bundle: int, inputs: dict[str, Any], mtbf_s: float | None
    ) -> dict[str, Any]:
        """What bundle `bundle`'s workload is told beyond the spec (`WorkContext` fields)."""
        request = a.requests[bundle]
        return {
            "run": a.run,
            "world": len(a.bundles),
            "group": a.slot_group(bundle),  # the placement's group but for a re-placed replica
            "cpus": request.cpus,
            "gpu_fraction": request.gpus,
            "mtbf_s": mtbf_s,
            "inputs": inputs,
        }

    def _running(self, a: Active, now: float) -> None:
        a.alive_refs = []
        a.started_at = now
        n = len(a.workers)
        self.store.transition(
            a.job, State.RUNNING, f"{n} worker{'s' if n != 1 else ''} running", now
        )

    def _watch(self, a: Active) -> None:
        a.waits = {ref: i for i, ref in enumerate(actuator.waits(a.workers))}
        if len(a.log_next) != len(a.workers):
            a.log_next = [0] * len(a.workers)

    def _progress(self, now: float) -> None:
        refs = [a.ready_ref for a in self.active.values() if a.ready_ref is not None]
        refs += [r for a in self.active.values() for r in a.waits]
        refs += [r for a in self.active.values() for r in a.alive_refs]
        refs += [r for a in self.active.values() for r in a.log_refs]
        refs += [r for a in self.active.values() if a.suspect for r in a.suspect.pings]
        done = set(actuator.ready(refs, timeout=0))
        for a in list(self.active.values()):
            self._collect_logs(a, done, now)
            if a.ready_ref is not None:
                if a.ready_ref in done:
                    self._start(a)
                elif now - a.placed_at > self.settings.placement_timeout_s:
                    self._requeue(
                        a,
                        State.QUEUED,
                        f"placement group not ready after {self.settings.placement_timeout_s:g} s;"
                        " placing again",
                        now,
                    )
                continue
            if a.suspect is not None:
                self._judge(a, done, now)
                continue
            if a.alive_refs and all(r in done for r in a.alive_refs):
                self._running(a, now)
            for ref in [r for r in a.waits if r in done]:
                bundle = a.waits.pop(ref)
                result = actuator.outcome(ref)
                if result.report is not None and result.report.get("stopped"):
                    step = result.report.get("step")
                    where = f"; checkpointed at step {step}" if step is not None else ""
                    self._requeue(a, State.PREEMPTED, a.stop_reason + where, now)
                    break
                if result.report is not None:
                    a.reports[bundle] = result.report
                    continue
                self._ended_badly(a, bundle, result, now)
                break
            else:
                if a.job in self.active and not a.waits and a.workers and not a.missing:
                    self._finish(a, now)

    def _collect_logs(self, a: Active, done: set[Any], now: float) -> None:
        self._store_logs(a, [(a.log_refs.pop(r), r) for r in list(a.log_refs) if r in done])
        if (
            a.workers
            and not a.log_refs
            and (now - a.logs_polled_at >= self.settings.log_interval_s or not a.waits)
        ):
            a.logs_polled_at = now
            live = [(i, w) for i, w in enumerate(a.workers) if w is not None]
            refs = actuator.log_refs([w for _, w in live], [a.log_next[i] for i, _ in live])
            a.log_refs = {ref: i for ref, (i, _) in zip(refs, live, strict=True)}

    def _drain_logs(self, a: Active) -> None:
        """Collect the last log lines of a job whose workers have ended (before release)."""
        live = [(i, w) for i, w in enumerate(a.workers) if w is not None]  # a lost replica: None
        refs = actuator.log_refs([w for _, w in live], [a.log_next[i] for i, _ in live])
        self._store_logs(a, [(i, ref) for (i, _), ref in zip(live, refs, strict=True)])

    def _store_logs(self, a: Active, replies: list[tuple[int, Any]]) -> None:
        """Store the new lines of the workers' `logs()` replies, and the latest progress (bundle
        0's when it has one)."""
        lines: list[tuple[float, str]] = []
        progress = None
        for bundle, ref in replies:
            got = actuator.fetch(ref) or {}
            new = got.get("lines") or []
            a.log_next[bundle] += len(new)
            lines += [(float(ts), str(line)) for ts, line in new]
            if got.get("progress"):
                a.bundle_progress[bundle] = got["progress"]
                if progress is None or bundle == 0:
                    progress = got["progress"]
        if lines:
            self.store.append_logs(a.job, sorted(lines), a.log_next)
        if a.kind == "Service" and a.bundle_progress:
            progress = self._service_progress(a)
        if progress and progress != a.progress:
            a.progress = progress
            self.store.set_progress(a.job, progress)

    # --- Service replicas -------------------------------------------------------------------

    def _autoscale(self, now: float) -> None:
        """Each running Service towards the replicas its load asks for (see Settings)."""
        for a in list(self.active.values()):
            if a.kind != "Service" or a.started_at is None or a.suspect is not None:
                continue
            replicas = a.spec.get("service", {}).get("replicas", {})
            low = int(replicas.get("min", 1))
            high = int(replicas.get("max", low))
            if high == low:
                continue
            seen, in_flight = self._load.get(a.job, (0.0, 0))
            if now - seen > LOAD_STALE_S:
                in_flight = 0
            target = max(1, int(replicas.get("target_ongoing_requests", 8)))
            want = min(high, max(low, math.ceil(in_flight / target)))
            have = len(a.bundles)
            if want == have:
                a.scaling = None
                continue
            if a.scaling is None or a.scaling[0] != want:
                a.scaling = (want, now)
                continue
            delay = (
                self.settings.serve_upscale_delay_s
                if want > have
                else self.settings.serve_downscale_delay_s
            )
            if now - a.scaling[1] < delay:
                continue
            a.scaling = None
            why = f"{in_flight} requests in flight, {target} per replica"
            if want > have:
                self._scale_up(a, want - have, why, now)
            else:
                self._scale_down(a, have - want, why, now)

    def _scale_up(self, a: Active, count: int, why: str, now: float) -> None:
        """Ask the scheduler for `count` more replicas: placed as lost ones are."""
        first = len(a.bundles)
        a.bundles += (a.bundles[0],) * count  # placeholders until the plan places them
        a.demand = dataclasses.replace(a.demand, bundles=(a.demand.bundles[0],) * len(a.bundles))
        a.generations += [0] * count
        a.workers += [None] * count
        a.log_next += [0] * count
        a.missing.update(range(first, first + count))
        self.store.append_logs(a.job, [(now, f"scaling up to {len(a.bundles)} replicas ({why})")])
        self._store_service_progress(a)
        self._wake.set()

    def _scale_down(self, a: Active, count: int, why: str, now: float) -> None:
        """Stop the last `count` replicas (those still waiting for a node first)."""
        keep = len(a.bundles) - count
        for i in range(keep, len(a.bundles)):
            a.moving.pop(i, None)
            if i in a.retiring:
                self._stop_retiring(a, i)
            if i not in a.missing:
                if a.workers[i] is not None:
                    actuator.release(None, [a.workers[i]])
                actuator.delete_replica(a.slot_group(i), i)
            a.missing.discard(i)
            a.bundle_progress.pop(i, None)
        a.waits = {r: i for r, i in a.waits.items() if i < keep}
        a.bundles = a.bundles[:keep]
        a.demand = dataclasses.replace(a.demand, bundles=a.demand.bundles[:keep])
        del a.generations[keep:], a.workers[keep:], a.log_next[keep:]
        self.store.append_logs(a.job, [(now, f"scaling down to {keep} replicas ({why})")])
        self._store_service_progress(a)

    def _replacements(self) -> dict[str, JobDemand]:
        """A one-bundle demand per lost Service replica, as `job#bundle`, to place again."""
        found = {}
        for a in self.active.values():
            for i in sorted(a.missing | set(a.moving)):
                found[f"{a.job}{REPLICA_MARK}{i}"] = dataclasses.replace(
                    a.demand, job=f"{a.job}{REPLICA_MARK}{i}", bundles=a.demand.bundles[:1]
                )
        return found

    def _replica_lost(self, a: Active, bundle: int, reason: str, now: float) -> None:
        """One replica of a running Service is gone: the others serve on; it is placed again."""
        if a.workers and a.workers[bundle] is not None:
            actuator.release(None, [a.workers[bundle]])
            a.workers[bundle] = None
        actuator.delete_replica(a.slot_group(bundle), bundle)
        a.forget_keeper(bundle)
        a.missing.add(bundle)
        self.store.append_logs(a.job, [(now, f"replica {bundle}: {reason}; placing it again")])
        self._store_service_progress(a)
        self._wake.set()

    def _replace(self, a: Active, bundle: int, where: BundleAssignment, now: float) -> None:
        """Start a lost replica again where the plan put it; or the replacement of a replica
        that moves off a draining node, which serves on until the replacement does."""
        if a.moving.pop(bundle, None) is not None and a.workers[bundle] is not None:
            a.retiring[bundle] = Retiring(
                worker=a.workers[bundle],
                group=a.slot_group(bundle),
                app=a.bundle_progress.get(bundle, {}).get("app"),
                node=a.bundles[bundle].node,
            )
            a.forget_keeper(bundle)
        a.missing.discard(bundle)
        a.generations[bundle] += 1
        a.bundles = a.bundles[:bundle] + (where,) + a.bundles[bundle + 1 :]
        row = self.store.job(a.job)
        context = self._context(a, bundle, row.inputs if row else {}, None)
        [worker] = actuator.start_workers(
            None,
            a.slot_group(bundle),
            a.job,
            a.kind,
            a.spec,
            [a.requests[bundle]],
            [context],
            first=bundle,
        )
        a.workers[bundle] = worker
        a.log_next[bundle] = 0
        [ref] = actuator.waits([worker])
        a.waits[ref] = bundle
        self.store.append_logs(a.job, [(now, f"replica {bundle}: placed again on {where.node}")])
        self._store_service_progress(a)

    def _store_service_progress(self, a: Active) -> None:
        a.progress = self._service_progress(a)
        self.store.set_progress(a.job, a.progress)

    @staticmethod
    def _service_progress(a: Active) -> dict[str, Any]:
        """A Service's progress: each replica's node and state, and how many serve."""
        replicas = [
            {
                "replica": i,
                "node": b.node,
                "state": "lost"
                if i in a.missing
                else a.bundle_progress.get(i, {}).get("state", "placed"),
                "app": a.bundle_progress.get(i, {}).get("app"),
            }
            for i, b in enumerate(a.bundles)
        ]
        serving = sum(r["state"] == "serving" for r in replicas)
        return {"serving": serving, "replicas": replicas}

    def _finish(self, a: Active, now: float) -> None:
        if a.alive_refs:  # ended before its start was seen: it ran all the same
            self._running(a, now)
        self._drain_logs(a)
        reports = [a.reports[i] for i in sorted(a.reports)]
        report: dict[str, Any] = {"bundles": reports}
        self._release(a)
        used = self._used(a, now)
        row = self.store.job(a.job)
        assert row is not None
        outputs: dict[str, Any] = {}
        for r in reports:
            outputs.update(r.get("outputs") or {})
        if outputs:
            report["outputs"] = outputs
            digests = [d for o in outputs.values() for d in [o["sha256"], *o.get("files", [])]]
            self.store.grant(digests, row.community, now)
        reason = "every bundle finished"
        if a.kind == "FineTune" and "adapter" in outputs:
            name = a.spec["finetune"].get("output", {}).get("name") or a.job
            model = self.store.register_model(
                name=name,
                kind="adapter",
                sha256=outputs["adapter"]["sha256"],
                files=outputs["adapter"].get("files", []),
                base=(row.inputs.get("base_model") or {}).get("name"),
                provenance=finetune_provenance(
                    row, reports, row.gpu_seconds + used, self._trained_on(a.job)
                ),
                now=now,
                actor="controller",
                job=a.job,
                run=row.run,
            )
            report["model"] = {"name": model["name"], "version": model["version"]}
            reason = f"adapter registered as {model['name']} version {model['version']}"
        self.store.transition(a.job, State.SUCCEEDED, reason, now, report=report, gpu_seconds=used)

    def _trained_on(self, job_id: str) -> list[dict[str, Any]]:
        """The nodes (and their GPU models) that ran any attempt of a job's current run."""
        names = self.store.allocation_nodes(job_id)
        labels = {n["name"]: n["labels"] for n in self.store.nodes(time.time())}
        return [
            {
                "node": n,
                "gpu_model": labels.get(n, {}).get("mesh/gpu-model"),
                "owner": labels.get(n, {}).get("mesh/owner"),
                "simulated": labels.get(n, {}).get("mesh/simulated") == "true",
            }
            for n in names
        ]

    def _ended_badly(self, a: Active, bundle: int, result: actuator.Outcome, now: float) -> None:
        node = a.bundles[bundle].node
        if a.kind == "Service" and result.lost and a.started_at is not None:
            why = f"node {node} was lost" if node not in self._nodes else "its keeper died"
            self._replica_lost(a, bundle, why, now)
            return
        if result.lost and node not in self._nodes:
            self._interrupt(a, f"node {node} was lost", now)
            return
        peers = [i for i, w in enumerate(a.workers) if i != bundle and w is not None]
        if peers:  # judged in _judge once the peers answer (or do not)
            refs = actuator.pings([a.workers[i] for i in peers])
            a.suspect = Suspect(
                bundle, result, now + PEER_CHECK_S, dict(zip(refs, peers, strict=True))
            )
            return
        self._failed(a, bundle, result, now)

    def _judge(self, a: Active, done: set[Any], now: float) -> None:
        """A bundle failed: the job's own failure if every peer lives, else an interruption."""
        s = a.suspect
        assert s is not None
        for ref in [r for r in s.pings if r in done]:
            peer = s.pings.pop(ref)
            if not actuator.answered(ref):
                node = a.bundles[peer].node
                if node not in self._nodes:
                    self._interrupt(a, f"node {node} was lost", now)
                else:
                    self._failed(a, peer, actuator.Outcome(error="its worker died"), now)
                return
        if not s.pings:
            self._failed(a, s.bundle, s.result, now)
        elif now > s.deadline:
            late = ", ".join(a.bundles[i].node for i in sorted(s.pings.values()))
            self._interrupt(
                a,
                f"bundle {s.bundle} failed and the workers on {late} did not answer in "
                f"{PEER_CHECK_S:g} s",
                now,
            )

    def _failed(self, a: Active, bundle: int, result: actuator.Outcome, now: float) -> None:
        """A failure of the job itself: it uses up a retry, or the job FAILED."""
        node = a.bundles[bundle].node
        self._drain_logs(a)
        row = self.store.job(a.job)
        assert row is not None
        self._release(a)
        message = f"bundle {bundle} on {node} failed: {result.error}"
        used = self._used(a, now)
        if row.retries_used < row.max_retries:
            reason = f"{message}; retry {row.retries_used + 1} of {row.max_retries}"
            self.store.transition(a.job, State.QUEUED, reason, now, retry=True, gpu_seconds=used)
        else:
            self.store.transition(a.job, State.FAILED, message, now, gpu_seconds=used)

    def _interrupt(self, a: Active, reason: str, now: float) -> None:
        self._requeue(a, State.INTERRUPTED, reason, now)

    def _requeue(self, a: Active, via: State, reason: str, now: float) -> None:
        """Stop a job that did nothing wrong (preempted, node lost, placement timed out)."""
        self._release(a)
        used = self._used(a, now)
        if via != State.QUEUED:
            self.store.transition(a.job, via, reason, now, gpu_seconds=used)
            reason, used = f"back in the queue ({via.value.lower()}: {reason})", 0.0
        self.store.transition(a.job, State.QUEUED, reason, now, gpu_seconds=used)

    def _release(self, a: Active) -> None:
        actuator.release(a.pg, a.workers)
        if a.kind == "Service":
            for i in range(len(a.bundles)):
                actuator.delete_replica(a.slot_group(i), i)
            for i in list(a.retiring):
                self._stop_retiring(a, i)
        self.active.pop(a.job, None)

    @staticmethod
    def _used(a: Active, now: float) -> float:
        """GPU-seconds a placement held: its GPUs are the job's from PLACED on."""
        return (now - a.placed_at) * a.gpus_held()

    # --- restart ----------------------------------------------------------------------------

    def _reconcile(self, now: float) -> None:
        """Adopt the placement groups and workers of PLACED and RUNNING jobs; free orphans."""
        found = actuator.groups()
        for row in self.store.jobs(states=[State.PLACED, State.RUNNING]):
            group = actuator.group_name(row.id, row.run, row.attempt)
            info = found.pop(group, None)
            bundles = _bundles_from_json(row.placement or [])
            a = Active(
                job=row.id,
                run=row.run,
                attempt=row.attempt,
                kind=row.kind,
                spec=row.spec,
                demand=self._demand(row),
                bundles=bundles,
                group=group,
                pg=actuator.group_handle(info["id"]) if info and row.kind != "Service" else None,
                placed_at=row.updated_at,
                started_at=row.started_at,
            )
            workers = actuator.find_workers(group, len(bundles))
            if row.kind == "Service":  # no group of ours: its replicas' keepers must all live
                info = {"id": None} if None not in workers else None
            if info is None or (row.state == State.RUNNING and None in workers):
                a.workers = workers
                gone = sorted(a.nodes() - set(self._nodes))
                why = "its placement group" if info is None else "a workload actor"
                if gone:
                    self._interrupt(a, f"node {', '.join(gone)} was lost", now)
                else:
                    self._requeue(
                        a, State.INTERRUPTED, f"{why} was gone after the controller restarted", now
                    )
                continue
            self.active[row.id] = a
            if all(w is not None for w in workers):
                a.workers = workers
                self._watch(a)
                a.log_next = self.store.log_cursors(row.id, len(workers))
                if row.state == State.PLACED:
                    a.started_at = now
                    self.store.transition(row.id, State.RUNNING, "workers found on restart", now)
            else:
                actuator.release(None, workers)  # a partial start: begin again in the group
                a.ready_ref = a.pg.ready()
        for name, info in found.items():
            actuator.release_named(name, info["bundles"])
        actuator.delete_orphan_replicas(
            {
                (a.slot_group(i), i)
                for a in self.active.values()
                if a.kind == "Service"
                for i in range(len(a.bundles))
            }
        )

    # --- what the API asks that needs the loop (the rest: ControllerApi) ------------------

    def api_submit(
        self, p: Principal, document: Any, files: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        now = time.time()
        try:
            spec = parse_job(document, source="job")
        except SpecError as e:
            raise ApiError(
                400,
                "invalid_spec",
                str(e),
                "meshctl validate FILE checks a job file; meshctl schema prints every field",
            ) from None
        if not p.may_see(spec.community):
            raise ApiError(
                403,
                "forbidden",
                f"this token belongs to community {p.community}, not {spec.community}",
                "submit jobs of your own community, or use a token of that community",
            )
        if spec.kind.value not in RUNNABLE_KINDS:
            raise ApiError(
                422,
                "unsupported_kind",
                f"kind {spec.kind.value} cannot run on this mesh yet",
                f"kinds that run here: {', '.join(sorted(RUNNABLE_KINDS))}",
            )
        self._check_fits(spec)
        inputs = resolve_inputs(self.store, p, spec, files or {}, actuator.artifacts_missing)
        row = queue_job(self.store, spec, now, p.name, inputs)
        self._wake.set()
        return 201, job_view(row, self.store)

    def _check_fits(self, spec: JobSpec) -> None:
        """Reject a job that cannot run even on an idle cluster of every node ever seen
        (whether it is verified, suspect or draining now: that may change)."""
        known = {name: dataclasses.replace(n, schedulable=True) for name, n in self._nodes.items()}
        for n in self.store.nodes(time.time()):
            if n["name"] not in known:
                try:
                    known[n["name"]] = node_from_labels(
                        n["labels"], n["cpus"], n["memory_gb"], n["gpus"]
                    )
                except LabelError:
                    continue
        idle = plan(ClusterSnapshot(nodes=tuple(known.values())), [QueuedJob.from_spec(spec)])
        if idle.waiting:
            raise ApiError(
                422,
                "unschedulable",
                f"{spec.job_id} can never run on this mesh: " + "; ".join(idle.waiting[0].reasons),
                "meshctl nodes shows what the mesh has",
            )

    def api_cancel(self, p: Principal, job_id: str) -> tuple[int, Any]:
        row = self._own(p, job_id)
        now = time.time()
        if row.state.terminal:
            raise ApiError(409, "already_finished", f"job {job_id} already ended: {row.state}")
        a = self.active.get(job_id)
        if a is not None:
            self._drain_logs(a)
            self._release(a)
        self.store.transition(
            job_id,
            State.CANCELLED,
            f"cancelled by {p.name}",
            now,
            actor=p.name,
            gpu_seconds=self._used(a, now) if a else 0.0,
        )
        self._wake.set()
        return 200, job_view(self.store.job(job_id), self.store)  # type: ignore[arg-type]

    def api_nodes(self, p: Principal) -> tuple[int, Any]:
        views = node_views(self.store, list(self.active.values()), time.time())
        for v in views:
            st = self._node_states.get(v["name"])
            v["state"], v["why"] = (st.state, st.why) if st else ("DOWN", "not connected")
        return 200, {"nodes": views}

    # --- for the /v1 front (workloads/serving_front.py) -----------------------------------

    def serving_table(self, load: dict[str, int] | None = None) -> dict[str, Any]:
        """The Services and their replicas that serve now, and the limits of public callers.

        `load`: the requests in flight per Service at the front, which asks every second or so
        while requests come (the autoscaler's input; none heard of for LOAD_STALE_S is none).
        """
        now = time.time()
        for model, in_flight in (load or {}).items():
            self._load[model] = (now, int(in_flight))
        services = []
        for a in list(self.active.values()):
            if a.kind != "Service" or a.started_at is None:
                continue
            section = a.spec.get("service", {})
            replicas = [
                {"app": p["app"], "node": p.get("node", a.bundles[i].node), "bundle": i}
                for i, p in sorted(a.bundle_progress.items())
                if p.get("state") == "serving" and a.workers[i] is not None
            ]
            replicas += [
                {"app": r.app, "node": r.node, "bundle": i}
                for i, r in sorted(a.retiring.items())
                if r.app and r.unlisted_at is None
            ]
            services.append(
                {
                    "model": a.job,
                    "community": a.job.split("/", 1)[0],
                    "access": section.get("access", "community"),
                    "adapters": [n.rsplit("/", 1)[-1] for n in section.get("adapters", [])],
                    "replicas": replicas,
                    "created": a.started_at,
                }
            )
        return {
            "services": services,
            "limits": {
                "rate_per_minute": self.settings.serve_rate_per_minute,
                "burst": self.settings.serve_burst,
            },
        }

    # --- for deploy, tests and benchmarks ---------------------------------------------------

    def ensure_admin(self, token: str) -> str:
        return self.store.add_token(
            token, community=None, role="admin", now=time.time(), actor="meshctl-up"
        )

    def stats(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "placed": self.placed,
            "active": len(self.active),
            "cpu_s": time.process_time(),
        }
