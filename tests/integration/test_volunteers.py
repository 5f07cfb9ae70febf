"""Volunteers joining and leaving the session's mesh through `meshctl join` and `meshctl leave`.

Each machine here is a real Ray node started by `meshctl join` (a `ray start` of its own, with the
session cluster's token), on this machine. Nodes whose GPUs are simulated (`--simulate-gpus`)
account for GPUs; a node that claims a GPU without being marked simulated is probed like a
real volunteer, and this machine has no GPU to show. Every job here is named vol-..., and the
GPU models asked for (V100-32GB, RTX-A4000, RTX-A6000) are ones no other test module uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Mesh
from tests.integration.test_serving import member_token
from tests.integration.test_serving_chaos import chat_until, replicas, service_doc
from tests.integration.test_workloads import finetune_doc, register, rows, write_job
from tests.tiny_llama import build_tiny_llama

pytestmark = pytest.mark.integration

MODEL = "bio-ml/vol-llama"


def meshctl(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `meshctl` in its own process, as a volunteer runs it."""
    env = {**os.environ, "COLUMNS": "200"}
    for name in ("MESH_API", "MESH_TOKEN", "RAY_ADDRESS"):
        env.pop(name, None)
    return subprocess.run(
        [str(Path(sys.executable).with_name("meshctl")), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def said(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("volunteer") / "ray_token"
    path.write_text(os.environ["RAY_AUTH_TOKEN"] + "\n")
    path.chmod(0o600)
    return path


class Volunteer:
    """One machine's mesh home, joined with `meshctl join` and left with `meshctl leave`."""

    def __init__(self, mesh: Mesh, home: Path, token_file: Path) -> None:
        self.mesh, self.home, self.token_file = mesh, home, token_file

    def join(self, *args: str) -> subprocess.CompletedProcess[str]:
        return meshctl(
            "join",
            self.mesh.cluster.address,
            "--token-file",
            self.token_file,
            "--object-store-gb",
            "0.1",
            "--home",
            self.home,
            *args,
        )

    def leave(self, *args: str) -> subprocess.CompletedProcess[str]:
        return meshctl("leave", "--home", self.home, *args, timeout=300)


@pytest.fixture(scope="module")
def model(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> str:
    register(mesh, build_tiny_llama(tmp_path_factory.mktemp("vol-model")), MODEL, source="tests")
    return MODEL


@pytest.fixture
def volunteers(mesh: Mesh, token_file: Path, tmp_path: Path) -> Iterator[list[Volunteer]]:
    """Homes for up to three machines; whatever still runs at the end leaves."""
    made = [Volunteer(mesh, tmp_path / f"machine-{i}", token_file) for i in range(3)]
    yield made
    for v in made:
        if (v.home / "run" / "node.json").exists():
            v.leave()


def node_view(mesh: Mesh, name: str) -> dict[str, Any] | None:
    r = mesh.http.get(f"{mesh.api}/nodes", headers=mesh.headers())
    r.raise_for_status()
    return next((n for n in r.json()["nodes"] if n["name"] == name), None)


def wait_node(mesh: Mesh, name: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = node_view(mesh, name)
        if view is not None and view.get("state") in states:
            return view
        assert time.monotonic() < deadline, f"{name} is not {states}: {view}"
        time.sleep(0.2)


def test_a_node_with_a_wrong_token_is_refused_and_leaves_nothing_running(
    mesh: Mesh, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-mesh-token\n")
    home = tmp_path / "intruder"
    result = meshctl(
        "join",
        mesh.cluster.address,
        "--name",
        "vol-intruder",
        "--token-file",
        wrong,
        "--object-store-gb",
        "0.1",
        "--home",
        home,
    )
    assert result.returncode == 1, said(result)
    assert "refused this node" in said(result)
    assert "meshctl token join" in said(result)
    assert not (home / "run" / "node.json").exists()
    assert node_view(mesh, "vol-intruder") is None


def test_a_cpu_machine_joins_ready_gets_work_and_keeps_its_name_when_it_returns(
    mesh: Mesh, model: str, volunteers: list[Volunteer], tmp_path: Path
) -> None:
    v = volunteers[0]
    dry = v.join("--name", "vol-cpu", "--cpus", "12", "--no-gpus", "--owner", "bio-ml", "--dry-run")
    assert dry.returncode == 0, said(dry)
    assert "--labels=mesh/node=vol-cpu,mesh/owner=bio-ml" in said(dry)
    assert not (v.home / "run" / "node.json").exists()  # a dry run starts nothing

    joined = v.join("--name", "vol-cpu", "--cpus", "12", "--no-gpus", "--owner", "bio-ml")
    assert joined.returncode == 0, said(joined)
    assert "Joined" in said(joined)
    view = wait_node(mesh, "vol-cpu", {"READY"})
    assert view["why"] == "no GPUs to verify"
    assert view["owner"] == "bio-ml"
    assert view["cpus"] == 12
    again = v.join("--name", "vol-cpu", "--cpus", "12", "--no-gpus")
    assert again.returncode == 0, said(again)
    assert "already joined" in said(again)

    # CPU-only work that fits no other node of the mesh (12 CPUs) runs there
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text(rows(16))
    doc = finetune_doc("vol-cpu-ft", steps=3, every=10, gpus=0, cpus=10)
    doc["finetune"]["base_model"] = model
    r = meshctl("submit", write_job(tmp_path, doc), "--api", mesh.api, "--token", mesh.admin_token)
    assert r.returncode == 0, said(r)
    job = mesh.wait_for("bio-ml/vol-cpu-ft", {"SUCCEEDED"}, timeout=120)
    assert {b["node"] for b in job["placement"]} == {"vol-cpu"}

    left = v.leave()
    assert left.returncode == 0, said(left)
    assert "Left" in said(left)
    assert wait_node(mesh, "vol-cpu", {"DOWN"})["alive"] is False
    # back without --name: the same node, its history kept
    back = v.join("--cpus", "12", "--no-gpus")
    assert back.returncode == 0, said(back)
    assert "as vol-cpu" in said(back)
    view = wait_node(mesh, "vol-cpu", {"READY"})
    assert view["failures"] == 1  # a leave without a drain counts as a failure
    assert view["mtbf_h"] is not None  # and gives the node an MTBF the scheduler reads
    assert view["availability"] < 1
    assert v.leave().returncode == 0


def test_a_node_that_claims_a_gpu_it_lacks_is_suspect_and_gets_no_work(mesh: Mesh) -> None:
    # a volunteer that labelled its own `ray start` as a GPU machine it is not (not simulated)
    liar = mesh.cluster.add_node(
        num_cpus=2,
        num_gpus=1,
        object_store_memory=75 * 1024**2,
        labels={
            "mesh/node": "vol-liar",
            "mesh/gpu-model": "RTX-A6000",
            "mesh/gpu-memory-gb": "48",
            "mesh/compute-capability": "8.6",
        },
    )
    try:
        view = wait_node(mesh, "vol-liar", {"VERIFYING", "SUSPECT"})
        probe = mesh.wait_for("mesh/verify-vol-liar", {"SUCCEEDED"}, timeout=120)
        assert {b["node"] for b in probe["placement"]} == {"vol-liar"}
        view = wait_node(mesh, "vol-liar", {"SUSPECT"})
        assert view["why"] == "claims 1 x RTX-A6000; GPU 0: the probe found no CUDA device"
        assert not view["simulated"]
        audit = [r for r in mesh.audit() if r["kind"] == "node_trust" and r["node"] == "vol-liar"]
        assert [r["data"]["trust"] for r in audit] == ["VERIFYING", "SUSPECT"]

        r = mesh.submit(mesh.probe_doc("vol-wants-a6000", gpu_types=["RTX-A6000"]))
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the mesh has such a GPU, but does not trust it
            job = mesh.job("bio-ml/vol-wants-a6000")
            assert job["state"] == "QUEUED", job
            time.sleep(0.5)
        assert "not schedulable" in " ".join(job["waiting"] or []), job
        mesh.http.delete(f"{mesh.api}/jobs/bio-ml/vol-wants-a6000", headers=mesh.headers())
    finally:
        mesh.cluster.remove_node(liar)


def test_leave_drain_moves_a_finetune_to_another_volunteer_with_nothing_lost(
    mesh: Mesh, model: str, volunteers: list[Volunteer], tmp_path: Path
) -> None:
    machines = {"vol-v100-a": volunteers[0], "vol-v100-b": volunteers[1]}
    for name, v in machines.items():
        joined = v.join("--name", name, "--cpus", "2", "--simulate-gpus", "V100-32GB:1")
        assert joined.returncode == 0, said(joined)
        assert wait_node(mesh, name, {"SIMULATED"})["simulated"] is True

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text(rows(96))
    steps = 1500
    doc = finetune_doc("vol-drain-ft", steps=steps, every=10_000, gpus=1, gpu_types=["V100-32GB"])
    doc["finetune"]["base_model"] = model
    r = meshctl("submit", write_job(tmp_path, doc), "--api", mesh.api, "--token", mesh.admin_token)
    assert r.returncode == 0, said(r)
    job = mesh.wait_for("bio-ml/vol-drain-ft", {"RUNNING"}, timeout=60)
    first = job["placement"][0]["node"]
    [other] = set(machines) - {first}

    left = machines[first].leave("--drain")
    assert left.returncode == 0, said(left)
    assert "DRAINING" in said(left)
    assert "Left" in said(left)

    job = mesh.wait_for("bio-ml/vol-drain-ft", {"SUCCEEDED"}, timeout=240)
    preempted = [t for t in job["transitions"] if t["to"] == "PREEMPTED"]
    assert len(preempted) == 1, job["transitions"]
    reason = preempted[0]["reason"]
    assert reason.startswith(f"node {first} drains; checkpointed at step "), reason
    step = int(reason.rsplit(" ", 1)[-1])
    assert 0 < step < steps
    report = job["report"]["bundles"][0]
    assert report["node"] == other
    assert report["resumed_from_step"] == step  # not one step of the work lost
    assert [s for s, _ in report["losses"]] == list(range(1, steps + 1))
    assert job["retries_used"] == 0
    gone = wait_node(mesh, first, {"DOWN"})
    assert gone["failures"] == 0  # a drained leave is no failure
    kinds = [r["kind"] for r in mesh.audit() if r["node"] == first]
    assert kinds[-3:] == ["node_drain", "node_drained", "node_leave"], kinds


def test_leave_drain_moves_a_service_replica_with_no_failed_request(
    mesh: Mesh, model: str, volunteers: list[Volunteer], tmp_path: Path
) -> None:
    """One replica, so a move that stopped it before its replacement served would fail requests
    (503) for the engine's whole start: the old copy serves until the new one does."""
    machines = {"vol-a4000-a": volunteers[0], "vol-a4000-b": volunteers[1]}
    for name, v in machines.items():
        joined = v.join("--name", name, "--cpus", "2", "--simulate-gpus", "RTX-A4000:1")
        assert joined.returncode == 0, said(joined)
        wait_node(mesh, name, {"SIMULATED"})
    doc = service_doc()
    doc["name"] = "vol-chat"
    doc["resources"]["gpu_types"] = ["RTX-A4000"]  # type: ignore[index]
    doc["service"] = {
        "model": model,
        "access": "public",
        "replicas": {"min": 1},
        "max_model_len": 128,
    }
    job_id = "bio-ml/vol-chat"
    r = meshctl(
        "submit",
        write_job(tmp_path, doc),
        "--api",
        mesh.api,
        "--token",
        mesh.admin_token,
        timeout=300,
    )
    assert r.returncode == 0, said(r)
    try:
        [before] = replicas(mesh, job_id)
        first = str(before["node"])
        [other] = set(machines) - {first}
        url = mesh.api.rsplit("/api/v1", 1)[0] + "/v1/chat/completions"
        member = {"Authorization": f"Bearer {member_token(mesh, 'bio-ml')}"}
        stop = threading.Event()
        codes: list[tuple[int, str]] = []

        def user(k: int) -> None:  # no client retries: the mesh alone keeps requests whole
            chat_until(stop, url, member, job_id, k, codes)

        users = [threading.Thread(target=user, args=(k,)) for k in range(4)]
        for u in users:
            u.start()
        try:
            time.sleep(3.0)
            left = machines[first].leave("--drain")
            assert left.returncode == 0, said(left)
            time.sleep(3.0)  # and requests go on to the moved replica
        finally:
            stop.set()
            for u in users:
                u.join()
        failed = [c for c in codes if c[0] != 200]
        print(f"service drain: {len(codes) - len(failed)}/{len(codes)} requests ok")
        assert len(codes) >= 50
        assert not failed, failed[:5]
        [after] = replicas(mesh, job_id)
        assert after["node"] == other
        assert after["state"] == "serving"
        lines = [
            x["line"]
            for x in mesh.http.get(f"{mesh.api}/jobs/{job_id}/logs", headers=mesh.headers()).json()[
                "lines"
            ]
        ]
        assert f"replica 0: node {first} drains; starting it elsewhere first" in lines
        assert f"replica 0: its copy on {first} stopped" in lines
        assert wait_node(mesh, first, {"DOWN"})["failures"] == 0
    finally:
        mesh.http.delete(f"{mesh.api}/jobs/{job_id}", headers=mesh.headers())
