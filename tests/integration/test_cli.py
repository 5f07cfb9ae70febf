"""`meshctl` against the running mesh API: every command that talks to it, through CliRunner.

The mesh is the session's (tests/integration/conftest.py): simulated GPU nodes from cluster.yaml,
communities bio-ml, quechua-lm and swahili-nlp. Every job here is named cli-... so that it meets
no job of another test module. The API and token are passed as flags unless a test is about
where meshctl finds them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from scheduler.cli import app
from tests.integration.conftest import Mesh

pytestmark = pytest.mark.integration

COMMANDS = [
    ["submit"],
    ["jobs"],
    ["status"],
    ["logs"],
    ["cancel"],
    ["nodes"],
    ["audit", "show"],
    ["audit", "verify"],
    ["token", "create"],
    ["token", "list"],
    ["token", "revoke"],
    ["results"],
    ["models", "list"],
    ["models", "show"],
    ["models", "import"],
    ["models", "pull"],
]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

runner = CliRunner()


# --- factories ---------------------------------------------------------------------------------


def meshctl(mesh: Mesh, *args: str | Path, token: str | None = None) -> Result:
    """Run `meshctl ARGS... --api API --token TOKEN` (the admin's unless given) in process."""
    argv = [str(a) for a in args] + ["--api", mesh.api, "--token", token or mesh.admin_token]
    return runner.invoke(app, argv, env={"COLUMNS": "200", "MESH_API": None, "MESH_TOKEN": None})


def meshctl_json(mesh: Mesh, *args: str | Path, token: str | None = None) -> Any:
    result = meshctl(mesh, *args, "--json", token=token)
    assert_exit(result, 0)
    return json.loads(result.stdout)


def plain(result: Result) -> str:
    """What the user saw (stdout and stderr), without colour codes."""
    return _ANSI.sub("", result.output)


def assert_exit(result: Result, code: int) -> None:
    """The command exited with `code` on its own: no exception escaped, no traceback shown."""
    assert result.exit_code == code, plain(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


def job_file(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return path


def job_ids(mesh: Mesh) -> set[str]:
    return {job["id"] for job in meshctl_json(mesh, "jobs")}


def api_log_lines(mesh: Mesh, job_id: str) -> list[str]:
    r = mesh.http.get(f"{mesh.api}/jobs/{job_id}/logs", headers=mesh.headers())
    r.raise_for_status()
    return [line["line"] for line in r.json()["lines"]]


@pytest.fixture(scope="module")
def finished_probe(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Result:
    """`meshctl submit probe.yaml --wait` of one Probe, bio-ml/cli-probe, run to its end."""
    path = job_file(tmp_path_factory.mktemp("cli") / "probe.yaml", mesh.probe_doc("cli-probe"))
    return meshctl(mesh, "submit", path, "--wait")


PROBE = "bio-ml/cli-probe"


# --- submit ------------------------------------------------------------------------------------


def test_submit_wait_of_a_probe_file_exits_0_naming_the_job_and_its_end(
    finished_probe: Result,
) -> None:
    assert_exit(finished_probe, 0)
    assert plain(finished_probe) == f"submitted {PROBE} (QUEUED)\n{PROBE} SUCCEEDED\n"


def test_submit_follow_prints_each_state_change_and_the_probes_log_lines(
    mesh: Mesh, tmp_path: Path
) -> None:
    path = job_file(tmp_path / "follow.yaml", mesh.probe_doc("cli-follow"))
    result = meshctl(mesh, "submit", path, "--follow")
    assert_exit(result, 0)
    lines = plain(result).splitlines()
    assert lines[0] == "submitted bio-ml/cli-follow (QUEUED)"
    changes = [line for line in lines if line.startswith("bio-ml/cli-follow: ")]
    assert [re.sub(r" \(.*\)$", "", c) for c in changes] == [
        "bio-ml/cli-follow: QUEUED -> PLACED",
        "bio-ml/cli-follow: PLACED -> RUNNING",
        "bio-ml/cli-follow: RUNNING -> SUCCEEDED",
    ]
    written = api_log_lines(mesh, "bio-ml/cli-follow")
    assert written
    assert [line for line in lines if line in written] == written


def test_submit_of_a_file_with_an_unknown_key_exits_2_and_queues_nothing(
    mesh: Mesh, tmp_path: Path
) -> None:
    before = job_ids(mesh)
    doc = mesh.probe_doc("cli-typo")
    doc["resources"] = {"gpu": 1}
    result = meshctl(mesh, "submit", job_file(tmp_path / "bad.yaml", doc))
    assert_exit(result, 2)
    assert plain(result) == "error: bad.yaml: resources.gpu: unknown key; did you mean 'gpus'?\n"
    assert job_ids(mesh) == before


def test_submit_of_a_job_that_is_still_running_exits_2_with_the_apis_message(
    mesh: Mesh, tmp_path: Path
) -> None:
    path = job_file(tmp_path / "twice.yaml", mesh.probe_doc("cli-twice", duration_s=60))
    assert_exit(meshctl(mesh, "submit", path), 0)
    try:
        result = meshctl(mesh, "submit", path)
        assert_exit(result, 2)
        assert plain(result).startswith("error: ")
        assert "bio-ml/cli-twice" in plain(result)
    finally:
        meshctl(mesh, "cancel", "bio-ml/cli-twice")


# --- jobs, status, logs ------------------------------------------------------------------------


def test_jobs_json_lists_the_probe_as_succeeded(mesh: Mesh, finished_probe: Result) -> None:
    jobs = {job["id"]: job for job in meshctl_json(mesh, "jobs", "--community", "bio-ml")}
    assert jobs[PROBE]["state"] == "SUCCEEDED"
    assert jobs[PROBE]["kind"] == "Probe"


def test_jobs_filtered_by_state_lists_only_jobs_in_that_state(
    mesh: Mesh, finished_probe: Result
) -> None:
    jobs = meshctl_json(mesh, "jobs", "--state", "succeeded")
    assert PROBE in {job["id"] for job in jobs}
    assert {job["state"] for job in jobs} == {"SUCCEEDED"}


def test_jobs_prints_a_table_row_for_the_probe(mesh: Mesh, finished_probe: Result) -> None:
    result = meshctl(mesh, "jobs")
    assert_exit(result, 0)
    row = next(line for line in plain(result).splitlines() if f" {PROBE} " in line)
    assert "Probe" in row
    assert "SUCCEEDED" in row


def test_status_json_shows_the_probe_report_one_bundle_on_the_placed_node(
    mesh: Mesh, finished_probe: Result
) -> None:
    job = meshctl_json(mesh, "status", PROBE)
    assert job["id"] == PROBE
    assert job["state"] == "SUCCEEDED"
    [placed] = job["placement"]
    [bundle] = job["report"]["bundles"]
    assert bundle["node"] == placed["node"]
    assert len(bundle["gpu_ids"]) == 1


def test_status_shows_state_placement_transitions_and_the_probe_report(
    mesh: Mesh, finished_probe: Result
) -> None:
    job = mesh.job(PROBE)
    result = meshctl(mesh, "status", PROBE)
    assert_exit(result, 0)
    text = plain(result)
    assert text.startswith(f"{PROBE}  Probe  SUCCEEDED\n")
    for title in ("Placement", "Transitions", "Probe report"):
        assert title in text
    assert job["placement"][0]["node"] in text


def test_status_of_an_unknown_job_exits_2_with_the_apis_message_and_hint(mesh: Mesh) -> None:
    result = meshctl(mesh, "status", "bio-ml/cli-nowhere")
    assert_exit(result, 2)
    assert plain(result) == "error: no job bio-ml/cli-nowhere\nhint: meshctl jobs lists the jobs\n"


def test_logs_prints_the_lines_the_probe_wrote(mesh: Mesh, finished_probe: Result) -> None:
    written = api_log_lines(mesh, PROBE)
    assert written
    result = meshctl(mesh, "logs", PROBE)
    assert_exit(result, 0)
    assert result.stdout == "".join(f"{line}\n" for line in written)


def test_logs_follow_of_a_finished_job_prints_its_lines_and_returns(
    mesh: Mesh, finished_probe: Result
) -> None:
    result = meshctl(mesh, "logs", PROBE, "-f")
    assert_exit(result, 0)
    assert result.stdout == "".join(f"{line}\n" for line in api_log_lines(mesh, PROBE))


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_of_a_long_running_probe_ends_it_cancelled(mesh: Mesh, tmp_path: Path) -> None:
    path = job_file(tmp_path / "long.yaml", mesh.probe_doc("cli-long", duration_s=60))
    assert_exit(meshctl(mesh, "submit", path), 0)
    mesh.wait_for("bio-ml/cli-long", {"RUNNING"})
    result = meshctl(mesh, "cancel", "bio-ml/cli-long")
    assert_exit(result, 0)
    assert plain(result) == "cancelled bio-ml/cli-long (CANCELLED)\n"
    assert meshctl_json(mesh, "status", "bio-ml/cli-long")["state"] == "CANCELLED"
    again = meshctl(mesh, "cancel", "bio-ml/cli-long")
    assert_exit(again, 2)
    assert plain(again).startswith("error: ")


# --- nodes -------------------------------------------------------------------------------------


def test_nodes_lists_every_declared_node_marked_simulated(mesh: Mesh) -> None:
    result = meshctl(mesh, "nodes")
    assert_exit(result, 0)
    for name in ("lab-a100", "home-4090", "home-3060"):
        assert f"{name} (simulated)" in plain(result)


def test_nodes_json_gives_each_declared_node_its_gpus(mesh: Mesh) -> None:
    nodes = {node["name"]: node for node in meshctl_json(mesh, "nodes")}
    assert nodes["lab-a100"]["simulated"] is True
    assert [g["model"] for g in nodes["lab-a100"]["gpus"]] == ["A100-80GB", "A100-80GB"]
    assert [g["model"] for g in nodes["home-3060"]["gpus"]] == ["RTX-3060"]


# --- audit -------------------------------------------------------------------------------------


def test_audit_verify_recomputes_the_whole_chain_and_exits_0(
    mesh: Mesh, finished_probe: Result
) -> None:
    at_least = len(mesh.audit())
    result = meshctl(mesh, "audit", "verify")
    assert_exit(result, 0)
    match = re.fullmatch(
        r"audit chain verified: (\d+) records, head ([0-9a-f]{16})\n", plain(result)
    )
    assert match, plain(result)
    assert int(match.group(1)) >= at_least


def test_audit_show_of_the_probe_lists_its_submission_and_its_success(
    mesh: Mesh, finished_probe: Result
) -> None:
    records = meshctl_json(mesh, "audit", "show", "--job", PROBE)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "submit"
    assert "succeed" in kinds
    assert {r["job"] for r in records} == {PROBE}


# --- tokens ------------------------------------------------------------------------------------


def test_a_token_is_created_listed_revoked_and_then_refused(mesh: Mesh) -> None:
    before = {t["id"] for t in meshctl_json(mesh, "token", "list")}
    created = meshctl(mesh, "token", "create", "--community", "quechua-lm", "--role", "member")
    assert_exit(created, 0)
    secret = created.stdout.strip()
    assert secret
    assert "it is shown only this once" in created.stderr

    tokens = {t["id"]: t for t in meshctl_json(mesh, "token", "list")}
    [new_id] = set(tokens) - before
    assert (tokens[new_id]["community"], tokens[new_id]["role"]) == ("quechua-lm", "member")
    assert tokens[new_id]["revoked"] is False
    assert secret not in json.dumps(tokens)
    assert_exit(meshctl(mesh, "jobs", token=secret), 0)

    revoked = meshctl(mesh, "token", "revoke", new_id)
    assert_exit(revoked, 0)
    assert plain(revoked) == f"revoked token {new_id}\n"
    assert {t["id"]: t for t in meshctl_json(mesh, "token", "list")}[new_id]["revoked"] is True

    refused = meshctl(mesh, "jobs", token=secret)
    assert_exit(refused, 2)
    assert plain(refused).startswith("error: a valid bearer token is required\nhint: ")


def test_a_member_token_sees_only_its_own_communitys_jobs(
    mesh: Mesh, finished_probe: Result
) -> None:
    created = meshctl(mesh, "token", "create", "--community", "quechua-lm")
    assert_exit(created, 0)
    jobs = meshctl_json(mesh, "jobs", token=created.stdout.strip())
    assert {job["community"] for job in jobs} <= {"quechua-lm"}


# --- where meshctl finds the API ---------------------------------------------------------------


def test_meshctl_reads_the_api_and_token_from_the_environment(
    mesh: Mesh, finished_probe: Result
) -> None:
    env = {"MESH_API": mesh.api, "MESH_TOKEN": mesh.admin_token, "MESH_HOME": "/nonexistent"}
    result = runner.invoke(app, ["jobs", "--json"], env=env)
    assert_exit(result, 0)
    assert PROBE in {job["id"] for job in json.loads(result.stdout)}


def test_meshctl_reads_the_api_and_token_from_mesh_home_config(
    mesh: Mesh, tmp_path: Path, finished_probe: Result
) -> None:
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"api": mesh.api + "/", "token": mesh.admin_token}), encoding="utf-8"
    )
    env = {"MESH_HOME": str(tmp_path), "MESH_API": None, "MESH_TOKEN": None}
    result = runner.invoke(app, ["status", PROBE, "--json"], env=env)
    assert_exit(result, 0)
    assert json.loads(result.stdout)["state"] == "SUCCEEDED"


# --- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_api_commands_help_exits_0_with_an_example_and_the_api_options(
    command: list[str],
) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert_exit(result, 0)
    text = " ".join(plain(result).split())
    assert f"Usage: meshctl {' '.join(command)}" in text
    assert f"Example: meshctl {' '.join(command)}" in text
    assert "--api" in text
    assert "overrides MESH_API and $MESH_HOME/config.yaml" in text
    assert "overrides MESH_TOKEN and $MESH_HOME/config.yaml" in text
