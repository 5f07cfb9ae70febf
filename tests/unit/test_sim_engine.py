"""The discrete-event simulator on scenarios small enough to compute by hand, and `meshctl sim`.

Every JCT asserted here is worked out in the test's name or comment; policies are tiny stand-ins
written here (`Fifo`, `Scripted`) unless the test is about the shipped ones.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from scheduler import gpus
from scheduler.cli import app
from scheduler.cluster import ClusterSnapshot, Gpu, Node
from scheduler.policy import (
    BundleAssignment,
    BundleDemand,
    JobDemand,
    Placement,
    Plan,
    Preemption,
    QueuedJob,
    RunningJob,
)
from scheduler.sim.churn import ChurnSpec
from scheduler.sim.engine import PolicyError, SimResult, simulate
from scheduler.sim.metrics import nearest_rank, summary
from scheduler.sim.model import SimJob, SimPolicy, Trace

# --- factories ---------------------------------------------------------------------------------


def node(name: str, count: int = 1, model: str = "T4", cpus: float = 16) -> Node:
    g = gpus.resolve(model)
    devices = tuple(Gpu(i, g.name, g.memory_gb, g.compute_capability) for i in range(count))
    return Node(name=name, cpus=cpus, memory_gb=64, gpus=devices, simulated=True)


def cluster(*nodes: Node) -> ClusterSnapshot:
    return ClusterSnapshot(nodes=nodes)


def job(
    name: str,
    arrival: float = 0.0,
    duration: float = 100.0,
    gpus: int = 1,
    community: str = "lab",
    durations: Mapping[str, float] | None = None,
) -> SimJob:
    demand = JobDemand(
        job=f"{community}/{name}",
        community=community,
        priority=1,
        bundles=(BundleDemand(1, 1000, 1024),) * gpus,
        runtime_s=duration,
        submitted_at=arrival,
    )
    return SimJob(demand, arrival, duration, durations)


def trace(*jobs: SimJob) -> Trace:
    return Trace(jobs=tuple(sorted(jobs, key=lambda j: (j.arrival_s, j.id))), source="test")


class Fifo:
    """First come, first served; each bundle on the first node with enough free whole GPUs."""

    name = "test-fifo"

    def __init__(self, checkpoint_every_s: float = math.inf) -> None:
        self.every = checkpoint_every_s
        self.calls: list[tuple[float, ClusterSnapshot, list[QueuedJob], list[RunningJob]]] = []

    def plan(
        self,
        snapshot: ClusterSnapshot,
        queue: Sequence[QueuedJob],
        running: Sequence[RunningJob],
        now: float,
    ) -> Plan:
        self.calls.append((now, snapshot, list(queue), list(running)))
        free = {n.name: [g.index for g in n.gpus] for n in snapshot.nodes}
        for r in running:
            for held in r.bundles:
                for g in held.gpus:
                    free[held.node].remove(g)
        placements: list[Placement] = []
        for q in sorted(queue, key=lambda q: (q.demand.submitted_at, q.demand.job)):
            trial = {name: list(left) for name, left in free.items()}
            taken = []
            for b in q.demand.bundles:
                where = next((n for n, left in trial.items() if len(left) >= b.gpus), None)
                if where is None:
                    return Plan(placements=tuple(placements))  # head-of-line blocking
                taken.append(BundleAssignment(where, tuple(trial[where][: b.gpus])))
                del trial[where][: b.gpus]
            free = trial
            placements.append(Placement(q.demand.job, tuple(taken)))
        return Plan(placements=tuple(placements))

    def checkpoint_interval_s(
        self, demand: JobDemand, bundles: Sequence[BundleAssignment], snapshot: ClusterSnapshot
    ) -> float:
        return self.every


class Scripted(Fifo):
    """Answers its n-th call with the n-th plan given (then empty plans)."""

    name = "test-scripted"

    def __init__(self, plans: Sequence[Plan], checkpoint_every_s: float = math.inf) -> None:
        super().__init__(checkpoint_every_s)
        self.plans = list(plans)

    def plan(
        self,
        snapshot: ClusterSnapshot,
        queue: Sequence[QueuedJob],
        running: Sequence[RunningJob],
        now: float,
    ) -> Plan:
        self.calls.append((now, snapshot, list(queue), list(running)))
        return self.plans.pop(0) if self.plans else Plan()


class Las(Fifo):
    """Reads attained GPU-seconds the way the LAS baseline does."""

    def __init__(self) -> None:
        super().__init__()
        self.attained_gpu_seconds: dict[str, float] = {}
        self.seen: list[dict[str, float]] = []

    def plan(
        self,
        snapshot: ClusterSnapshot,
        queue: Sequence[QueuedJob],
        running: Sequence[RunningJob],
        now: float,
    ) -> Plan:
        self.seen.append(dict(self.attained_gpu_seconds))
        return super().plan(snapshot, queue, running, now)


def place(job_id: str, node_name: str, *gpu: int) -> Placement:
    return Placement(job_id, (BundleAssignment(node_name, gpu),))


def jct(result: SimResult) -> dict[str, float | None]:
    return {j.id: j.jct_s for j in result.jobs}


def run(*jobs: SimJob, on: ClusterSnapshot, policy: SimPolicy, **kw: Any) -> SimResult:
    return simulate(on, trace(*jobs), policy, **kw)


# --- hand-computed scenarios -------------------------------------------------------------------


def test_two_100s_jobs_on_one_gpu_under_fifo_finish_at_100_and_200() -> None:
    result = run(job("a"), job("b"), on=cluster(node("n1")), policy=Fifo())
    assert jct(result) == {"lab/a": 100.0, "lab/b": 200.0}
    s = summary(result)
    assert (s["finished"], s["unfinished"], s["avg_jct_s"]) == (2, 0, 150.0)
    assert (s["makespan_s"], s["avg_queue_s"], s["gpu_utilization"]) == (200.0, 50.0, 1.0)


def test_a_job_runs_at_the_speed_of_the_model_it_got() -> None:
    # 100 s on the reference, 50 s on an A100, 200 s on a T4; the A100 node is taken first.
    speeds = {"A100-80GB": 50.0, "T4": 200.0}
    nodes = cluster(node("fast", model="A100-80GB"), node("slow", model="T4"))
    result = run(job("a", durations=speeds), job("b", durations=speeds), on=nodes, policy=Fifo())
    assert jct(result) == {"lab/a": 50.0, "lab/b": 200.0}


def test_the_policy_sees_measured_speeds_per_model_as_the_controller_passes_them() -> None:
    policy = Fifo()
    nodes = cluster(node("fast", model="A100-80GB"), node("slow", model="T4"))
    run(job("a", durations={"A100-80GB": 50.0, "T4": 200.0}), on=nodes, policy=policy)
    speeds = policy.calls[0][1].speeds
    assert speeds == {("lab/a", "A100-80GB"): 2.0, ("lab/a", "T4"): 0.5}


def test_a_node_down_at_50_with_checkpoints_every_30_s_loses_20_s_of_work() -> None:
    # On n1 from 0, checkpoint at 30 (free), n1 down at 50: 20 s lost, 70 s left, restarted on n2
    # at 50 (the last call was at 0, 50 s ago: due, as 50 >= 0 + interval 50), done at 120.
    result = run(
        job("a"),
        on=cluster(node("n1"), node("n2")),
        policy=Fifo(checkpoint_every_s=30),
        checkpoint_cost_s=0,
        plan_interval_s=50,
        outages_s={"n1": [(50.0, 500.0)]},
    )
    assert jct(result) == {"lab/a": 120.0}
    assert summary(result)["lost_gpu_hours"] == pytest.approx(20 / 3600)
    assert result.jobs[0].interruptions == 1


def test_a_job_whose_only_node_goes_down_waits_for_it_and_then_finishes_what_is_left() -> None:
    # Checkpoint at 30, down at 50 (20 s lost). The call due then is the tick at 60 (n1 is down:
    # nothing placed); n1 is up at 80, but the next call is at 60 + 60: 70 s left, done at 190.
    result = run(
        job("a"),
        on=cluster(node("n1")),
        policy=Fifo(checkpoint_every_s=30),
        checkpoint_cost_s=0,
        outages_s={"n1": [(50.0, 80.0)]},
    )
    assert jct(result) == {"lab/a": 190.0}
    # 1 GPU held 0-50 and 120-190: 120 GPU-seconds, over the 160 s that n1 was up.
    assert summary(result)["gpu_utilization"] == 120 / 160


def test_checkpoint_pauses_hold_the_gpus_and_delay_the_end() -> None:
    # 100 s of work, a 10 s pause after every 30 s of work: pauses at 30, 70 and 110; done at 130
    # (no checkpoint once the work is done).
    result = run(
        job("a"), on=cluster(node("n1")), policy=Fifo(checkpoint_every_s=30), checkpoint_cost_s=10
    )
    assert jct(result) == {"lab/a": 130.0}
    assert result.gpu_seconds_held == 130.0


def test_work_lost_counts_from_the_end_of_the_last_checkpoint_pause() -> None:
    # Work 0-30, pause 30-40 (checkpoint counts at 40), work 40-..., node down at 55: the job
    # held 1 GPU for 15 s since its checkpoint. It saved 30 s of work, 70 s remain: on n2 from 55,
    # pauses at 85-95 and 125-135, done at 135 + 10 = 145.
    result = run(
        job("a"),
        on=cluster(node("n1"), node("n2")),
        policy=Fifo(checkpoint_every_s=30),
        checkpoint_cost_s=10,
        plan_interval_s=0,
        outages_s={"n1": [(55.0, 900.0)]},
    )
    assert summary(result)["lost_gpu_hours"] == pytest.approx(15 / 3600)
    assert jct(result) == {"lab/a": 145.0}


def test_a_preempted_job_keeps_its_progress_and_the_plan_interval_delays_calls() -> None:
    # a from 0. b arrives at 40; the last call was at 0, so the next is the tick at 60: it
    # preempts a (60 s done) and places b (10 s, done at 70). The call due then waits for the
    # tick at 120, which places a again: 40 s left, done at 160.
    plans = [
        Plan(placements=(place("lab/a", "n1", 0),)),
        Plan(
            placements=(place("lab/b", "n1", 0),),
            preemptions=(Preemption("lab/a", "test"),),
        ),
        Plan(placements=(place("lab/a", "n1", 0),)),
    ]
    policy = Scripted(plans)
    result = run(job("a"), job("b", arrival=40, duration=10), on=cluster(node("n1")), policy=policy)
    assert [c[0] for c in policy.calls] == [0.0, 60.0, 120.0]
    assert jct(result) == {"lab/a": 160.0, "lab/b": 30.0}
    assert (result.jobs[0].preemptions, summary(result)["lost_gpu_hours"]) == (1, 0.0)


def test_the_policy_is_called_at_most_once_per_interval_after_batches_of_events() -> None:
    # Arrivals at 0, 10, ..., 50 of 1 s jobs on a 8-GPU node: a call at 0; the arrivals at 10-50
    # wait for the one tick at 60. The completion at 1 empties the queue: no call.
    jobs = [job(f"j{i}", arrival=10.0 * i, duration=1.0) for i in range(6)]
    policy = Fifo()
    result = run(*jobs, on=cluster(node("n1", count=8)), policy=policy)
    assert [c[0] for c in policy.calls] == [0.0, 60.0]
    assert result.plan_calls == 2
    assert sorted(v for v in jct(result).values() if v is not None) == [1, 11, 21, 31, 41, 51]
    assert "at most once per 60 s of simulated time" in result.plan_rule


def test_simultaneous_arrivals_are_one_batch_and_one_call() -> None:
    policy = Fifo()
    run(job("a"), job("b"), job("c"), on=cluster(node("n1", count=3)), policy=policy)
    assert len(policy.calls) == 1
    assert [q.demand.job for q in policy.calls[0][2]] == ["lab/a", "lab/b", "lab/c"]


def test_a_job_that_fits_nowhere_ends_the_run_unfinished() -> None:
    result = run(job("big", gpus=2), job("a"), on=cluster(node("n1")), policy=Fifo())
    s = summary(result)
    assert (s["finished"], s["unfinished"]) == (1, 1)  # lab/a comes first, then lab/big waits


def test_a_job_that_fits_nowhere_ends_the_run_under_churn_too() -> None:
    churn = ChurnSpec.parse("exp:mtbf=1h,mttr=10m")
    result = run(
        job("a", duration=10),
        job("big", gpus=4),
        on=cluster(node("n1")),
        policy=Fifo(),
        churn=churn,
    )
    assert (summary(result)["finished"], summary(result)["unfinished"]) == (1, 1)
    assert result.probe_calls == 1


def test_the_running_jobs_are_shown_with_attained_service_and_their_last_checkpoint() -> None:
    # a from 0, checkpoint every 30 s of work costing 10 s: checkpoints at 40 and 80. At the call
    # at 100 (b arrives), a has held 1 GPU for 100 s and last checkpointed at 80.
    policy = Fifo(checkpoint_every_s=30)
    run(
        job("a", duration=500),
        job("b", arrival=100),
        on=cluster(node("n1"), node("n2")),
        policy=policy,
        checkpoint_cost_s=10,
    )
    now, _, _, running = policy.calls[1]
    assert now == 100.0
    assert running == [
        RunningJob(
            job("a", duration=500).demand,
            (BundleAssignment("n1", (0,)),),
            started_at=0.0,
            attained_gpu_seconds=100.0,
            checkpointed_at=80.0,
        )
    ]


def test_a_policy_with_attained_gpu_seconds_gets_them_before_each_call() -> None:
    # a holds 1 of the 2 GPUs from 0; b (2 GPUs) arrives at 20, the tick calls at 60.
    policy = Las()
    run(
        job("a", duration=500),
        job("b", arrival=20, gpus=2),
        on=cluster(node("n1", 2)),
        policy=policy,
    )
    assert policy.seen[1] == {"lab/b": 0.0, "lab/a": 60.0}


def test_utilization_counts_gpus_held_over_gpus_up() -> None:
    result = run(job("a"), on=cluster(node("n1", count=2)), policy=Fifo())
    assert summary(result)["gpu_utilization"] == 0.5


def test_fairness_is_jains_index_over_communities_of_inverse_mean_slowdown() -> None:
    # lab/a slowdown 1, home/b slowdown 2 (waits 100 s): x = 1 and 0.5, (1.5)^2 / (2 * 1.25) = 0.9.
    result = run(job("a"), job("b", community="home"), on=cluster(node("n1")), policy=Fifo())
    assert summary(result)["fairness_jain"] == pytest.approx(0.9)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (nearest_rank(values, 50), nearest_rank(values, 99), nearest_rank([], 50)) == (
        50.0,
        99.0,
        None,
    )
    assert nearest_rank([1.0, 2.0, 3.0], 50) == 2.0


# --- the referee -------------------------------------------------------------------------------


def test_a_policy_that_over_commits_a_gpu_is_stopped_by_name() -> None:
    plans = [Plan(placements=(place("lab/a", "n1", 0), place("lab/b", "n1", 0)))]
    with pytest.raises(PolicyError, match="policy test-scripted over-commits n1 with lab/b"):
        run(job("a"), job("b"), on=cluster(node("n1")), policy=Scripted(plans))


def test_a_policy_that_places_onto_a_node_that_is_down_is_stopped() -> None:
    # calls at 0 and 60 (n1 went down) place nothing; b arrives at 70, the tick at 120 calls.
    plans = [Plan(), Plan(), Plan(placements=(place("lab/b", "n1", 0),))]
    with pytest.raises(AssertionError, match="placed lab/b on n1, which is not up"):
        run(
            job("a"),
            job("b", arrival=70),
            on=cluster(node("n1"), node("n2")),
            policy=Scripted(plans),
            outages_s={"n1": [(60.0, 1000.0)]},
        )


def test_a_policy_that_gives_a_bundle_more_gpus_than_it_asked_for_is_stopped() -> None:
    plans = [Plan(placements=(place("lab/a", "n1", 0, 1),))]
    with pytest.raises(PolicyError, match=r"gave lab/a GPUs \(0, 1\) of n1 for a bundle of 1"):
        run(job("a"), on=cluster(node("n1", 2)), policy=Scripted(plans))


# --- determinism and speed ---------------------------------------------------------------------


def _stable(result: SimResult) -> dict[str, Any]:
    s = summary(result)
    return {k: v for k, v in s.items() if k not in ("wall_s", "events_per_s")}


def _synthetic(n: int, nodes: int) -> tuple[ClusterSnapshot, Trace]:
    snap = cluster(*(node(f"n{i:04d}", count=4, cpus=64) for i in range(nodes)))
    jobs = [
        job(f"j{i}", arrival=7.0 * i, duration=300.0 + (i * 37) % 900, gpus=1 + i % 3)
        for i in range(n)
    ]
    return snap, trace(*jobs)


def test_the_same_seed_gives_the_same_json() -> None:
    snap, tr = _synthetic(300, 20)
    churn = ChurnSpec.parse("exp:mtbf=2h,mttr=20m,spread=lognormal:1.0")
    first = simulate(snap, tr, Fifo(600), churn=churn, seed=3)
    again = simulate(snap, tr, Fifo(600), churn=churn, seed=3)
    other = simulate(snap, tr, Fifo(600), churn=churn, seed=4)
    assert json.dumps(_stable(first)) == json.dumps(_stable(again))
    assert _stable(first) != _stable(other)
    assert first.lost_gpu_seconds > 0


def test_under_churn_the_policy_sees_only_up_nodes_with_their_mtbf_and_availability() -> None:
    snap, tr = _synthetic(200, 10)
    policy = Fifo(600)
    simulate(snap, tr, policy, churn=ChurnSpec.parse("exp:mtbf=1h,mttr=1h"), seed=1)
    sizes = {len(c[1].nodes) for c in policy.calls}
    assert min(sizes) < 10
    seen = policy.calls[-1][1].nodes[0]
    assert seen.mtbf_h == 1.0
    assert seen.availability == 0.5


def test_ten_thousand_jobs_run_in_seconds() -> None:
    snap, tr = _synthetic(10_000, 100)
    result = simulate(snap, tr, Fifo())
    assert summary(result)["finished"] == 10_000
    assert result.wall_s < 30


# --- the mesh policy is the controller's plan() ------------------------------------------------


def _runs_planner_plan(call: Any) -> bool:
    from scheduler.policy import planner

    hit: list[bool] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is planner.plan.__code__:
            hit.append(True)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return bool(hit)


def test_the_mesh_policy_the_simulator_calls_runs_the_controllers_plan() -> None:
    from scheduler.sim.policies import policy_by_name

    mesh = policy_by_name("mesh")
    snap = cluster(node("n1"))
    assert _runs_planner_plan(lambda: run(job("a"), job("b"), on=snap, policy=mesh))
    result = run(job("a"), job("b"), on=snap, policy=policy_by_name("mesh"))
    assert jct(result) == {"lab/a": 100.0, "lab/b": 200.0}


# --- meshctl sim -------------------------------------------------------------------------------

runner = CliRunner()


def meshctl(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    csv_trace = tmp_path / "jobs.csv"
    csv_trace.write_text(
        "arrival_s,duration_s,gpus,community\n0,100,1,lab\n0,100,1,lab\n10,50,2,home\n"
    )
    nodes = tmp_path / "tiny.yaml"
    nodes.write_text(
        "nodes:\n  - {name: n1, cpus: 8, memory_gb: 32, gpus: {model: T4, count: 2}}\n"
    )
    return csv_trace, nodes


def _sim(files: tuple[Path, Path], *args: str | Path) -> Result:
    trace_path, nodes = files
    return meshctl("sim", "--trace", trace_path, "--format", "csv", "--cluster", nodes, *args)


def test_sim_json_is_a_list_with_one_object_per_policy(files: tuple[Path, Path]) -> None:
    result = _sim(files, "--policy", "mesh", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["policy"] for r in rows] == ["mesh"]
    for key in (
        "jobs finished unfinished dropped avg_jct_s p50_jct_s p99_jct_s makespan_s avg_queue_s"
        " gpu_utilization lost_gpu_hours fairness_jain plan_calls events events_per_s wall_s"
        " plan_rule checkpoint_cost_s churn seed time_scale"
    ).split():
        assert key in rows[0], key
    assert (rows[0]["jobs"], rows[0]["finished"], rows[0]["churn"]) == (3, 3, None)


def test_sim_prints_a_table_and_the_rule_it_ran_under(files: tuple[Path, Path]) -> None:
    result = _sim(files, "--policy", "mesh", "--churn", "exp:mtbf=24h,mttr=2h", "--seed", "2")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "mesh" in text
    assert "Churn: exp:mtbf=24h,mttr=2h; time scale 1; checkpoint cost 60 s; seed 2." in text


def test_sim_of_an_unknown_policy_exits_2_naming_the_valid_ones(files: tuple[Path, Path]) -> None:
    result = _sim(files, "--policy", "mesh", "--policy", "fifo")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert (
        "error: unknown policy 'fifo'; choose from mesh, fifo-firstfit, las, best-fit, ray-default"
        in " ".join(result.stderr.split())
    )


def test_sim_of_a_bad_churn_spec_exits_2_saying_what_to_write(files: tuple[Path, Path]) -> None:
    result = _sim(files, "--policy", "mesh", "--churn", "exp:mtbf=24h")
    assert result.exit_code == 2
    assert "churn 'exp:mtbf=24h': mttr missing. To fix: write e.g." in result.stderr


def test_sim_of_a_missing_trace_exits_2(files: tuple[Path, Path], tmp_path: Path) -> None:
    result = meshctl(
        "sim", "--trace", tmp_path / "nope.csv", "--format", "csv", "--cluster", files[1],
        "--policy", "mesh",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "nope.csv" in result.output
    assert "Traceback" not in result.output


def test_sim_plot_needs_two_policies(files: tuple[Path, Path], tmp_path: Path) -> None:
    result = _sim(files, "--policy", "mesh", "--plot", tmp_path / "cdf.png")
    assert result.exit_code == 2
    assert "give --mode run and 2 or more --policy" in result.stderr


def test_sim_plot_writes_a_png_of_the_jct_cdfs(files: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "cdf.png"
    result = _sim(files, "--policy", "mesh", "--policy", "fifo-firstfit", "--plot", out, "--json")
    assert result.exit_code == 0, result.output
    assert [r["policy"] for r in json.loads(result.stdout)] == ["mesh", "fifo-firstfit"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sim_fill_mode_reports_unallocated_gpus_at_100_and_130_percent(tmp_path: Path) -> None:
    pods = tmp_path / "pods.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        "p1,1000,1024,1,1000,\np2,1000,1024,1,500,\np3,2000,2048,2,1000,\n"
    )
    nodes = tmp_path / "fleet.yaml"
    nodes.write_text(
        "nodes:\n"
        "  - {name: a, cpus: 16, memory_gb: 64, gpus: {model: T4, count: 2}}\n"
        "  - {name: b, cpus: 16, memory_gb: 64, gpus: {model: T4, count: 4}}\n"
    )
    args = ("sim", "--trace", pods, "--format", "openb", "--cluster", nodes, "--mode", "fill")
    result = meshctl(*args, "--policy", "mesh", "--policy", "las", "--seed", "5", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["policy"], r["packer"]) for r in rows] == [("mesh", "mesh"), ("las", "first-fit")]
    for row in rows:
        assert row["seeds"] == list(range(5, 15))
        assert row["gpus_total"] == 6
        assert row["gpus_unallocated"] == row["gpus_unallocated_at_130"]
        assert row["gpus_allocated_at_100"] + row["gpus_unallocated_at_100"] == 6
        assert {"unallocated_fraction", "pods_failed", "pods_failed_at_100"} <= set(row)


def test_sim_fill_mode_needs_an_openb_pod_list(files: tuple[Path, Path]) -> None:
    result = _sim(files, "--policy", "mesh", "--mode", "fill")
    assert result.exit_code == 2
    assert "error: --mode fill draws pods from an openb pod list: give --format openb" in (
        " ".join(result.stderr.split())
    )
