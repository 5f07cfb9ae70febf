"""The placement policy, case by case: each behaviour of scheduler/policy with its exact outcome."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scheduler import gpus
from scheduler.cluster import ClusterSnapshot, Gpu, Node
from scheduler.policy import (
    BundleAssignment,
    BundleDemand,
    JobDemand,
    Plan,
    QueuedJob,
    RunningJob,
    demand_from_spec,
    plan,
    planner,
    queue_order,
)
from scheduler.spec import parse_job

LOW, NORMAL, HIGH = 0, 1, 2
NEVER = "it cannot run here even on an idle cluster: ask for less, or add nodes that have it"


def gpu_node(
    name: str,
    model: str = "RTX-4090",
    count: int = 1,
    *,
    cpus: float = 32,
    memory_gb: float = 128,
    schedulable: bool = True,
) -> Node:
    m = gpus.resolve(model)
    return Node(
        name,
        cpus,
        memory_gb,
        tuple(Gpu(i, m.name, m.memory_gb, m.compute_capability) for i in range(count)),
        schedulable=schedulable,
    )


def cpu_node(name: str, cpus: float = 32, memory_gb: float = 128) -> Node:
    return Node(name, cpus, memory_gb)


def job(
    name: str,
    gpus_per_bundle: int = 1,
    bundles: int = 1,
    *,
    community: str = "c",
    gpu_memory_gb: float | None = None,
    placement: str = "pack",
    priority: int = NORMAL,
    exclusive: bool = False,
    preemptible: bool = False,
    models: set[str] | None = None,
    min_cc: tuple[int, int] | None = None,
    runtime: float | None = None,
    t: float = 0.0,
    cpus: float = 1,
    memory_gb: float = 4,
    speed_sensitive: bool = False,
) -> JobDemand:
    b = BundleDemand(
        gpus=gpus_per_bundle,
        cpu_milli=round(cpus * 1000),
        memory_mib=round(memory_gb * 1024),
        gpu_memory_mib=round(gpu_memory_gb * 1024) if gpu_memory_gb else None,
    )
    return JobDemand(
        job=f"{community}/{name}",
        community=community,
        priority=priority,
        bundles=(b,) * bundles,
        placement=placement,
        exclusive=exclusive,
        preemptible=preemptible,
        gpu_models=frozenset(models) if models else None,
        min_cc=min_cc,
        runtime_s=runtime,
        submitted_at=t,
        speed_sensitive=speed_sensitive,
    )


def run(
    nodes: list[Node], *jobs: JobDemand, running: tuple[RunningJob, ...] = (), **kw: object
) -> Plan:
    snapshot = ClusterSnapshot(tuple(nodes), **kw)  # type: ignore[arg-type]
    return plan(snapshot, [QueuedJob(j) for j in jobs], running, now=0.0)


def where(p: Plan, job_id: str) -> list[tuple[str, tuple[int, ...], float]]:
    for placement in p.placements:
        if placement.job == job_id:
            return [(b.node, b.gpus, b.gpu_fraction) for b in placement.bundles]
    raise AssertionError(f"{job_id} was not placed; waiting: {p.waiting}")


def reasons(p: Plan, job_id: str) -> list[str]:
    for w in p.waiting:
        if w.job == job_id:
            return list(w.reasons)
    raise AssertionError(f"{job_id} is not waiting")


def running(d: JobDemand, *bundles: tuple[str, tuple[int, ...], int], **kw: float) -> RunningJob:
    return RunningJob(d, tuple(BundleAssignment(n, g, m) for n, g, m in bundles), **kw)


# ---------------------------------------------------------------- 1. memory, sharing, CPUs


def test_two_jobs_that_each_need_half_a_gpu_share_one_gpu() -> None:
    p = run([gpu_node("a", "RTX-4090")], job("x", gpu_memory_gb=12), job("y", gpu_memory_gb=12))
    assert where(p, "c/x") == [("a", (0,), 0.5)]
    assert where(p, "c/y") == [("a", (0,), 0.5)]


def test_a_shared_fraction_is_rounded_up_to_a_thousandth() -> None:
    p = run([gpu_node("a", "RTX-3090")], job("x", gpu_memory_gb=10))
    assert where(p, "c/x") == [("a", (0,), 0.417)]


def test_an_exclusive_job_takes_the_whole_gpu_even_with_little_memory() -> None:
    p = run([gpu_node("a")], job("x", gpu_memory_gb=4, exclusive=True), job("y", gpu_memory_gb=4))
    assert where(p, "c/x") == [("a", (0,), 1.0)]
    assert reasons(p, "c/y") == ["needs 1 GPU with >= 4 GB in one node: 1 node has 0 free of 1"]


def test_a_job_never_shares_a_gpu_with_itself() -> None:
    x = job("x", 1, 8, gpu_memory_gb=10, placement="strict_pack")
    p = run([gpu_node("a", "A100-80GB", 4)], x)
    assert reasons(p, "c/x") == [
        "needs 8 GPUs with >= 10 GB in one node (strict_pack): 1 node has only 4 GPUs",
        NEVER,
    ]


def test_a_cpu_only_job_goes_to_the_cpu_node_and_keeps_gpu_nodes_free() -> None:
    p = run([gpu_node("a-gpu"), cpu_node("b-cpu")], job("prep", 0, cpus=8))
    assert where(p, "c/prep") == [("b-cpu", (), 0.0)]


def test_cpus_and_host_memory_count_per_node() -> None:
    nodes = [gpu_node("a", cpus=8, memory_gb=64), gpu_node("b", cpus=64, memory_gb=32)]
    p = run(nodes, job("x", cpus=16, memory_gb=48))
    assert reasons(p, "c/x") == [
        "needs 1 GPU in one node: 1 node has < 16 free CPUs; 1 node has < 48 GB free memory",
        NEVER,
    ]


def test_cpus_held_by_running_jobs_are_not_free() -> None:
    held = running(job("old", 0, cpus=24), ("a", (), 1000))
    p = run([gpu_node("a", cpus=32)], job("x", cpus=16), running=(held,))
    assert reasons(p, "c/x") == ["needs 1 GPU in one node: 1 node has < 16 free CPUs"]


# ------------------------------------------------- 2. models, compute capability, placement


def test_a_gpu_allow_list_and_minimum_compute_capability_are_honoured() -> None:
    nodes = [gpu_node("a", "RTX-3090"), gpu_node("b", "RTX-4090"), gpu_node("c", "A100-80GB")]
    p = run(nodes, job("x", models={"RTX-4090", "RTX-3090"}, min_cc=(8, 9)))
    assert where(p, "c/x") == [("b", (0,), 1.0)]


def test_a_job_whose_gpu_type_is_absent_says_so() -> None:
    nodes = [gpu_node("a", "RTX-3090"), gpu_node("b", "T4"), cpu_node("c")]
    p = run(nodes, job("x", models={"H100"}))
    assert reasons(p, "c/x")[0] == (
        "needs 1 GPU of type H100 in one node: 1 node has no GPUs; 2 nodes have other GPU models"
    )


def test_compute_capability_below_the_minimum_is_counted() -> None:
    p = run([gpu_node("a", "T4"), gpu_node("b", "V100-16GB")], job("x", min_cc=(8, 0)))
    assert reasons(p, "c/x")[0] == (
        "needs 1 GPU with compute capability >= 8.0 in one node:"
        " 2 nodes have compute capability < 8.0"
    )


def test_the_waiting_reason_of_the_design_reads_exactly() -> None:
    nodes = [gpu_node(f"small-{i}", "RTX-3090", 4) for i in range(3)]
    nodes.append(gpu_node("big", "A100-80GB", 4))
    holder = job("holder", 1, 2, gpu_memory_gb=40, placement="strict_pack")
    held = running(holder, ("big", (0,), 1000), ("big", (1,), 1000))
    p = run(nodes, job("x", 1, 4, gpu_memory_gb=40, placement="strict_pack"), running=(held,))
    assert reasons(p, "c/x") == [
        "needs 4 GPUs with >= 40 GB in one node (strict_pack):"
        " 3 nodes have GPUs < 40 GB; 1 node has 2 free of 4"
    ]


def test_spread_puts_each_bundle_on_its_own_node() -> None:
    nodes = [gpu_node(n, "RTX-4090", 2) for n in ("a", "b", "c")]
    p = run(nodes, job("x", 1, 3, placement="spread"))
    assert sorted(n for n, _, _ in where(p, "c/x")) == ["a", "b", "c"]


def test_strict_pack_keeps_every_bundle_on_one_node_or_waits() -> None:
    nodes = [gpu_node("a", "RTX-4090", 2), gpu_node("b", "RTX-4090", 2)]
    p = run(nodes, job("x", 1, 3, placement="strict_pack"))
    assert reasons(p, "c/x")[0] == (
        "needs 3 GPUs in one node (strict_pack): 2 nodes have only 2 GPUs"
    )


def test_pack_prefers_one_node_and_spills_over_when_it_must() -> None:
    nodes = [gpu_node("a", "RTX-4090", 2), gpu_node("b", "RTX-4090", 4)]
    p = run(nodes, job("four", 1, 4), job("two", 1, 2))
    assert {n for n, _, _ in where(p, "c/four")} == {"b"}
    assert {n for n, _, _ in where(p, "c/two")} == {"a"}
    q = run(nodes, job("five", 1, 5))
    assert sorted(n for n, _, _ in where(q, "c/five")) == ["a", "a", "b", "b", "b", "b"][1:]


def test_a_gang_is_placed_whole_or_not_at_all() -> None:
    nodes = [gpu_node("a", "RTX-4090", 2), gpu_node("b", "RTX-4090", 1)]
    p = run(nodes, job("x", 1, 4))
    assert p.placements == ()
    assert reasons(p, "c/x") == [
        "needs 4 GPUs (pack): 3 of 4 fit now",
        NEVER,
    ]


def test_a_gang_over_identical_busy_nodes_is_told_it_waits_not_that_it_never_fits() -> None:
    # Four identical 1-GPU nodes, all busy: a 4-GPU gang fits the idle cluster (one GPU on each),
    # so it only waits; identical nodes are looked at once and must count four times over.
    nodes = [gpu_node(n) for n in "abcd"]
    busy = tuple(running(job(f"r{n}"), (n, (0,), 1000)) for n in "abcd")
    p = run(nodes, job("x", 1, 4), running=busy)
    assert reasons(p, "c/x") == ["needs 4 GPUs (pack): 0 of 4 fit now; 4 nodes have 0 free of 1"]


def test_nothing_is_placed_on_a_node_that_is_not_schedulable() -> None:
    nodes = [gpu_node("a", schedulable=False), gpu_node("b", "T4")]
    p = run(nodes, job("x", models={"RTX-4090"}))
    assert reasons(p, "c/x")[0] == (
        "needs 1 GPU of type RTX-4090 in one node:"
        " 1 node is not schedulable; 1 node has other GPU models"
    )


# ------------------------------------------------------------ 3. fragmentation-aware packing


def test_a_small_job_fills_a_used_node_and_keeps_an_empty_one_whole() -> None:
    nodes = [gpu_node("a", "A100-80GB", 4), gpu_node("b", "A100-80GB", 4)]
    held = running(job("old", 1, 2), ("b", (0,), 1000), ("b", (1,), 1000))
    p = run(nodes, job("one"), job("big", 1, 4, placement="strict_pack", t=1), running=(held,))
    assert where(p, "c/one") == [("b", (2,), 1.0)]
    assert {n for n, _, _ in where(p, "c/big")} == {"a"}


def test_a_small_gpu_is_used_before_a_large_one_is_broken_up() -> None:
    nodes = [gpu_node("a", "A100-80GB", 4), gpu_node("b", "RTX-3090", 1)]
    big = job("big", 1, 4, gpu_memory_gb=60, placement="strict_pack", t=1)
    p = run(nodes, job("one", gpu_memory_gb=20), big)
    assert where(p, "c/one") == [("b", (0,), 0.834)]
    assert {n for n, _, _ in where(p, "c/big")} == {"a"}


def test_a_shared_bundle_goes_best_fit_onto_the_fullest_gpu_that_fits() -> None:
    node = gpu_node("a", "A100-80GB", 3)
    held = (
        running(job("p"), ("a", (0,), 500)),
        running(job("q"), ("a", (1,), 800)),
    )
    p = run([node], job("x", gpu_memory_gb=16), running=held)
    assert where(p, "c/x") == [("a", (1,), 0.2)]


# ------------------------------------------------------------------------ 4. queue order


def test_priority_comes_first_then_fair_share_then_arrival() -> None:
    snapshot = ClusterSnapshot((gpu_node("a", count=8),))
    queue = [
        QueuedJob(job("a1", community="alpha", t=1)),
        QueuedJob(job("a2", community="alpha", t=2)),
        QueuedJob(job("b1", community="beta", t=3)),
        QueuedJob(job("urgent", community="beta", priority=HIGH, t=4)),
        QueuedJob(job("later", community="alpha", priority=LOW, t=0)),
    ]
    assert queue_order(snapshot, queue) == [
        "beta/urgent",
        "alpha/a1",
        "alpha/a2",  # alpha holds nothing yet: nothing is placed when only ordering
        "beta/b1",
        "alpha/later",
    ]
    p = plan(snapshot, queue, (), 0.0)
    # placed, beta/urgent counts for beta: after alpha/a1 both hold one GPU, and alpha wins
    # the tie by name; after alpha/a2, beta holds less
    assert [x.job for x in p.placements] == [
        "beta/urgent",
        "alpha/a1",
        "alpha/a2",
        "beta/b1",
        "alpha/later",
    ]


def test_the_community_furthest_below_its_weighted_share_goes_first() -> None:
    nodes = (gpu_node("a", count=8),)
    held = [
        running(job("old", 1, 2, community="big"), ("a", (0,), 1000), ("a", (1,), 1000)),
        running(job("old", community="small"), ("a", (2,), 1000)),
    ]
    queue = [QueuedJob(job("x", community="big", t=1)), QueuedJob(job("y", community="small", t=2))]
    equal = queue_order(ClusterSnapshot(nodes), queue, held)
    assert equal == ["small/y", "big/x"]  # 1 GPU held against 2
    weighted = queue_order(ClusterSnapshot(nodes, community_weights={"big": 4.0}), queue, held)
    assert weighted == ["big/x", "small/y"]  # 2 / 4 against 1 / 1


# ------------------------------------------------------------------------------ backfill


def test_a_short_job_backfills_but_a_long_one_must_not_delay_a_reserved_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(planner, "WITHIN_COMMUNITY", "fifo")  # backfill, not the order, is tested
    nodes = [gpu_node("a", "RTX-4090", 4)]
    held = running(job("old", 1, 2, runtime=3600), ("a", (0,), 1000), ("a", (1,), 1000))
    p = run(
        nodes,
        job("big", 1, 4, placement="strict_pack", runtime=7200, t=1),
        job("short", runtime=1800, t=2),
        job("long", runtime=7200, t=3),
        running=(held,),
    )
    assert reasons(p, "c/big") == [
        "needs 4 GPUs in one node (strict_pack): 1 node has 1 free of 4",  # short took one
        "reserved to start in 1h, when 2 running jobs will have ended",
    ]
    assert where(p, "c/short") == [("a", (2,), 1.0)]
    assert reasons(p, "c/long") == [
        "fits now, but would delay c/big, reserved to start in 1h;"
        " it could start now if it ended sooner (expected 2h)"
    ]
    assert p.reservations == {"c/big": 3600.0}


def test_the_reserved_start_is_the_earliest_expected_end_that_makes_room() -> None:
    nodes = [gpu_node("a", "RTX-4090", 4)]
    held = tuple(
        running(job(f"r{i}", runtime=1000.0 * (i + 1)), ("a", (i,), 1000)) for i in range(4)
    )
    p = run(nodes, job("three", 1, 3, placement="strict_pack"), running=held)
    assert p.reservations == {"c/three": 3000.0}
    assert (
        reasons(p, "c/three")[-1] == "reserved to start in 50m, when 3 running jobs will have ended"
    )


def test_a_backfilled_job_may_use_gpus_the_reservation_does_not_need() -> None:
    nodes = [gpu_node("a", "RTX-4090", 4), gpu_node("b", "RTX-3090", 1)]
    held = running(job("old", 1, 2, runtime=3600), ("a", (0,), 1000), ("a", (1,), 1000))
    p = run(
        nodes,
        job("big", 1, 4, placement="strict_pack", models={"RTX-4090"}, t=1),
        job("long", runtime=7200, t=2),
        running=(held,),
    )
    assert where(p, "c/long") == [("b", (0,), 1.0)]


def test_a_job_turned_away_by_a_reservation_does_not_turn_away_a_shorter_alike_one() -> None:
    # The round remembers what found no room behind which reservations: a job just like a
    # rejected one, but ending before the reserved start, must still backfill.
    nodes = [gpu_node("a", "RTX-4090", 4)]
    held = running(job("old", 1, 2, runtime=3600), ("a", (0,), 1000), ("a", (1,), 1000))
    p = run(
        nodes,
        job("big", 1, 4, placement="strict_pack", runtime=7200, priority=HIGH),
        job("long", 1, 2, placement="strict_pack", runtime=7200),
        job("short", 1, 2, placement="strict_pack", runtime=1800, priority=LOW),
        running=(held,),
    )
    assert p.reservations == {"c/big": 3600.0}
    assert reasons(p, "c/long")[0].startswith("fits now, but would delay c/big")
    assert where(p, "c/short") == [("a", (2,), 1.0), ("a", (3,), 1.0)]


def test_many_alike_jobs_fill_the_free_gpus_one_by_one() -> None:
    # 50 jobs of one shape: the first 6 take the free GPUs, the rest wait with the same reason.
    nodes = [gpu_node("a", "RTX-4090", 4), gpu_node("b", "RTX-4090", 2)]
    p = run(nodes, *(job(f"j{i:02d}", t=i) for i in range(50)))
    assert sorted((b.node, b.gpus) for x in p.placements for b in x.bundles) == [
        ("a", (0,)),
        ("a", (1,)),
        ("a", (2,)),
        ("a", (3,)),
        ("b", (0,)),
        ("b", (1,)),
    ]
    assert {x.job for x in p.placements} == {f"c/j{i:02d}" for i in range(6)}
    assert {w.reasons for w in p.waiting} == {
        ("needs 1 GPU in one node: 1 node has 0 free of 2; 1 node has 0 free of 4",)
    }
    assert len(p.waiting) == 44


def test_a_preemption_lets_an_alike_job_in_after_one_found_no_room() -> None:
    # Both urgent jobs find no room; the first preempts a 4-GPU low job and takes 2 GPUs, so the
    # second, alike, must be tried again rather than remembered as not fitting.
    nodes = [gpu_node("a", "RTX-4090", 4)]
    low = running(
        job("low", 1, 4, priority=LOW, preemptible=True),
        *(("a", (g,), 1000) for g in range(4)),
    )
    p = run(
        nodes,
        job("u1", 1, 2, priority=HIGH, placement="strict_pack", t=1),
        job("u2", 1, 2, priority=HIGH, placement="strict_pack", t=2),
        running=(low,),
    )
    assert [x.job for x in p.preemptions] == ["c/low"]
    assert where(p, "c/u1") == [("a", (0,), 1.0), ("a", (1,), 1.0)]
    assert where(p, "c/u2") == [("a", (2,), 1.0), ("a", (3,), 1.0)]


# ---------------------------------------------------------------------------- preemption


def test_a_high_job_preempts_the_low_job_that_loses_the_least_work() -> None:
    nodes = [gpu_node("a", "RTX-4090", 1), gpu_node("b", "RTX-4090", 1)]
    fresh = running(
        job("fresh", priority=LOW, preemptible=True), ("a", (0,), 1000), started_at=-600.0
    )
    old = running(
        job("old", priority=LOW, preemptible=True),
        ("b", (0,), 1000),
        started_at=-7200.0,
        checkpointed_at=-60.0,
    )
    p = run(nodes, job("urgent", priority=HIGH), running=(fresh, old))
    assert [(x.job, x.reason) for x in p.preemptions] == [
        (
            "c/old",
            "preempted for c/urgent (high priority), which needs 1 GPU in one node;"
            " loses 60 GPU-seconds since its last checkpoint",
        )
    ]
    assert where(p, "c/urgent") == [("b", (0,), 1.0)]


def test_services_and_normal_jobs_are_never_preempted() -> None:
    nodes = [gpu_node("a", "RTX-4090", 1), gpu_node("b", "RTX-4090", 1)]
    svc = running(job("svc", priority=LOW, preemptible=False), ("a", (0,), 1000))
    normal = running(job("n", preemptible=True), ("b", (0,), 1000))
    p = run(nodes, job("urgent", priority=HIGH), running=(svc, normal))
    assert p.preemptions == ()
    assert reasons(p, "c/urgent") == ["needs 1 GPU in one node: 2 nodes have 0 free of 1"]


def test_no_preemption_for_a_job_that_still_would_not_fit() -> None:
    nodes = [gpu_node("a", "RTX-4090", 2)]
    low = running(job("low", priority=LOW, preemptible=True), ("a", (0,), 1000))
    p = run(nodes, job("huge", 1, 4, priority=HIGH, placement="strict_pack"), running=(low,))
    assert p.preemptions == ()
    assert reasons(p, "c/huge") == [
        "needs 4 GPUs in one node (strict_pack): 1 node has only 2 GPUs",
        NEVER,
        "preempting all 1 preemptible low-priority job would not make room",
    ]


def test_a_low_job_is_not_preempted_by_a_normal_one() -> None:
    nodes = [gpu_node("a")]
    low = running(job("low", priority=LOW, preemptible=True), ("a", (0,), 1000))
    p = run(nodes, job("n"), running=(low,))
    assert p.preemptions == ()


# ------------------------------------------------------------------------ heterogeneity


def test_a_training_job_prefers_the_faster_gpu() -> None:
    nodes = [gpu_node("a", "T4"), gpu_node("b", "A100-80GB")]
    p = run(nodes, job("train", speed_sensitive=True))
    assert where(p, "c/train") == [("b", (0,), 1.0)]


def test_a_measured_speed_beats_the_catalogue() -> None:
    nodes = [gpu_node("a", "T4"), gpu_node("b", "A100-80GB")]
    speeds = {("c/train", "T4"): 2.0, ("c/train", "A100-80GB"): 1.0}
    p = run(nodes, job("train", speed_sensitive=True), speeds=speeds)
    assert where(p, "c/train") == [("a", (0,), 1.0)]


# -------------------------------------------------------------------- specs and purity


def test_a_spec_becomes_a_demand_with_one_bundle_per_gpu() -> None:
    spec = parse_job(
        {
            "apiVersion": "mesh/v1",
            "kind": "FineTune",
            "name": "ft",
            "community": "swahili-nlp",
            "resources": {"gpus": 2, "gpu_memory_gb": 20, "cpus": 4, "memory_gb": 16},
            "finetune": {"base_model": "swahili-nlp/base", "datasets": [{"path": "d.jsonl"}]},
        },
        source="job.yaml",
    )
    d = demand_from_spec(spec)
    assert d.job == "swahili-nlp/ft"
    assert d.bundles == (BundleDemand(1, 4000, 16384, 20480),) * 2
    assert d.exclusive is True
    assert d.preemptible is True
    assert d.runtime_s == 4 * 3600


def test_the_same_input_gives_the_same_plan() -> None:
    nodes = [gpu_node(f"n{i}", "RTX-4090", 2) for i in range(4)]
    jobs = [job(f"j{i}", 1, 1 + i % 3, gpu_memory_gb=8 + i) for i in range(9)]
    assert run(nodes, *jobs) == run(list(reversed(nodes)), *jobs)


FORBIDDEN = {"ray", "time", "random", "os", "io", "pathlib", "socket", "subprocess", "datetime"}


@pytest.mark.parametrize("path", sorted(Path("scheduler/policy").glob("*.py")), ids=str)
def test_the_policy_imports_no_ray_clock_randomness_or_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
    assert "open(" not in path.read_text()


def test_a_long_job_avoids_a_flaky_volunteer_and_a_short_one_does_not_care() -> None:
    import dataclasses

    flaky = dataclasses.replace(gpu_node("a-home-pc"), mtbf_h=4.0)
    steady = dataclasses.replace(gpu_node("b-lab"), mtbf_h=1000.0)
    long_job = job("train", runtime=12 * 3600)
    short_job = job("probe", runtime=60)
    assert where(run([flaky, steady], long_job), "c/train")[0][0] == "b-lab"
    assert where(run([flaky, steady], short_job), "c/probe")[0][0] == "a-home-pc"  # by name


def test_within_a_community_the_smallest_job_goes_first_until_a_large_one_has_waited() -> None:
    assert planner.WITHIN_COMMUNITY == "smallest"
    big, small = job("big", 1, 4, runtime=7200, t=0), job("small", runtime=600, t=10)
    assert planner.within_community(small, now=10) < planner.within_community(big, now=10)
    # 4 x 7200 GPU-s that waited 60 days counts 28,800 / 61 = 472 GPU-s: less than a new 600
    later = 60 * 86400.0
    fresh = job("fresh", runtime=600, t=later)
    assert planner.within_community(big, now=later) < planner.within_community(fresh, now=later)


def test_a_job_waits_for_a_faster_gpu_when_it_would_end_sooner_there() -> None:
    nodes = [gpu_node("k80", "K80"), gpu_node("v100", "V100-16GB")]
    speeds = {("c/train", "K80"): 0.2, ("c/train", "V100-16GB"): 1.0}
    soon = running(job("other", runtime=100), ("v100", (0,), 1000), started_at=0.0)
    p = run(nodes, job("train", runtime=1000, speed_sensitive=True), running=(soon,), speeds=speeds)
    assert reasons(p, "c/train") == [
        "waits for V100-16GB GPUs, expected free in 1m: it would end in 18m there, "
        "in 1h 23m if it started now on K80"
    ]
    late = running(job("other", runtime=100_000), ("v100", (0,), 1000), started_at=0.0)
    p = run(nodes, job("train", runtime=1000, speed_sensitive=True), running=(late,), speeds=speeds)
    assert where(p, "c/train") == [("k80", (0,), 1.0)]
