"""Trace adapters: Gavel, openb and plain CSV traces as `Trace`s; the openb and spot fleets."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from scheduler.sim.fill import TraceNotFoundError
from scheduler.sim.model import Trace
from scheduler.sim.traces import (
    cluster_from_openb_nodes,
    cluster_from_spot,
    load_any_cluster,
    read_csv,
    read_gavel,
    read_openb,
    read_trace,
    traces_root,
)

OPENB_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
    "deletion_time,scheduled_time"
)
RESNET = "ResNet-18 (batch size 64)"
TABLE: Mapping[str, Mapping[tuple[str, int], float]] = {
    "v100": {(RESNET, 1): 4.0, (RESNET, 2): 8.0},
    "k80": {(RESNET, 1): 1.0, (RESNET, 2): 0.0},
}


def trace_file(relative: str) -> Path:
    """A file of the public traces, or a skip saying where it was looked for."""
    try:
        path = traces_root() / relative
    except TraceNotFoundError as e:
        pytest.skip(str(e))
    if not path.exists():
        pytest.skip(f"trace file {path} not present (set MESH_TRACES to the traces folder)")
    return path


def write(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def gavel_line(
    job_type: str = RESNET, total_steps: int = 100, arrival_s: float = 0.0, scale: int = 1
) -> str:
    command = "cd %s/workloads && python3 main.py"
    return "\t".join(
        [job_type, command, "--num_steps", "1", str(total_steps), f"{arrival_s}", str(scale)]
    )


def pod_row(
    name: str,
    created: int | str,
    deleted: int | str,
    *,
    num_gpu: int = 1,
    gpu_milli: int = 1000,
    spec: str = "",
    qos: str = "LS",
) -> str:
    return f"{name},4000,8192,{num_gpu},{gpu_milli},{spec},{qos},Running,{created},{deleted},"


def tsv_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


# --- Gavel -------------------------------------------------------------------------------------


def test_a_gavel_job_runs_its_total_steps_at_the_measured_throughput_of_each_model() -> None:
    # Line 1 of seed=0/0e4a51.trace: Transformer (batch size 128), 95,121 steps, 1 GPU, at t=0.
    # simulation_throughputs.json, "('Transformer (batch size 128)', 1)", "null":
    steps_per_s = {
        "K80": 0.9815827061299781,
        "P100": 3.0735350560514787,
        "V100-16GB": 5.44610521981264,
    }
    trace = read_gavel(trace_file("gavel/seed=0/0e4a51.trace"))
    job = next(j for j in trace.jobs if j.id == "vc-0e4a51/1")
    assert job.durations is not None
    assert dict(job.durations) == pytest.approx({m: 95121 / s for m, s in steps_per_s.items()})
    assert job.duration_s == pytest.approx(95121 / steps_per_s["V100-16GB"])  # the fastest
    assert job.demand.runtime_s == job.duration_s
    assert job.arrival_s == 0.0
    assert job.demand.gpus == 1
    assert job.demand.gpu_models == frozenset(steps_per_s)


def test_a_gavel_seed_folder_is_15_virtual_clusters_with_every_line_a_job_or_a_drop() -> None:
    folder = trace_file("gavel/seed=0")
    trace = read_gavel(folder)
    lines = sum(tsv_lines(f) for f in folder.glob("*.trace"))
    assert len(trace.jobs) + trace.dropped == lines
    assert 0 < trace.dropped < lines // 5
    assert "no throughput entry for (job type, scale)" in trace.dropped_why
    assert "zero throughput on K80" in trace.dropped_why
    assert len({j.demand.community for j in trace.jobs}) == 15
    assert all(j.demand.community.startswith("vc-") for j in trace.jobs)
    assert [(j.arrival_s, j.id) for j in trace.jobs] == sorted(
        (j.arrival_s, j.id) for j in trace.jobs
    )


def test_gavel_jobs_without_a_positive_throughput_on_every_model_are_dropped_and_counted(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "abc.trace",
        [gavel_line(scale=1), gavel_line(scale=2), gavel_line(job_type="A3C", scale=1)],
    )
    trace = read_gavel(path, throughputs=TABLE)
    assert [j.id for j in trace.jobs] == ["vc-abc/1"]
    assert trace.dropped == 2
    assert trace.dropped_why == (
        "1 zero throughput on K80 for (job type, scale); "
        "1 no throughput entry for (job type, scale)"
    )


def test_a_gavel_job_holds_scale_factor_exclusive_one_gpu_bundles(tmp_path: Path) -> None:
    table = {"v100": {(RESNET, 4): 2.0}, "p100": {(RESNET, 4): 1.0}}
    path = write(tmp_path, "vc1.trace", [gavel_line(total_steps=600, arrival_s=30.0, scale=4)])
    (job,) = read_gavel(path, throughputs=table).jobs
    assert job.durations == {"V100-16GB": 300.0, "P100": 600.0}
    assert job.duration_on(["V100-16GB", "P100"]) == 600.0
    demand = job.demand
    assert (demand.job, demand.community, demand.submitted_at) == ("vc-vc1/1", "vc-vc1", 30.0)
    assert [b.gpus for b in demand.bundles] == [1, 1, 1, 1]
    assert (demand.exclusive, demand.preemptible, demand.speed_sensitive) == (True, True, True)
    assert (demand.kind, demand.placement, demand.priority) == ("FineTune", "pack", 1)


def test_time_scale_halves_gavel_arrivals_and_keeps_durations(tmp_path: Path) -> None:
    path = write(tmp_path, "a.trace", [gavel_line(arrival_s=0.0), gavel_line(arrival_s=100.0)])
    whole = read_gavel(path, throughputs=TABLE)
    half = read_gavel(path, throughputs=TABLE, time_scale=0.5)
    assert [j.arrival_s for j in half.jobs] == [0.0, 50.0]
    assert [j.demand.submitted_at for j in half.jobs] == [0.0, 50.0]
    assert [j.duration_s for j in half.jobs] == [j.duration_s for j in whole.jobs]


def test_gavel_without_a_throughputs_file_says_how_to_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "a.trace", [gavel_line()])
    with pytest.raises(
        FileNotFoundError, match="no simulation_throughputs.json in .* To fix: pass throughputs="
    ):
        read_gavel(path)


def test_a_gavel_line_with_too_few_columns_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a.trace", [gavel_line(), "ResNet\tcmd\t100"])
    with pytest.raises(ValueError, match="^a.trace line 2: expected 7 tab-separated columns"):
        read_gavel(path, throughputs=TABLE)


# --- openb -------------------------------------------------------------------------------------


def test_the_openb_default_list_starts_at_zero_and_its_fractional_pods_may_share() -> None:
    trace = read_openb(trace_file("alibaba-openb-2023/openb_pod_list_default.csv"))
    assert trace.jobs[0].arrival_s == 0.0
    assert (trace.dropped, trace.dropped_why) == (1, "1 deletion time not after creation time")
    shared = next(j for j in trace.jobs if j.id == "ls/openb-pod-0001")  # 1 GPU at 460 milli
    assert shared.demand.bundles[0].gpu_milli == 460
    assert shared.demand.exclusive is False
    assert shared.arrival_s == 427061.0
    assert shared.duration_s == 12902960 - 427061
    whole = next(j for j in trace.jobs if j.id == "ls/openb-pod-0000")
    assert whole.demand.exclusive is True
    assert {j.demand.community for j in trace.jobs} == {"ls", "be", "burstable", "guaranteed"}


def test_openb_limit_reads_only_the_first_pods() -> None:
    trace = read_openb(trace_file("alibaba-openb-2023/openb_pod_list_default.csv"), limit=10)
    assert len(trace.jobs) == 10
    assert trace.jobs[-1].id == "ls/openb-pod-0009"


@pytest.mark.parametrize("variant", ["gpushare40", "multigpu30", "gpuspec10"])
def test_an_openb_pod_population_is_refused_as_a_trace(variant: str) -> None:
    path = trace_file(f"alibaba-openb-2023/openb_pod_list_{variant}.csv")
    with pytest.raises(ValueError, match="pod population .* `--mode fill`, not a time-ordered"):
        read_openb(path)


def test_an_openb_pod_list_without_times_is_refused_as_a_trace(tmp_path: Path) -> None:
    path = write(tmp_path, "pods.csv", ["name,cpu_milli,memory_mib,num_gpu,gpu_milli", "p,1,1,0,0"])
    with pytest.raises(ValueError, match=r"^pods.csv is a pod list without \['creation_time'"):
        read_openb(path)


def test_openb_pods_become_one_bundle_jobs_and_those_without_an_end_are_dropped(
    tmp_path: Path,
) -> None:
    rows = [
        pod_row("cpu", 150, 400, num_gpu=0, gpu_milli=0, qos=""),
        pod_row("eight", 100, 1100, num_gpu=8, spec="V100M16|V100M32", qos="BE"),
        pod_row("open", 50, ""),
        pod_row("instant", 120, 120),
    ]
    trace = read_openb(write(tmp_path, "pods.csv", [OPENB_HEADER, *rows]))
    assert [(j.id, j.arrival_s, j.duration_s) for j in trace.jobs] == [
        ("be/eight", 0.0, 1000.0),
        ("default/cpu", 50.0, 250.0),
    ]
    assert trace.dropped == 2
    assert "1 no deletion time" in trace.dropped_why
    eight, cpu = (j.demand for j in trace.jobs)
    assert (eight.bundles[0].gpus, eight.bundles[0].gpu_milli) == (8, None)
    assert eight.gpu_models == frozenset({"V100-16GB", "V100-32GB"})
    assert (eight.kind, eight.preemptible, eight.runtime_s) == ("BatchInference", False, 1000.0)
    assert (cpu.bundles[0].gpus, cpu.gpu_models) == (0, None)


# --- plain CSV -----------------------------------------------------------------------------------


def test_a_csv_trace_gives_one_gpu_bundles_that_share_when_gpu_memory_is_given(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "jobs.csv",
        [
            "arrival_s,duration_s,gpus,gpu_memory_gb,community",
            "60,3600,2,,swahili-nlp",
            "0,120,1,8,",
            "30,10,0,,vision",
        ],
    )
    trace = read_csv(path)
    assert [(j.id, j.arrival_s) for j in trace.jobs] == [
        ("default/3", 0.0),
        ("vision/4", 30.0),
        ("swahili-nlp/2", 60.0),
    ]
    small, cpu, two = (j.demand for j in trace.jobs)
    assert (small.exclusive, small.bundles[0].gpu_memory_mib) == (False, 8192)
    assert [b.gpus for b in cpu.bundles] == [0]
    assert [b.gpus for b in two.bundles] == [1, 1]
    assert (two.exclusive, two.runtime_s, two.kind, two.preemptible) == (
        True,
        3600,
        "FineTune",
        True,
    )
    assert trace.dropped == 0


def test_a_bad_csv_value_names_the_file_the_line_and_the_column(tmp_path: Path) -> None:
    lines = ["arrival_s,duration_s,gpus,gpu_memory_gb,community", "0,10,1,,a", "5,x,1,,a"]
    expected = "jobs.csv line 3: duration_s: expected a number > 0, got 'x'"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        read_csv(write(tmp_path, "jobs.csv", lines))


def test_a_misspelt_csv_column_gets_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", ["arrival_s,durations_s,gpus", "0,10,1"])
    with pytest.raises(
        ValueError,
        match="^jobs.csv line 1: unknown column 'durations_s'; did you mean 'duration_s'\\?",
    ):
        read_csv(path)


def test_a_csv_community_that_is_no_dns_label_gets_a_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path, "jobs.csv", ["arrival_s,duration_s,gpus,community", "0,10,1,Swahili NLP"]
    )
    with pytest.raises(ValueError, match="line 2: community: .* did you mean 'swahili-nlp'"):
        read_csv(path)


def test_read_trace_scales_csv_arrivals_and_suggests_a_format(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", ["arrival_s,duration_s,gpus", "100,10,1", "300,10,1"])
    trace: Trace = read_trace(path, "csv", time_scale=0.5)
    assert [(j.arrival_s, j.demand.submitted_at) for j in trace.jobs] == [(50, 50), (150, 150)]
    with pytest.raises(ValueError, match="unknown trace format 'gavell'; did you mean 'gavel'"):
        read_trace(path, "gavell")


# --- clusters ------------------------------------------------------------------------------------


def test_the_spot_fleet_has_the_10412_gpus_of_its_node_list() -> None:
    path = trace_file("alibaba-spot-2026/node_info_df.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    cluster = cluster_from_spot(path)
    assert cluster.total_gpus == sum(int(r["gpu_capacity_num"]) for r in rows) == 10_412
    assert len(cluster.nodes) == len(rows) == 4_278
    assert {m for n in cluster.nodes for m in n.gpu_models} == {
        "A10",
        "GPU-series-1",
        "A100-80GB",
        "H800",
        "GPU-series-2",
        "A800-80GB",
    }
    assert all(n.memory_gb == 8 * n.cpus for n in cluster.nodes)


def test_spot_gpu_models_missing_from_the_catalogue_are_listed_together(tmp_path: Path) -> None:
    lines = [
        "gpu_model,gpu_capacity_num,cpu_num,node_name",
        "B300,8,128,0",
        "A10,1,64,1",
        "X9,1,8,2",
    ]
    with pytest.raises(
        ValueError, match=r"catalogue: 'B300' \(first at node_info_df.csv line 2\), 'X9' \(first at"
    ):
        cluster_from_spot(write(tmp_path, "node_info_df.csv", lines))


def test_the_openb_fleet_has_1213_gpu_nodes_and_6212_gpus() -> None:
    cluster = cluster_from_openb_nodes(
        trace_file("alibaba-openb-2023/openb_node_list_gpu_node.csv")
    )
    assert (len(cluster.nodes), cluster.total_gpus) == (1213, 6212)


def test_load_any_cluster_tells_the_node_lists_apart(tmp_path: Path) -> None:
    yaml = write(
        tmp_path, "c.yaml", ["nodes:", "  - {name: a, cpus: 4, memory_gb: 16, gpus: {model: T4}}"]
    )
    assert load_any_cluster(yaml).total_gpus == 1
    openb = write(tmp_path, "n.csv", ["sn,cpu_milli,memory_mib,gpu,model", "n0,8000,16384,2,T4"])
    assert load_any_cluster(openb).nodes[0].gpu_models == ("T4",)
    spot = write(
        tmp_path, "s.csv", ["gpu_model,gpu_capacity_num,cpu_num,node_name", "H800,8,128,7"]
    )
    assert [n.name for n in load_any_cluster(spot).nodes] == ["spot-7"]
    other = write(tmp_path, "o.csv", ["a,b", "1,2"])
    with pytest.raises(ValueError, match="o.csv: not a node list this reader knows"):
        load_any_cluster(other)
