"""Safety properties of `plan()` over generated clusters, queues and running jobs.

Each test states something bad that never happens (DESIGN.md "Testing"): no GPU, CPU or host
memory is over-committed; gangs are all or nothing; every constraint holds; the same input gives
the same plan; every queued job is accounted for; preemption happens only for a high-priority job
that then runs. Inputs come from small factories. Running jobs are the placements of an earlier
round on the same cluster, so they are consistent with it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.cluster import ClusterSnapshot, Gpu, Node
from scheduler.gpus import resolve
from scheduler.policy import (
    BundleAssignment,
    BundleDemand,
    JobDemand,
    Plan,
    QueuedJob,
    RunningJob,
    plan,
)
from scheduler.policy.packing import Placer

MODELS = ("T4", "RTX-3090", "RTX-4090", "A100-80GB")
COMMUNITIES = ("lab", "swahili-nlp", "coop")
WHOLE = 1000  # a whole GPU, in thousandths

T = TypeVar("T")
ANY_PRIORITY = st.integers(0, 2)
EITHER = st.booleans()

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
)


# --- factories --------------------------------------------------------------------------------


def make_node(
    name: str,
    cpus: float = 16,
    memory_gb: float = 64,
    gpus: Sequence[tuple[str, int]] = (),
    schedulable: bool = True,
) -> Node:
    """A node with `gpus` as (catalogue model, count) groups, memory and CC from the catalogue."""
    devices: list[Gpu] = []
    for model_name, count in gpus:
        model = resolve(model_name)
        for _ in range(count):
            devices.append(Gpu(len(devices), model.name, model.memory_gb, model.compute_capability))
    return Node(name, cpus, memory_gb, tuple(devices), schedulable=schedulable)


def make_job(
    name: str,
    *,
    bundles: int = 1,
    gpus: int = 1,
    cpu_milli: int = 1000,
    memory_mib: int = 1024,
    gpu_memory_mib: int | None = None,
    gpu_milli: int | None = None,
    community: str = "lab",
    priority: int = 1,
    placement: str = "pack",
    exclusive: bool = False,
    preemptible: bool = False,
    gpu_models: Iterable[str] | None = None,
    min_cc: tuple[int, int] | None = None,
    runtime_s: float | None = None,
    submitted_at: float = 0.0,
) -> JobDemand:
    """A job `community/name` of `bundles` identical bundles."""
    bundle = BundleDemand(gpus, cpu_milli, memory_mib, gpu_memory_mib, gpu_milli)
    return JobDemand(
        job=f"{community}/{name}",
        community=community,
        priority=priority,
        bundles=(bundle,) * bundles,
        placement=placement,
        exclusive=exclusive,
        preemptible=preemptible,
        gpu_models=frozenset(gpu_models) if gpu_models is not None else None,
        min_cc=min_cc,
        runtime_s=runtime_s,
        submitted_at=submitted_at,
    )


@dataclass(frozen=True)
class Scenario:
    """One scheduling round: a cluster, what runs on it, what waits, and the time."""

    snapshot: ClusterSnapshot
    queue: tuple[QueuedJob, ...]
    running: tuple[RunningJob, ...]
    now: float

    def plan(self) -> Plan:
        return plan(self.snapshot, self.queue, self.running, self.now)

    def demands(self) -> dict[str, JobDemand]:
        return {
            **{r.demand.job: r.demand for r in self.running},
            **{q.demand.job: q.demand for q in self.queue},
        }


# --- strategies -------------------------------------------------------------------------------


def sometimes(draw: st.DrawFn, strategy: st.SearchStrategy[T], default: T, odds: int = 3) -> T:
    """`default` most of the time (one draw in `odds` comes from `strategy`, and examples
    shrink towards `default`), so that constraints narrow some jobs without making most of
    them impossible."""
    return draw(strategy) if draw(st.integers(1, odds)) == odds else default


@st.composite
def nodes(draw: st.DrawFn, index: int) -> Node:
    count = draw(st.integers(0, 8))
    first = draw(st.sampled_from(MODELS))
    groups = [(first, count)] if count else []
    if count >= 2 and draw(st.integers(0, 2)) == 0:  # a third of the GPU nodes mix two models
        second = draw(st.sampled_from(MODELS))
        split = draw(st.integers(1, count - 1))
        groups = [(first, split), (second, count - split)]
    return make_node(
        f"node-{index}",
        cpus=draw(st.sampled_from([16, 32, 8, 64, 4, 6.5])),
        memory_gb=draw(st.sampled_from([64, 128, 32, 256, 16])),
        gpus=groups,
        schedulable=draw(st.integers(0, 7)) != 0,
    )


@st.composite
def clusters(draw: st.DrawFn, max_nodes: int = 6) -> tuple[Node, ...]:
    count = draw(st.integers(1, max_nodes))
    return tuple(draw(nodes(i)) for i in range(count))


@st.composite
def demands(
    draw: st.DrawFn,
    index: int,
    priorities: st.SearchStrategy[int] = ANY_PRIORITY,
    preemptible: st.SearchStrategy[bool] = EITHER,
) -> JobDemand:
    gpus = draw(st.sampled_from([1, 2, 1, 0, 4, 3]))
    return make_job(
        f"job-{index}",
        bundles=draw(st.sampled_from([1, 2, 1, 3, 4, 6] if gpus <= 2 else [1, 2])),
        gpus=gpus,
        cpu_milli=draw(st.sampled_from([1000, 500, 2000, 4000, 1000, 8000])),
        memory_mib=draw(st.sampled_from([1024, 4096, 512, 16384, 1024, 32768])),
        gpu_memory_mib=sometimes(
            draw, st.sampled_from([8192, 12288, 16384, 20480, 24576, 40960, 81920, 100_000]), None
        )
        if gpus
        else None,
        gpu_milli=sometimes(draw, st.sampled_from([250, 500, 1000, 333, 1]), None, odds=4)
        if gpus
        else None,
        community=draw(st.sampled_from(COMMUNITIES)),
        priority=draw(priorities),
        placement=draw(st.sampled_from(["pack", "spread", "strict_pack"])),
        exclusive=sometimes(draw, st.just(True), False, odds=3),
        preemptible=draw(preemptible),
        gpu_models=sometimes(
            draw,
            st.frozensets(st.sampled_from((*MODELS, "H100")), min_size=1, max_size=3),
            None,
            odds=4,
        ),
        min_cc=sometimes(draw, st.sampled_from([(7, 5), (8, 0), (8, 6), (8, 9), (9, 0)]), None, 4),
        runtime_s=draw(st.sampled_from([None, 600.0, 60.0, 3600.0, 86_400.0])),
        submitted_at=float(draw(st.integers(0, 100))),
    )


@st.composite
def job_lists(
    draw: st.DrawFn,
    start: int,
    max_size: int,
    priorities: st.SearchStrategy[int] = ANY_PRIORITY,
    preemptible: st.SearchStrategy[bool] = EITHER,
    repeats: int = 1,
    min_size: int = 0,
) -> list[JobDemand]:
    """Up to `max_size` jobs named job-{start}, job-{start + 1}, ...; with `repeats`, each
    drawn job comes up to that many times (same shape, other names), which fills clusters."""
    out: list[JobDemand] = []
    for _ in range(draw(st.integers(min_size, max_size))):
        d = draw(demands(start + len(out), priorities, preemptible))
        for _ in range(draw(st.integers(1, repeats))):
            out.append(replace(d, job=f"{d.community}/job-{start + len(out)}"))
    return out


@st.composite
def scenarios(draw: st.DrawFn, contended: bool | None = None) -> Scenario:
    """A first queue planned on the idle cluster becomes the running jobs; then a second round:
    the jobs of the first queue still waiting and new ones, on the cluster with some nodes
    possibly drained since. In half the scenarios the first jobs are low-priority and mostly
    preemptible and the new ones mostly high-priority, so that preemption has work to do
    (`contended` chooses that half or the other)."""
    cluster = draw(clusters())
    if contended is None:
        contended = draw(st.booleans())
    if contended:
        first = draw(job_lists(0, 4, st.just(0), st.integers(0, 3).map(lambda i: i < 3), 3, 1))
    else:
        first = draw(job_lists(0, 6))
    earlier = plan(ClusterSnapshot(cluster), [QueuedJob(d) for d in first])
    by_name = {d.job: d for d in first}
    now = float(draw(st.integers(0, 20_000)))
    running = []
    for p in earlier.placements:
        started = draw(st.integers(0, int(now)))
        checkpoint = draw(st.none() | st.integers(started, int(now)))
        running.append(
            RunningJob(
                by_name[p.job],
                p.bundles,
                started_at=float(started),
                attained_gpu_seconds=float(draw(st.integers(0, 100_000))),
                checkpointed_at=None if checkpoint is None else float(checkpoint),
            )
        )
    drained = draw(st.sets(st.sampled_from([n.name for n in cluster]), max_size=2))
    cluster = tuple(replace(n, schedulable=False) if n.name in drained else n for n in cluster)
    placed = {p.job for p in earlier.placements}
    if contended:
        # high-priority jobs shaped like running ones (they fit once those stop), and others
        copies = draw(st.lists(st.sampled_from(running), max_size=3)) if running else []
        second = [
            replace(
                r.demand,
                job=f"{r.demand.community}/job-{len(first) + i}",
                priority=2,
                preemptible=False,
            )
            for i, r in enumerate(copies)
        ]
        second += draw(job_lists(len(first) + len(second), 3, st.sampled_from([2, 2, 1, 0])))
    else:
        second = draw(job_lists(len(first), 6))
    queue = [QueuedJob(d) for d in first if d.job not in placed]
    queue += [QueuedJob(d) for d in second]
    weights = draw(st.dictionaries(st.sampled_from(COMMUNITIES), st.sampled_from([1.0, 2.0, 0.5])))
    return Scenario(ClusterSnapshot(cluster, weights), tuple(queue), tuple(running), now)


# --- an independent reading of the plan -------------------------------------------------------


def gpu_mib(gpu: Gpu) -> int:
    return round(gpu.memory_gb * 1024)


def eligible(d: JobDemand, b: BundleDemand, gpu: Gpu) -> bool:
    """Whether a bundle of `d` may use `gpu` at all: model, compute capability, GPU memory."""
    return (
        (d.gpu_models is None or gpu.model in d.gpu_models)
        and (d.min_cc is None or gpu.compute_capability >= d.min_cc)
        and (b.gpu_memory_mib is None or gpu_mib(gpu) >= b.gpu_memory_mib)
    )


def one_node(d: JobDemand) -> bool:
    return len(d.bundles) == 1 or d.placement == "strict_pack"


def holders(s: Scenario, result: Plan) -> list[tuple[JobDemand, tuple[BundleAssignment, ...]]]:
    """Who holds capacity after the plan: running jobs not preempted, then the new placements."""
    preempted = {p.job for p in result.preemptions}
    demands = s.demands()
    out = [(r.demand, r.bundles) for r in s.running if r.demand.job not in preempted]
    out += [(demands[p.job], p.bundles) for p in result.placements]
    return out


def bundles_on_idle_node(node: Node, d: JobDemand, one_model: bool) -> int:
    """How many of the job's (identical) bundles an idle node can hold, counted by hand.

    Each bundle's GPUs are of one model (packing.py: "GPUs of one model for one bundle") and no
    two bundles of one job share a GPU; CPU and memory add up over the bundles. With
    `one_model`, all the bundles use one model (the strictest reading for a job that must be
    on one node); else each bundle may use another model of the node.
    """
    if not node.schedulable:
        return 0
    b = d.bundles[0]
    limit = len(d.bundles)
    by_cpu = round(node.cpus * 1000) // b.cpu_milli if b.cpu_milli else limit
    by_mem = round(node.memory_gb * 1024) // b.memory_mib if b.memory_mib else limit
    by_gpu = limit
    if b.gpus:
        per_model = [
            c // b.gpus for c in Counter(g.model for g in node.gpus if eligible(d, b, g)).values()
        ]
        by_gpu = max(per_model, default=0) if one_model else sum(per_model)
    return min(limit, by_cpu, by_mem, by_gpu)


def fits_idle(cluster: Sequence[Node], d: JobDemand) -> bool:
    """Whether the job fits the cluster with nothing running, by the count above: a job that
    must be on one node needs a node that holds all its bundles on GPUs of one model; any
    other job needs as many bundles as the nodes hold together."""
    if one_node(d):
        return any(bundles_on_idle_node(n, d, one_model=True) >= len(d.bundles) for n in cluster)
    return sum(bundles_on_idle_node(n, d, one_model=False) for n in cluster) >= len(d.bundles)


BENEFICIARY = re.compile(r"^preempted for (\S+) \(")


def beneficiary(reason: str) -> str:
    found = BENEFICIARY.match(reason)
    assert found is not None, reason
    return found.group(1)


# --- properties -------------------------------------------------------------------------------


@SETTINGS
@given(scenarios())
def test_no_gpu_is_shared_beyond_one_whole_gpu_and_exclusive_jobs_get_whole_gpus(
    s: Scenario,
) -> None:
    result = s.plan()
    users: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for d, bundles in holders(s, result):
        for a in bundles:
            for g in a.gpus:
                users.setdefault((a.node, g), []).append((d.job, a.gpu_milli))
            if d.exclusive and a.gpus:
                assert a.gpu_milli == WHOLE, (d.job, a)
    for where, shares in users.items():
        assert sum(m for _, m in shares) <= WHOLE, (where, shares)
        assert all(m > 0 for _, m in shares), (where, shares)
        if any(m == WHOLE for _, m in shares):
            assert len(shares) == 1, (where, shares)


@SETTINGS
@given(scenarios())
def test_no_node_gives_out_more_cpu_or_host_memory_than_it_has(s: Scenario) -> None:
    result = s.plan()
    cpu: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    for d, bundles in holders(s, result):
        for a, b in zip(bundles, d.bundles, strict=True):
            cpu[a.node] += b.cpu_milli
            mem[a.node] += b.memory_mib
    for node in s.snapshot.nodes:
        assert cpu[node.name] <= round(node.cpus * 1000), node
        assert mem[node.name] <= round(node.memory_gb * 1024), node


@SETTINGS
@given(scenarios())
def test_a_placed_job_gets_every_bundle_on_distinct_valid_gpus_of_schedulable_nodes(
    s: Scenario,
) -> None:
    result = s.plan()
    demands = s.demands()
    for p in result.placements:
        d = demands[p.job]
        assert len(p.bundles) == len(d.bundles), p
        seen: set[tuple[str, int]] = set()
        for a, b in zip(p.bundles, d.bundles, strict=True):
            node = s.snapshot.node(a.node)
            assert node.schedulable, (p.job, a.node)
            assert len(a.gpus) == b.gpus, (p.job, a)
            assert len(set(a.gpus)) == len(a.gpus), (p.job, a)
            assert all(0 <= g < len(node.gpus) for g in a.gpus), (p.job, a)
            for g in a.gpus:
                assert (a.node, g) not in seen, f"{p.job} has two bundles on {a.node} GPU {g}"
                seen.add((a.node, g))
        if one_node(d):
            assert len({a.node for a in p.bundles}) == 1, p


@SETTINGS
@given(scenarios())
def test_every_placed_bundle_honours_model_compute_capability_and_gpu_memory(
    s: Scenario,
) -> None:
    result = s.plan()
    demands = s.demands()
    for p in result.placements:
        d = demands[p.job]
        for a, b in zip(p.bundles, d.bundles, strict=True):
            node = s.snapshot.node(a.node)
            for g in a.gpus:
                gpu = node.gpus[g]
                assert eligible(d, b, gpu), (p.job, a, gpu)
                assert a.gpu_milli == b.share_on(gpu_mib(gpu), d.exclusive), (p.job, a, gpu)


@SETTINGS
@given(scenarios(), st.data())
def test_the_same_input_gives_the_same_plan_whatever_the_order_of_the_nodes(
    s: Scenario, data: st.DataObject
) -> None:
    first = s.plan()
    again = s.plan()
    assert again == first
    assert again.to_json() == first.to_json()
    shuffled = data.draw(st.permutations(s.snapshot.nodes))
    snapshot = ClusterSnapshot(tuple(shuffled), s.snapshot.community_weights)
    other = plan(snapshot, s.queue, s.running, s.now)
    assert other.to_json() == first.to_json()
    assert other == first


@SETTINGS
@given(scenarios(), st.data())
def test_the_order_of_the_queue_and_of_the_running_jobs_does_not_change_the_plan(
    s: Scenario, data: st.DataObject
) -> None:
    queue = data.draw(st.permutations(s.queue))
    running = data.draw(st.permutations(s.running))
    assert plan(s.snapshot, queue, running, s.now) == s.plan()


@SETTINGS
@given(scenarios())
def test_every_queued_job_is_placed_or_waits_with_a_reason_and_only_low_jobs_are_preempted(
    s: Scenario,
) -> None:
    result = s.plan()
    placed = [p.job for p in result.placements]
    waiting = [w.job for w in result.waiting]
    assert sorted(placed + waiting) == sorted(q.demand.job for q in s.queue)
    for w in result.waiting:
        assert w.reasons, w
        assert all(isinstance(r, str) and r.strip() for r in w.reasons), w
    assert set(result.reservations) <= set(waiting), result.reservations
    assert all(start >= s.now for start in result.reservations.values()), result.reservations
    running = {r.demand.job: r.demand for r in s.running}
    preempted = [p.job for p in result.preemptions]
    assert len(set(preempted)) == len(preempted), preempted
    demands = s.demands()
    for p in result.preemptions:
        victim = running.get(p.job)
        assert victim is not None, f"{p.job} is preempted but was not running"
        assert victim.priority == 0, p
        assert victim.preemptible, p
    if preempted:
        assert any(demands[job].priority == 2 for job in placed), result


@settings(SETTINGS, max_examples=1500)
@given(clusters(), demands(0))
def test_a_single_job_is_placed_on_an_idle_cluster_exactly_when_it_fits_there(
    cluster: tuple[Node, ...], d: JobDemand
) -> None:
    result = plan(ClusterSnapshot(cluster), [QueuedJob(d)])
    assert not result.preemptions
    assert (len(result.placements) == 1) == fits_idle(cluster, d), result.to_json()


def test_a_strict_pack_job_goes_where_gpus_of_one_model_hold_all_its_bundles() -> None:
    # the smaller model, tried first, holds one bundle; the larger one holds both
    cluster = (make_node("a", gpus=[("T4", 1), ("RTX-3090", 2)]),)
    d = make_job("two-workers", bundles=2, placement="strict_pack")

    result = plan(ClusterSnapshot(cluster), [QueuedJob(d)])

    assert [p.job for p in result.placements] == ["lab/two-workers"], result.to_json()


def test_a_job_that_can_never_run_because_its_gpus_would_span_two_models_is_told_so() -> None:
    cluster = (make_node("a", gpus=[("RTX-3090", 1), ("RTX-4090", 1)]),)
    d = make_job("tensor-parallel", gpus=2)

    result = plan(ClusterSnapshot(cluster), [QueuedJob(d)])

    assert not result.placements
    (waiting,) = result.waiting
    assert waiting.reasons == (
        "needs 2 GPUs in one node: 1 node has only 1 suitable GPU",
        "it cannot run here even on an idle cluster: ask for less, or add nodes that have it",
    )


@SETTINGS
@given(scenarios(contended=True))
def test_preemption_happens_only_for_a_high_priority_job_that_then_runs_where_victims_were(
    s: Scenario,
) -> None:
    result = s.plan()
    demands = s.demands()
    placements = {p.job: p for p in result.placements}
    victims: dict[str, set[str]] = {}
    for p in result.preemptions:
        victims.setdefault(beneficiary(p.reason), set()).add(p.job)
    running = {r.demand.job: r for r in s.running}
    for job, jobs in victims.items():
        d = demands[job]
        assert d.priority == 2, (job, result.preemptions)
        assert job in placements, f"{sorted(jobs)} preempted for {job}, which still waits"
        assert fits_idle(s.snapshot.nodes, d), job
        freed = {a.node for v in jobs for a in running[v].bundles}
        assert freed & {a.node for a in placements[job].bundles}, (job, sorted(jobs))


@SETTINGS
@given(scenarios())
def test_a_placer_built_with_the_running_jobs_equals_one_that_takes_them_one_by_one(
    s: Scenario,
) -> None:
    """A round builds its free capacity in one pass over the running jobs; it must come out
    exactly as accounting each job's bundles in turn would (free per GPU, CPU, memory, the
    classes of interchangeable nodes, the free total)."""
    held = [(r.demand, r.bundles) for r in s.running]
    bulk = Placer(s.snapshot.nodes, held=held)
    one_by_one = Placer(s.snapshot.nodes)
    for demand, bundles in held:
        one_by_one.allocate_assignments(demand, bundles)

    def state(p: Placer) -> tuple[object, ...]:
        def sig(sid: int) -> tuple[object, ...]:
            t, free, cpu, mem = p._sigs[sid]  # noqa: SLF001
            return (t.models, t.gpu_memory_mib, t.cc, t.mtbf_h, free, cpu, mem)

        nodes = [(n.name, n.free, n.cpu, n.mem, sig(n.sid)) for n in p.nodes]
        classes = {sig(sid): members for sid, members in p.classes.items()}
        return nodes, classes, p.free_gpu_milli

    assert state(bulk) == state(one_by_one)
