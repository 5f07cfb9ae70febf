"""`meshctl`, driven through typer's CliRunner: every command, its help, its output and its errors.

Plans are checked through `--json` where their content matters; the tables only for what they
name. Error cases assert the exact line a user reads, the exit status, and that no traceback
escapes (STYLE.md 4 and 8).
"""

from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from scheduler.cli import app
from scheduler.spec import JobSpec, Kind, load_jobs

ROOT = Path(__file__).resolve().parents[2]
JOB_EXAMPLES = ROOT / "examples" / "jobs"
SMALL_CLUSTER = ROOT / "examples" / "clusters" / "volunteers-small.yaml"
QUEUE_MIXED = JOB_EXAMPLES / "queue-mixed.yaml"
CPU_ONLY = JOB_EXAMPLES / "cpu-tokenize.yaml"

EXAMPLES = {
    "validate": "Example: meshctl validate examples/jobs/*.yaml",
    "schema": "Example: meshctl schema > mesh-job.schema.json",
    "gpus": "Example: meshctl gpus",
    "plan": (
        "Example: meshctl plan examples/jobs/queue-mixed.yaml -c "
        "examples/clusters/volunteers-small.yaml"
    ),
    "submit": "Example: meshctl submit examples/jobs/probe.yaml --follow",
    "jobs": "Example: meshctl jobs --community bio-ml --state QUEUED",
    "status": "Example: meshctl status bio-ml/probe-rtx-4090",
    "logs": "Example: meshctl logs bio-ml/probe-rtx-4090 -f",
    "cancel": "Example: meshctl cancel bio-ml/probe-rtx-4090",
    "nodes": "Example: meshctl nodes",
    "audit": "Example: meshctl audit verify",
    "token": "Example: meshctl token create --community bio-ml",
    "up": "Example: meshctl up --nodes examples/clusters/volunteers-small.yaml",
    "down": "Example: meshctl down",
    "join": "Example: meshctl join 10.0.0.5:6379 --owner swahili-nlp",
    "leave": "Example: meshctl leave --drain",
    "sim": "Example: meshctl sim --trace examples/traces/volunteers-day.csv --format csv",
    "models": "Example: meshctl models list",
    "results": "Example: meshctl results quechua-lm/answers -o ./answers",
}


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return sorted(group.commands)


COMMANDS = _commands()

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

runner = CliRunner()


# --- factories ---------------------------------------------------------------------------------


def meshctl(*args: str | Path) -> Result:
    """Run `meshctl ARGS...` in process."""
    return runner.invoke(app, [str(a) for a in args])


def plain(result: Result) -> str:
    """What the user saw (stdout and stderr), without colour codes."""
    return _ANSI.sub("", result.output)


def flat(result: Result) -> str:
    """The output with every run of whitespace (line wraps included) as one space."""
    return " ".join(plain(result).split())


