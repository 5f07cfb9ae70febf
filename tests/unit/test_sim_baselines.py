"""The simulator's baseline policies, on small hand-built clusters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.cluster import ClusterSnapshot, Gpu, Node
from scheduler.policy.model import (
    BundleAssignment,
    BundleDemand,
    JobDemand,
    Plan,
    QueuedJob,
    RunningJob,
    cpu_milli,
    mib,
)
from scheduler.sim.baselines import (
    BASELINES,
    BestFit,
    FifoFirstFit,
    Las,
    RayDefault,
)
from scheduler.sim.fill import FleetNode, Pod
from scheduler.sim.model import SimPolicy
from scheduler.sim.packers import (
    BestFitPacker,
    FirstFitPacker,
    NodeStatePacker,
    RayDefaultPacker,
    fleet_node,
)

POLICIES: list[type[SimPolicy]] = [FifoFirstFit, Las, BestFit, RayDefault]
MODELS = {"T4": (16.0, (7, 5)), "RTX-4090": (24.0, (8, 9)), "A100-80GB": (80.0, (8, 0))}


def node(
    name: str,
    gpus: int | Sequence[str] = 4,
    *,
    model: str = "A100-80GB",
    cpus: float = 64,
    memory_gb: float = 512,
    schedulable: bool = True,
) -> Node:
    models = [model] * gpus if isinstance(gpus, int) else list(gpus)
    return Node(
        name=name,
        cpus=cpus,
        memory_gb=memory_gb,
        gpus=tuple(Gpu(i, m, *MODELS[m]) for i, m in enumerate(models)),
        schedulable=schedulable,
    )


def job(
    name: str,
    gpus: int = 1,
    bundles: int = 1,
    *,
    cpu: int = 1000,
    memory: int = 1024,
    milli: int | None = None,
    gpu_memory: int | None = None,
    placement: str = "pack",
    models: set[str] | None = None,
    min_cc: tuple[int, int] | None = None,
    exclusive: bool = False,
    submitted: float = 0.0,
) -> JobDemand:
    bundle = BundleDemand(gpus, cpu, memory, gpu_memory_mib=gpu_memory, gpu_milli=milli)
    return JobDemand(
        job=f"c/{name}",
        community="c",
        priority=1,
        bundles=(bundle,) * bundles,
        placement=placement,
        exclusive=exclusive,
        gpu_models=frozenset(models) if models else None,
        min_cc=min_cc,
        submitted_at=submitted,
    )


def running(demand: JobDemand, *bundles: tuple[str, tuple[int, ...], int]) -> RunningJob:
    return RunningJob(demand, tuple(BundleAssignment(n, g, m) for n, g, m in bundles))


def plan_of(
    policy: SimPolicy,
    nodes: Sequence[Node],
    queue: Sequence[JobDemand],
    held: Sequence[RunningJob] = (),
) -> Plan:
    return policy.plan(ClusterSnapshot(tuple(nodes)), [QueuedJob(d) for d in queue], held, 0.0)


def where(plan: Plan) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    return {p.job: [(b.node, b.gpus) for b in p.bundles] for p in plan.placements}


def reasons(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {w.job: w.reasons for w in plan.waiting}


# --------------------------------------------------------------------------- each rule


def test_first_fit_takes_the_first_node_with_room() -> None:
    nodes = [node("a"), node("b"), node("c")]
    full = running(job("old", 4), ("a", (0, 1, 2, 3), 1000))
    plan = plan_of(FifoFirstFit(), nodes, [job("x", 2), job("y", 2), job("z", 1)], [full])
    assert where(plan) == {
        "c/x": [("b", (0, 1))],
        "c/y": [("b", (2, 3))],
        "c/z": [("c", (0,))],
    }


def test_best_fit_takes_the_node_it_leaves_tightest() -> None:
    nodes = [node("a"), node("b"), node("c")]
    half = running(job("old", 2), ("b", (0, 1), 1000))
    plan = plan_of(BestFit(), nodes, [job("x", 1)], [half])
    assert where(plan) == {"c/x": [("b", (2,))]}
    assert where(plan_of(FifoFirstFit(), nodes, [job("x", 1)], [half])) == {"c/x": [("a", (0,))]}


def test_ray_default_spreads_two_one_gpu_jobs_over_two_empty_nodes() -> None:
    plan = plan_of(RayDefault(), [node("a"), node("b")], [job("x"), job("y", submitted=1)])
    assert where(plan) == {"c/x": [("a", (0,))], "c/y": [("b", (0,))]}
    packed = plan_of(FifoFirstFit(), [node("a"), node("b")], [job("x"), job("y", submitted=1)])
    assert where(packed) == {"c/x": [("a", (0,))], "c/y": [("a", (1,))]}


def test_ray_default_packs_one_group_then_moves_to_the_next_best_node() -> None:
    nodes = [node("a"), node("b", 2), node("c")]
    plan = plan_of(RayDefault(), nodes, [job("x", 1, bundles=5)])
    assert [n for n, _ in where(plan)["c/x"]] == ["a", "a", "a", "a", "c"]


def test_las_starts_the_lower_queue_first_and_fifo_within_a_queue() -> None:
    policy = Las()
    policy.attained_gpu_seconds = {"c/old": 7200.0, "c/mid": 60.0}  # queues 1 and 0
    queue = [
        job("old", submitted=0),
        job("mid", submitted=1),
        job("new-late", submitted=3),
        job("new", submitted=2),
    ]
    plan = plan_of(policy, [node("a", 2)], queue)
    assert list(where(plan)) == ["c/mid", "c/new"]
    assert [w.job for w in plan.waiting] == ["c/new-late", "c/old"]
    assert list(where(plan_of(FifoFirstFit(), [node("a", 2)], queue))) == ["c/old", "c/mid"]


def test_las_preempts_the_lower_queue_most_attained_first_and_only_when_it_makes_room() -> None:
    nodes = [node("a", 2)]
    policy = Las()
    policy.attained_gpu_seconds = {"c/long": 9000.0, "c/longer": 20000.0, "c/short": 100.0}
    snapshot = ClusterSnapshot(tuple(nodes))
    running = [
        RunningJob(job("long"), (BundleAssignment("a", (0,)),), 0.0, 9000.0),
        RunningJob(job("longer"), (BundleAssignment("a", (1,)),), 0.0, 20000.0),
    ]
    plan = policy.plan(snapshot, [QueuedJob(job("fresh", submitted=5))], running, 10.0)
    assert [p.job for p in plan.preemptions] == ["c/longer"]  # one is enough: the most attained
    assert plan.preemptions[0].reason == "las: queue 1 job stopped for c/fresh (queue 0)"
    assert where(plan) == {"c/fresh": [("a", (1,))]}

    # a job of the same queue never preempts, and one that cannot fit even then preempts nobody
    same = policy.plan(snapshot, [QueuedJob(job("again", submitted=6))], running[:1], 10.0)
    assert not same.preemptions
    policy.attained_gpu_seconds = {"c/long": 9000.0, "c/again": 9500.0}
    same = policy.plan(snapshot, [QueuedJob(job("again", 2, submitted=6))], running[:1], 10.0)
    assert not same.preemptions
    assert not same.placements
    policy.attained_gpu_seconds = {"c/long": 9000.0}
    big = policy.plan(snapshot, [QueuedJob(job("big", 4))], running[:1], 10.0)
    assert not big.preemptions
    assert [w.job for w in big.waiting] == ["c/big"]
    short = RunningJob(job("short"), (BundleAssignment("a", (1,)),), 0.0, 100.0)
    policy.attained_gpu_seconds = {"c/long": 9000.0, "c/short": 100.0}
    both = policy.plan(snapshot, [QueuedJob(job("pair", 2))], [running[0], short], 10.0)
    assert not both.preemptions  # stopping `long` alone is not enough, and `short` is queue 0


# ------------------------------------------------------------------ what every one keeps


@pytest.mark.parametrize("policy", POLICIES)
def test_a_gang_that_does_not_fit_takes_nothing_and_later_jobs_still_start(
    policy: type[SimPolicy],
) -> None:
    queue = [job("big", 4, bundles=2, placement="strict_pack"), job("small", 1, submitted=1)]
    plan = plan_of(policy(), [node("a"), node("b")], queue)
    assert list(where(plan)) == ["c/small"]
    assert reasons(plan) == {"c/big": ("no room: needs 8 GPUs in one node (strict_pack)",)}


@pytest.mark.parametrize("policy", POLICIES)
def test_a_multi_bundle_pack_job_spans_nodes_all_or_nothing(policy: type[SimPolicy]) -> None:
    held = running(job("old", 3), ("a", (0, 1, 2), 1000))
    plan = plan_of(policy(), [node("a"), node("b")], [job("x", 1, bundles=5)], [held])
    assert sorted(n for n, _ in where(plan)["c/x"]) == ["a", "b", "b", "b", "b"]
    plan = plan_of(policy(), [node("a"), node("b")], [job("x", 1, bundles=6)], [held])
    assert where(plan) == {}
    assert reasons(plan) == {"c/x": ("no room: needs 6 GPUs (pack)",)}


def test_first_fit_fills_the_first_node_then_the_next() -> None:
    plan = plan_of(FifoFirstFit(), [node("a", 2), node("b", 4)], [job("x", 1, bundles=3)])
    assert where(plan) == {"c/x": [("a", (0,)), ("a", (1,)), ("b", (0,))]}


@pytest.mark.parametrize("policy", POLICIES)
def test_allow_lists_compute_capability_and_gpu_memory_are_respected(
    policy: type[SimPolicy],
) -> None:
    nodes = [node("t4", 4, model="T4"), node("ada", 4, model="RTX-4090"), node("a100")]
    queue = [
        job("listed", models={"A100-80GB"}),
        job("cc", min_cc=(8, 5), submitted=1),
        job("memory", gpu_memory=20 * 1024, submitted=2),
        job("nowhere", models={"H100"}, submitted=3),
    ]
    plan = plan_of(policy(), nodes, queue)
    got = {j: [n for n, _ in b] for j, b in where(plan).items()}
    assert got["c/listed"] == ["a100"]
    assert got["c/cc"] == ["ada"]
    assert got["c/memory"][0] in ("ada", "a100")
    assert reasons(plan) == {"c/nowhere": ("no room: needs 1 GPU of type H100 in one node",)}


@pytest.mark.parametrize("policy", POLICIES)
def test_shared_bundles_take_their_share_of_one_gpu(policy: type[SimPolicy]) -> None:
    plan = plan_of(
        policy(), [node("a", 1)], [job(f"s{i}", milli=300, submitted=i) for i in range(4)]
    )
    assert len(plan.placements) == 3
    assert {b.gpu_milli for p in plan.placements for b in p.bundles} == {300}
    by_memory = plan_of(policy(), [node("a", 1)], [job("m", gpu_memory=20 * 1024)])
    assert by_memory.placements[0].bundles[0].gpu_milli == 250  # 20 of 80 GB


def test_ray_default_waits_when_the_node_it_picks_has_only_fragments() -> None:
    nodes = [node("a", 4), node("b", 2)]
    held = [
        running(job("old", 1, bundles=4, milli=600), *[("a", (g,), 600) for g in range(4)]),
        running(job("full"), ("b", (1,), 1000)),
    ]
    queue = [job("x", milli=450)]
    ray = plan_of(RayDefault(), nodes, queue, held)
    assert where(ray) == {}
    assert reasons(ray)["c/x"][0].startswith("stuck: Ray 2.60 picks node a by its summed free GPU")
    assert where(plan_of(FifoFirstFit(), nodes, queue, held)) == {"c/x": [("b", (0,))]}


@pytest.mark.parametrize("policy", POLICIES)
def test_unschedulable_nodes_and_running_jobs_are_left_alone(policy: type[SimPolicy]) -> None:
    nodes = [node("off", schedulable=False), node("on", 1)]
    already = job("already")
    held = running(already, ("on", (0,), 1000))
    plan = plan_of(policy(), nodes, [already, job("x")], [held])
    assert where(plan) == {}
    assert [w.job for w in plan.waiting] == ["c/x"]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_baseline_checkpoints_hourly_and_is_registered_by_name(
    policy: type[SimPolicy],
) -> None:
    p = policy()
    snapshot = ClusterSnapshot((node("a"),))
    assert p.checkpoint_interval_s(job("x"), [BundleAssignment("a", (0,))], snapshot) == 3600.0
    assert BASELINES[p.name] is policy


def test_the_baselines_are_named_as_the_simulator_reports_them() -> None:
    assert sorted(BASELINES) == ["best-fit", "fifo-firstfit", "las", "ray-default"]


# ------------------------------------------------------------------------ properties

gpu_layouts = st.one_of(
    st.lists(st.sampled_from(sorted(MODELS)), max_size=4),
    st.builds(lambda m, k: [m] * k, st.sampled_from(sorted(MODELS)), st.integers(0, 4)),
)
nodes_st = st.lists(
    st.builds(
        lambda gpus, cpus, mem, on: (gpus, cpus, mem, on),
        gpu_layouts,
        st.integers(1, 16),
        st.integers(1, 64),
        st.sampled_from([True, True, True, False]),
    ),
    min_size=2,
    max_size=3,
)


@st.composite
def jobs_st(draw: st.DrawFn, prefix: str) -> list[JobDemand]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        gpus = draw(st.integers(0, 3))
        out.append(
            job(
                f"{prefix}{i}",
                gpus,
                bundles=draw(st.integers(1, 3)),
                cpu=draw(st.integers(0, 4000)),
                memory=draw(st.integers(0, 8192)),
                milli=draw(st.none() | st.integers(100, 1000)) if gpus else None,
                gpu_memory=draw(st.none() | st.integers(8_000, 40_000)) if gpus else None,
                placement=draw(st.sampled_from(["pack", "spread", "strict_pack"])),
                models=draw(st.none() | st.sets(st.sampled_from(sorted(MODELS)), min_size=1)),
                min_cc=draw(st.none() | st.just((8, 0))),
                exclusive=draw(st.booleans()),
                submitted=draw(st.integers(0, 5)),
            )
        )
    return out


def snapshot_of(spec: list[tuple[list[str], int, int, bool]]) -> ClusterSnapshot:
    return ClusterSnapshot(
        tuple(
            node(f"n{i}", gpus, cpus=c, memory_gb=m, schedulable=on)
            for i, (gpus, c, m, on) in enumerate(spec)
        )
    )


def check_plan(
    snapshot: ClusterSnapshot, queue: list[JobDemand], held: list[RunningJob], plan: Plan
) -> None:
    """Nothing over-committed, gangs whole, constraints kept, every queued job answered once."""
    by_id = {d.job: d for d in queue}
    answered = Counter([p.job for p in plan.placements] + [w.job for w in plan.waiting])
    assert answered == Counter(by_id.keys() - {r.demand.job for r in held})
    gpu_use: Counter[tuple[str, int]] = Counter()
    cpu_use: Counter[str] = Counter()
    memory_use: Counter[str] = Counter()
    new = [RunningJob(by_id[p.job], p.bundles) for p in plan.placements]
    for r in [*held, *new]:
        assert len(r.bundles) == len(r.demand.bundles)
        for a, b in zip(r.bundles, r.demand.bundles, strict=True):
            for g in a.gpus:
                gpu_use[a.node, g] += a.gpu_milli
            cpu_use[a.node] += b.cpu_milli
            memory_use[a.node] += b.memory_mib
    for r in new:
        d = r.demand
        assert len({a.node for a in r.bundles}) == 1 or d.placement != "strict_pack"
        for a, b in zip(r.bundles, d.bundles, strict=True):
            n = snapshot.node(a.node)
            assert n.schedulable
            assert len(set(a.gpus)) == len(a.gpus) == b.gpus
            for g in a.gpus:
                gpu = n.gpus[g]
                assert d.gpu_models is None or gpu.model in d.gpu_models
                assert d.min_cc is None or gpu.compute_capability >= d.min_cc
                assert b.gpu_memory_mib is None or mib(gpu.memory_gb) >= b.gpu_memory_mib
                assert a.gpu_milli >= b.share_on(mib(gpu.memory_gb), d.exclusive)
    assert all(milli <= 1000 for milli in gpu_use.values())
    for n in snapshot.nodes:
        assert cpu_use[n.name] <= cpu_milli(n.cpus)
        assert memory_use[n.name] <= mib(n.memory_gb)


@settings(max_examples=150, deadline=None)
@given(
    spec=nodes_st,
    before=jobs_st("old"),
    queue=jobs_st("new"),
    first=st.sampled_from(POLICIES),
    policy=st.sampled_from(POLICIES),
)
def test_no_baseline_ever_over_commits_or_breaks_a_constraint(
    spec: list[tuple[list[str], int, int, bool]],
    before: list[JobDemand],
    queue: list[JobDemand],
    first: type[SimPolicy],
    policy: type[SimPolicy],
) -> None:
    snapshot = snapshot_of(spec)
    earlier = first().plan(snapshot, [QueuedJob(d) for d in before], [], 0.0)
    check_plan(snapshot, before, [], earlier)
    by_id = {d.job: d for d in before}
    held = [RunningJob(by_id[p.job], p.bundles) for p in earlier.placements]
    queue = [*queue, *(d for d in before if d.job not in {p.job for p in earlier.placements})]
    p = policy()
    plan = p.plan(snapshot, [QueuedJob(d) for d in queue], held, 10.0)
    check_plan(snapshot, queue, held, plan)
    assert p.plan(snapshot, [QueuedJob(d) for d in queue], held, 10.0) == plan  # deterministic


# ------------------------------------------------------ the same rules as the fill packers

PACKERS: list[tuple[type[NodeStatePacker], type[SimPolicy]]] = [
    (FirstFitPacker, FifoFirstFit),
    (BestFitPacker, BestFit),
    (RayDefaultPacker, RayDefault),
]
fleet_st = st.lists(
    st.one_of(
        st.builds(
            lambda k, model, cpu, mem: (k, model, cpu, mem),
            st.integers(1, 8),
            st.sampled_from(["T4", "A100-80GB"]),
            st.integers(1, 32).map(lambda c: c * 1000),
            st.integers(1, 64).map(lambda g: g * 1024),
        ),
        st.builds(lambda cpu: (0, None, cpu, 65536), st.integers(1, 32).map(lambda c: c * 1000)),
    ),
    min_size=1,
    max_size=4,
)
pods_st = st.lists(
    st.tuples(
        st.sampled_from([(0, 0), (1, 1000), (2, 1000), (4, 1000), (1, 300), (1, 450), (1, 700)]),
        st.integers(0, 12_000),
        st.integers(0, 40_000),
        st.none() | st.just(frozenset({"T4"})),
    ),
    max_size=14,
)


@settings(max_examples=120, deadline=None)
@given(fleet=fleet_st, pods=pods_st, pair=st.sampled_from(PACKERS))
def test_one_bundle_jobs_land_where_the_fill_packer_with_the_same_rule_puts_them(
    fleet: list[tuple[int, str | None, int, int]],
    pods: list[tuple[tuple[int, int], int, int, frozenset[str] | None]],
    pair: tuple[type[NodeStatePacker], type[SimPolicy]],
) -> None:
    packer_type, policy = pair
    nodes = [FleetNode(f"n{i}", c, m, k, model) for i, (k, model, c, m) in enumerate(fleet)]
    offered = [
        Pod(f"p{i:02d}", cpu, mem, k, milli if k else 0, spec)
        for i, ((k, milli), cpu, mem, spec) in enumerate(pods)
    ]
    packer = packer_type(nodes)
    for p in offered:
        packer.place(p)
    queue = [
        QueuedJob(
            JobDemand(
                job=p.name,
                community="c",
                priority=1,
                bundles=(
                    BundleDemand(
                        p.num_gpu,
                        p.cpu_milli,
                        p.memory_mib,
                        gpu_milli=p.gpu_milli if p.is_gpu_share else None,
                    ),
                ),
                gpu_models=p.gpu_spec,
                submitted_at=float(i),
            )
        )
        for i, p in enumerate(offered)
    ]
    snapshot = ClusterSnapshot(tuple(fleet_node(n) for n in nodes))
    plan = policy().plan(snapshot, queue, [], 0.0)
    assert {p.job: (p.bundles[0].node, p.bundles[0].gpus) for p in plan.placements} == {
        p.pod: (p.node, p.gpus) for p in packer.placements
    }


@pytest.mark.parametrize("policy", POLICIES)
def test_a_share_sized_by_memory_on_mixed_gpus_is_the_largest_any_of_them_asks(
    policy: type[SimPolicy],
) -> None:
    plan = plan_of(policy(), [node("a", ["T4", "A100-80GB"])], [job("x", gpu_memory=8 * 1024)])
    assert plan.placements[0].bundles[0].gpu_milli == 500  # 8 of the T4's 16 GB, not 8 of 80


@pytest.mark.parametrize("policy", POLICIES)
def test_spread_puts_bundles_on_different_nodes_while_there_are_any(
    policy: type[SimPolicy],
) -> None:
    plan = plan_of(policy(), [node("a"), node("b")], [job("x", 1, bundles=3, placement="spread")])
    assert sorted(n for n, _ in where(plan)["c/x"]) in (["a", "a", "b"], ["a", "b", "b"])


@pytest.mark.parametrize("policy", POLICIES)
def test_a_job_with_no_bundles_starts_at_once(policy: type[SimPolicy]) -> None:
    empty = JobDemand(job="c/none", community="c", priority=1, bundles=())
    assert where(plan_of(policy(), [node("a", 0)], [empty])) == {"c/none": []}