def assert_exit(result: Result, code: int) -> None:
    """The command exited with `code` on its own: no exception escaped, no traceback shown."""
    assert result.exit_code == code, plain(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


def plan_json(*args: str | Path) -> dict[str, Any]:
    result = meshctl("plan", *args, "--json")
    assert_exit(result, 0)
    doc: dict[str, Any] = json.loads(result.stdout)
    assert_plan_shape(doc)
    return doc


def assert_plan_shape(doc: dict[str, Any]) -> None:
    """The documented shape of `plan --json`, key sets exact."""
    assert set(doc) == {"placements", "preemptions", "waiting"}
    for placement in doc["placements"]:
        assert set(placement) == {"job", "bundles"}
        assert isinstance(placement["job"], str)
        assert placement["bundles"]
        for bundle in placement["bundles"]:
            assert set(bundle) == {"node", "gpus", "gpu_fraction"}
            assert isinstance(bundle["node"], str)
            assert isinstance(bundle["gpus"], list)
            assert all(type(g) is int for g in bundle["gpus"])
            fraction = bundle["gpu_fraction"]
            assert type(fraction) is float
            assert 0.0 <= fraction <= 1.0
            assert fraction * 1000 == pytest.approx(round(fraction * 1000), abs=1e-9)
    for preemption in doc["preemptions"]:
        assert set(preemption) == {"job", "reason"}
        assert isinstance(preemption["job"], str)
        assert isinstance(preemption["reason"], str)
    for waiting in doc["waiting"]:
        assert set(waiting) == {"job", "reasons"}
        assert isinstance(waiting["job"], str)
        assert waiting["reasons"]
        assert all(isinstance(r, str) for r in waiting["reasons"])


def job_ids(*files: Path) -> list[str]:
    return [job.job_id for f in files for job in load_jobs(f)]


def finetune(
    name: str, community: str = "lab", priority: str = "normal", **resources: Any
) -> dict[str, Any]:
    """A FineTune job document; one GPU unless `resources` says otherwise."""
    return {
        "apiVersion": "mesh/v1",
        "kind": "FineTune",
        "name": name,
        "community": community,
        "priority": priority,
        "resources": resources or {"gpus": 1},
        "finetune": {
            "base_model": f"{community}/base-1b",
            "datasets": [{"path": "data/train.jsonl"}],
        },
    }


def write_yaml(path: Path, *documents: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def running_entry(job: str, spec: str, *bundles: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"job": job, "spec": spec, "bundles": list(bundles), **fields}


def a100_holder(tmp_path: Path) -> Path:
    """A --running file: a low FineTune holds lab-a100's four GPUs; its spec is one folder down."""
    write_yaml(
        tmp_path / "specs" / "running-jobs.yaml",
        finetune(
            "protein-holder",
            community="bio-ml",
            priority="low",
            gpus=4,
            gpu_types=["A100-80GB"],
            placement="strict_pack",
        ),
    )
    entry = running_entry(
        "bio-ml/protein-holder",
        "specs/running-jobs.yaml",
        *({"node": "lab-a100", "gpus": [g]} for g in range(4)),
        started_at=-3600,
    )
    return write_yaml(tmp_path / "running.yaml", [entry])


def big_a100_job(tmp_path: Path) -> Path:
    """A queue of one: a FineTune asking for four A100s on one node."""
    return write_yaml(
        tmp_path / "queue.yaml",
        finetune(
            "big-lora", "swahili-nlp", gpus=4, gpu_types=["A100-80GB"], placement="strict_pack"
        ),
    )


def one_gpu_box(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A one-A100 cluster, a running FineTune on it, and a queue holding a high-priority one."""
    cluster = write_text(
        tmp_path / "cluster.yaml",
        "nodes:\n  - {name: solo, cpus: 16, memory_gb: 64, gpus: {model: A100-80GB, count: 1}}\n",
    )
    queue = write_yaml(tmp_path / "queue.yaml", finetune("urgent", priority="high"))
    return cluster, queue, tmp_path / "running.yaml"


def background_run(tmp_path: Path, running: Path, priority: str) -> Path:
    write_yaml(tmp_path / "running-jobs.yaml", finetune("background", priority=priority))
    entry = running_entry(
        "lab/background",
        "running-jobs.yaml",
        {"node": "solo", "gpus": [0]},
        started_at=-3600,
        checkpointed_at=-600,
    )
    return write_yaml(running, [entry])


# --- help and version --------------------------------------------------------------------------


def test_every_command_has_an_example_in_this_file() -> None:
    assert set(COMMANDS) <= set(EXAMPLES), "add the new command's example to EXAMPLES"


def test_the_apps_help_exits_0_and_lists_every_command() -> None:
    result = meshctl("--help")
    assert_exit(result, 0)
    text = flat(result)
    assert "Usage: meshctl" in text
    for command in COMMANDS:
        assert command in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_commands_help_exits_0_and_names_its_example(command: str) -> None:
    result = meshctl(command, "--help")
    assert_exit(result, 0)
    assert f"Usage: meshctl {command}" in flat(result)
    assert EXAMPLES[command] in flat(result)


def test_version_prints_the_installed_version() -> None:
    try:
        expected = f"meshctl {version('community-mesh')}\n"
    except PackageNotFoundError:
        expected = "meshctl (not installed)\n"
    result = meshctl("--version")
    assert_exit(result, 0)
    assert plain(result) == expected


# --- validate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(JOB_EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_validate_prints_an_ok_line_for_every_job_of_an_example_file(path: Path) -> None:
    jobs: list[JobSpec] = load_jobs(path)
    result = meshctl("validate", path)
    assert_exit(result, 0)
    assert plain(result) == "".join(f"ok {path.name}: {j.kind.value} {j.job_id}\n" for j in jobs)


def test_validate_takes_every_example_file_at_once_as_documented() -> None:
    files = sorted(JOB_EXAMPLES.glob("*.yaml"))
    result = meshctl("validate", *files)
    assert_exit(result, 0)
    assert len(plain(result).splitlines()) == len(job_ids(*files))


def test_validate_of_a_misspelt_key_exits_1_with_a_did_you_mean_suggestion(tmp_path: Path) -> None:
    doc = finetune("typo")
    doc["resources"] = {"gpu": 1}
    bad = write_yaml(tmp_path / "bad.yaml", doc)
    result = meshctl("validate", bad)
    assert_exit(result, 1)
    assert plain(result) == "invalid bad.yaml: resources.gpu: unknown key; did you mean 'gpus'?\n"


def test_validate_of_a_misspelt_kind_suggests_the_kind(tmp_path: Path) -> None:
    doc = finetune("typo")
    doc["kind"] = "Finetune"
    bad = write_yaml(tmp_path / "bad.yaml", doc)
    result = meshctl("validate", bad)
    assert_exit(result, 1)
    assert plain(result) == (
        "invalid bad.yaml: kind: must be one of FineTune, BatchInference, Service, Probe;"
        " got 'Finetune' — did you mean 'FineTune'?\n"
    )


def test_validate_reports_good_and_bad_files_alike_and_exits_1(tmp_path: Path) -> None:
    good = write_yaml(tmp_path / "good.yaml", finetune("fine"))
    bad = write_text(tmp_path / "broken.yaml", "apiVersion: mesh/v1\nkind: [\n")
    result = meshctl("validate", good, bad)
    assert_exit(result, 1)
    assert "ok good.yaml: FineTune lab/fine\n" in plain(result)
    assert (
        "invalid broken.yaml: line 3, column 1: invalid YAML: expected the node content,"
        " but found '<stream end>'\n"
    ) in plain(result)


def test_validate_names_the_document_of_a_file_with_several(tmp_path: Path) -> None:
    second = finetune("second")
    second["resources"] = {"gpu": 1}
    jobs = write_yaml(tmp_path / "jobs.yaml", finetune("first"), second)
    result = meshctl("validate", jobs)
    assert_exit(result, 1)
    assert plain(result) == (
        "invalid jobs.yaml (document 2): resources.gpu: unknown key; did you mean 'gpus'?\n"
    )


# --- schema and gpus ---------------------------------------------------------------------------


def test_schema_prints_json_that_covers_the_four_kinds() -> None:
    result = meshctl("schema")
    assert_exit(result, 0)
    schema = json.loads(result.stdout)
    assert set(schema["discriminator"]["mapping"]) == {k.value for k in Kind}
    assert len(schema["oneOf"]) == 4
    for kind in Kind:
        assert f"{kind.value}Job" in schema["$defs"]


def test_schema_with_cluster_prints_the_cluster_files_json_schema() -> None:
    result = meshctl("schema", "--cluster")
    assert_exit(result, 0)
    schema = json.loads(result.stdout)
    assert schema["title"] == "ClusterFile"
    assert schema["required"] == ["nodes"]


@pytest.mark.parametrize(("model", "memory"), [("RTX-4090", "24 GB"), ("A100-80GB", "80 GB")])
def test_gpus_lists_a_catalogue_model_with_its_memory(model: str, memory: str) -> None:
    result = meshctl("gpus")
    assert_exit(result, 0)
    assert re.search(rf"^\W*{re.escape(model)}\s+\W\s*{memory}", plain(result), re.MULTILINE)


# --- plan: the example queue -------------------------------------------------------------------


def test_plan_of_the_example_queue_prints_a_table_naming_every_job() -> None:
    result = meshctl("plan", QUEUE_MIXED, "--cluster", SMALL_CLUSTER)
    assert_exit(result, 0)
    text = plain(result)
    assert text.startswith("Plan for 7 queued jobs (0 running) on 7 nodes with 10 GPUs\n")
    assert "reserved to start in 1d" in text
    for job in job_ids(QUEUE_MIXED):
        assert job in text


def test_plan_json_of_the_example_queue_has_the_documented_shape_and_every_job_once() -> None:
    doc = plan_json(QUEUE_MIXED, "-c", SMALL_CLUSTER)
    seen = [p["job"] for p in doc["placements"]] + [w["job"] for w in doc["waiting"]]
    assert sorted(seen) == sorted(job_ids(QUEUE_MIXED))
    assert doc["preemptions"] == []


def test_plan_json_gives_whole_gpus_as_1_and_shared_ones_in_thousandths() -> None:
    doc = plan_json(QUEUE_MIXED, "-c", SMALL_CLUSTER)
    exclusive = {j.job_id for j in load_jobs(QUEUE_MIXED) if j.resources.exclusive}
    exclusive.add("bio-ml/probe-any-gpu")  # no gpu_memory_gb: it takes a whole GPU
    fractions = {p["job"]: {b["gpu_fraction"] for b in p["bundles"]} for p in doc["placements"]}
    for job in exclusive & set(fractions):
        assert fractions[job] == {1.0}, job
    shared = {f for job, fs in fractions.items() if job not in exclusive for f in fs}
    assert shared
    assert all(0.0 < f < 1.0 for f in shared)
    # 12 GB of a 24 GB RTX-3090, and 10 GB of a 24 GB RTX-4090 rounded up to a thousandth
    assert fractions["quechua-lm/quechua-chat"] == {0.5}
    assert fractions["quechua-lm/qu-synthetic-dialogues"] == {0.417}


def test_plan_json_gives_a_cpu_only_bundle_an_empty_gpu_list() -> None:
    doc = plan_json(QUEUE_MIXED, CPU_ONLY, "-c", SMALL_CLUSTER)
    seen = [p["job"] for p in doc["placements"]] + [w["job"] for w in doc["waiting"]]
    assert sorted(seen) == sorted(job_ids(QUEUE_MIXED, CPU_ONLY))
    (cpu_job,) = (p for p in doc["placements"] if p["job"] == "bio-ml/tag-protein-abstracts")
    assert cpu_job["bundles"] == [{"node": "bio-cpu", "gpus": [], "gpu_fraction": 0.0}]


def test_plan_places_every_job_of_a_file_with_several_documents(tmp_path: Path) -> None:
    jobs = write_yaml(
        tmp_path / "jobs.yaml",
        finetune("first"),
        finetune("second", community="other", gpus=2, placement="pack"),
    )
    doc = plan_json(jobs, "-c", SMALL_CLUSTER)
    assert sorted(p["job"] for p in doc["placements"]) == ["lab/first", "other/second"]
    assert doc["waiting"] == []


# --- plan: jobs already running ----------------------------------------------------------------


def test_plan_places_four_a100s_on_one_node_when_nothing_runs(tmp_path: Path) -> None:
    doc = plan_json(big_a100_job(tmp_path), "-c", SMALL_CLUSTER)
    assert doc["placements"] == [
        {
            "job": "swahili-nlp/big-lora",
            "bundles": [{"node": "lab-a100", "gpus": [g], "gpu_fraction": 1.0} for g in range(4)],
        }
    ]


def test_a_running_job_on_the_a100s_makes_a_four_a100_strict_pack_job_wait(
    tmp_path: Path,
) -> None:
    running = a100_holder(tmp_path)
    doc = plan_json(big_a100_job(tmp_path), "-c", SMALL_CLUSTER, "--running", running)
    assert doc["placements"] == []
    assert doc["preemptions"] == []
    assert doc["waiting"] == [
        {
            "job": "swahili-nlp/big-lora",
            "reasons": [
                "needs 4 GPUs of type A100-80GB in one node (strict_pack): 1 node has no GPUs;"
                " 5 nodes have other GPU models; 1 node has 0 free of 4",
                "reserved to start in 3h, when 1 running job will have ended",
            ],
        }
    ]


def test_the_plan_table_counts_the_running_jobs(tmp_path: Path) -> None:
    running = a100_holder(tmp_path)
    result = meshctl("plan", big_a100_job(tmp_path), "-c", SMALL_CLUSTER, "-r", running)
    assert_exit(result, 0)
    text = plain(result)
    assert text.startswith("Plan for 1 queued job (1 running) on 7 nodes with 10 GPUs\n")
    assert "swahili-nlp/big-lora" in text
    assert "Waiting" in text


def test_a_high_priority_job_preempts_a_low_priority_running_finetune(tmp_path: Path) -> None:
    cluster, queue, running = one_gpu_box(tmp_path)
    background_run(tmp_path, running, priority="low")
    doc = plan_json(queue, "-c", cluster, "-r", running)
    assert doc["preemptions"] == [
        {
            "job": "lab/background",
            "reason": "preempted for lab/urgent (high priority), which needs 1 GPU in one node;"
            " loses 600 GPU-seconds since its last checkpoint",
        }
    ]
    assert doc["placements"] == [
        {"job": "lab/urgent", "bundles": [{"node": "solo", "gpus": [0], "gpu_fraction": 1.0}]}
    ]
    assert doc["waiting"] == []


def test_a_high_priority_job_does_not_preempt_a_normal_priority_one(tmp_path: Path) -> None:
    cluster, queue, running = one_gpu_box(tmp_path)
    background_run(tmp_path, running, priority="normal")
    doc = plan_json(queue, "-c", cluster, "-r", running)
    assert doc["preemptions"] == []
    assert doc["placements"] == []
    assert [w["job"] for w in doc["waiting"]] == ["lab/urgent"]


# --- plan: errors ------------------------------------------------------------------------------


def test_plan_of_a_malformed_job_file_exits_2_with_the_problem(tmp_path: Path) -> None:
    doc = finetune("typo")
    doc["resources"] = {"gpu": 1}
    bad = write_yaml(tmp_path / "bad.yaml", doc)
    result = meshctl("plan", bad, "-c", SMALL_CLUSTER)
    assert_exit(result, 2)
    assert plain(result) == "error: bad.yaml: resources.gpu: unknown key; did you mean 'gpus'?\n"


def test_plan_of_a_job_file_that_is_not_yaml_exits_2_with_the_line(tmp_path: Path) -> None:
    bad = write_text(tmp_path / "broken.yaml", "apiVersion: mesh/v1\nkind: [\n")
    result = meshctl("plan", bad, "-c", SMALL_CLUSTER)
    assert_exit(result, 2)
    assert plain(result) == (
        "error: broken.yaml: line 3, column 1: invalid YAML: expected the node content,"
        " but found '<stream end>'\n"
    )


@pytest.mark.parametrize(
    ("cluster_text", "message"),
    [
        pytest.param(
            "nodes:\n  - {name: a, cpus: 4, memory_gb: 8, gpu: {model: RTX-4090}}\n",
            "cluster.yaml: nodes[0].gpu: unknown key; did you mean 'gpus'?",
            id="misspelt key",
        ),
        pytest.param(
            "nodes: [\n",
            "cluster.yaml: line 2, column 1: invalid YAML: expected the node content,"
            " but found '<stream end>'",
            id="not yaml",
        ),
        pytest.param(
            "- {name: a, cpus: 4, memory_gb: 8}\n",
            "cluster.yaml: expected a mapping with a `nodes:` list, got list",
            id="a list",
        ),
    ],
)
def test_plan_of_a_malformed_cluster_file_exits_2_with_the_problem(
    tmp_path: Path, cluster_text: str, message: str
) -> None:
    cluster = write_text(tmp_path / "cluster.yaml", cluster_text)
    result = meshctl("plan", QUEUE_MIXED, "-c", cluster)
    assert_exit(result, 2)
    assert plain(result) == f"error: {message}\n"


def test_plan_with_a_running_job_on_an_unknown_node_exits_2(tmp_path: Path) -> None:
    cluster, queue, running = one_gpu_box(tmp_path)
    background_run(tmp_path, running, priority="low")
    running.write_text(running.read_text().replace("node: solo", "node: nowhere"))
    result = meshctl("plan", queue, "-c", cluster, "-r", running)
    assert_exit(result, 2)
    assert plain(result) == (
        "error: running.yaml: running[0].bundles[0].node: no node 'nowhere' in the cluster\n"
    )


def test_plan_with_a_running_job_of_the_wrong_bundle_count_exits_2(tmp_path: Path) -> None:
    write_yaml(tmp_path / "specs" / "running-jobs.yaml", finetune("pair", gpus=2))
    entry = running_entry("lab/pair", "specs/running-jobs.yaml", {"node": "lab-a100", "gpus": [0]})
    running = write_yaml(tmp_path / "running.yaml", [entry])
    result = meshctl("plan", QUEUE_MIXED, "-c", SMALL_CLUSTER, "-r", running)
    assert_exit(result, 2)
    assert plain(result) == (
        "error: running.yaml: running[0].bundles: 1 given, but the spec has 2 bundles\n"
    )


@pytest.mark.parametrize("missing", ["jobs", "cluster", "running"])
def test_plan_with_a_missing_file_exits_2_naming_it(tmp_path: Path, missing: str) -> None:
    absent = tmp_path / "absent.yaml"
    jobs = absent if missing == "jobs" else QUEUE_MIXED
    cluster = absent if missing == "cluster" else SMALL_CLUSTER
    extra: list[str | Path] = ["-r", absent] if missing == "running" else []
    result = meshctl("plan", jobs, "-c", cluster, *extra)
    assert_exit(result, 2)
    assert plain(result) == f"error: {absent}: no such file\n"


def test_plan_refuses_a_job_defined_in_two_files(tmp_path: Path) -> None:
    first = write_yaml(tmp_path / "a.yaml", finetune("twice"))
    second = write_yaml(tmp_path / "b.yaml", finetune("other"), finetune("twice"))
    result = meshctl("plan", first, second, "-c", SMALL_CLUSTER)
    assert_exit(result, 2)
    assert plain(result) == "error: b.yaml: job lab/twice is also defined in a.yaml\n"


def test_plan_refuses_a_job_defined_twice_in_one_file(tmp_path: Path) -> None:
    jobs = write_yaml(tmp_path / "jobs.yaml", finetune("twice"), finetune("twice"))
    result = meshctl("plan", jobs, "-c", SMALL_CLUSTER)
    assert_exit(result, 2)
    assert plain(result) == (
        "error: jobs.yaml (document 2): name: job 'lab/twice' is already defined in document 1;"
        " a community's job names must be unique\n"
    )


def test_the_example_running_file_keeps_its_jobs_off_the_queue_and_their_gpus_busy() -> None:
    running = str(Path(QUEUE_MIXED).parent.parent / "running" / "volunteers-small.yaml")
    doc = plan_json(QUEUE_MIXED, "-c", SMALL_CLUSTER, "--running", running)
    placed = {p["job"] for p in doc["placements"]}
    assert "bio-ml/protein-llama-8b" not in placed
    assert "quechua-lm/qu-synthetic-dialogues" not in placed
    assert not any(b["node"] == "lab-a100" for p in doc["placements"] for b in p["bundles"])
    waiting = {w["job"]: w["reasons"] for w in doc["waiting"]}
    assert waiting["quechua-lm/quechua-llama-8b-lora"][0].endswith("1 node has 0 free of 4")
