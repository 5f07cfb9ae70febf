"""The mesh on a real local Ray cluster: jobs submitted over HTTP are placed by our policy in
placement groups pinned to the chosen nodes, run, survive node loss and controller restarts,
and every step is in a verifiable audit log."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import pytest
import ray

from scheduler import actuator
from scheduler.audit import verify_chain
from scheduler.cluster import Gpu, Node
from tests.integration.conftest import Mesh

pytestmark = pytest.mark.integration

ENDS = {"succeed", "fail", "cancel", "preempt", "interrupt", "retry", "requeue"}


def held_intervals(records: list[dict[str, Any]]) -> list[tuple[float, float, str, int, float]]:
    """(start, end, node, gpu, fraction) for every GPU share any placement held, from the audit."""
    open_: dict[str, tuple[float, list[dict[str, Any]]]] = {}
    held = []
    for r in records:
        if r["kind"] == "place":
            open_[r["job"]] = (r["ts"], r["data"]["bundles"])
        elif r["kind"] in ENDS and r["job"] in open_:
            start, bundles = open_.pop(r["job"])
            for b in bundles:
                held += [(start, r["ts"], b["node"], g, b["gpu_fraction"]) for g in b["gpus"]]
    now = time.time() + 1
    for start, bundles in open_.values():
        for b in bundles:
            held += [(start, now, b["node"], g, b["gpu_fraction"]) for g in b["gpus"]]
    return held


def assert_never_overcommitted(records: list[dict[str, Any]]) -> None:
    events: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for start, end, node, gpu, fraction in held_intervals(records):
        events[(node, gpu)] += [(start, fraction), (end, -fraction)]
    for key, changes in events.items():
        load = 0.0
        for _, delta in sorted(changes, key=lambda e: (e[0], e[1])):  # releases first
            load += delta
            assert load <= 1.0 + 1e-6, f"GPU {key} held {load:.3f} at once"


def test_a_probe_runs_where_the_plan_put_it(mesh: Mesh) -> None:
    r = mesh.submit(mesh.probe_doc("smoke", gpus=1, duration_s=1))
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "QUEUED"
    job = mesh.wait_for("bio-ml/smoke", {"SUCCEEDED"})
    [placed] = job["placement"]
    [report] = job["report"]["bundles"]
    assert report["node"] == placed["node"]
    assert len(report["gpu_ids"]) == 1
    assert report["simulated"] is True
    assert report["tflops"] is None
    states = [t["to"] for t in job["transitions"]]
    assert states == ["QUEUED", "PLACED", "RUNNING", "SUCCEEDED"]
    logs = mesh.http.get(f"{mesh.api}/jobs/bio-ml/smoke/logs", headers=mesh.headers()).json()
    assert any("done" in line["line"] for line in logs["lines"])


def test_a_mixed_batch_runs_exactly_as_planned_and_never_overcommits(mesh: Mesh) -> None:
    a100: dict[str, Any] = {"gpu_types": ["A100-80GB"], "placement": "strict_pack"}
    batch = {
        "mix-pack": mesh.probe_doc("mix-pack", gpus=2, duration_s=5, **a100),
        "mix-share-1": mesh.probe_doc("mix-share-1", duration_s=4, gpu_memory_gb=8),
        "mix-share-2": mesh.probe_doc("mix-share-2", duration_s=4, gpu_memory_gb=8),
        "mix-spread": mesh.probe_doc("mix-spread", gpus=2, duration_s=4, placement="spread"),
        "mix-3060": mesh.probe_doc("mix-3060", duration_s=2, gpu_types=["RTX-3060"]),
        "mix-waits": mesh.probe_doc("mix-waits", gpus=2, duration_s=8, **a100),
    }
    for doc in batch.values():
        r = mesh.submit(doc)
        assert r.status_code == 201, r.text

    # The second strict_pack job on the two A100s waits for the first, and says why.
    waiting: list[str] = []
    deadline = time.monotonic() + 30
    while not waiting and time.monotonic() < deadline:
        job = mesh.job("bio-ml/mix-waits")
        if job["state"] == "QUEUED":
            waiting = job["waiting"]
        elif job["state"] != "QUEUED" and mesh.job("bio-ml/mix-pack")["state"] == "SUCCEEDED":
            break
        time.sleep(0.1)
    assert waiting, "mix-waits never showed why it waits"
    assert waiting[0] == (
        "needs 2 GPUs of type A100-80GB in one node (strict_pack): 1 node has no GPUs; "
        "2 nodes have other GPU models; 1 node has 0 free of 2"
    ), waiting

    for name in batch:
        job = mesh.wait_for(f"bio-ml/{name}", {"SUCCEEDED"})
        reports = job["report"]["bundles"]
        assert len(reports) == len(job["placement"])
        for planned, got in zip(job["placement"], reports, strict=True):
            assert got["node"] == planned["node"], (name, planned, got)
            assert len(got["gpu_ids"]) == len(planned["gpus"]), (name, planned, got)
            assert got["gpu_fraction"] == pytest.approx(
                planned["gpu_fraction"] * len(planned["gpus"])
            ), (name, planned, got)
    assert {b["node"] for b in mesh.job("bio-ml/mix-pack")["placement"]} == {"lab-a100"}
    shared = [
        b for n in ("mix-share-1", "mix-share-2") for b in mesh.job(f"bio-ml/{n}")["placement"]
    ]
    assert all(b["gpu_fraction"] < 1 for b in shared), shared
    assert_never_overcommitted(mesh.audit())


def test_a_job_on_a_node_that_vanishes_is_placed_again_elsewhere(mesh: Mesh) -> None:
    spares = {
        name: mesh.add_node(
            Node(name, cpus=2, memory_gb=8, gpus=(Gpu(0, "RTX-3090", 24.0, (8, 6)),))
        )
        for name in ("spare-a", "spare-b")
    }
    try:
        doc = mesh.probe_doc("survivor", duration_s=5, gpu_types=["RTX-3090"])
        assert mesh.submit(doc).status_code == 201
        job = mesh.wait_for("bio-ml/survivor", {"RUNNING"})
        [first] = job["placement"]
        mesh.cluster.remove_node(spares.pop(first["node"]), allow_graceful=False)

        job = mesh.wait_for("bio-ml/survivor", {"SUCCEEDED"}, timeout=120)
        [second] = job["placement"]
        assert second["node"] != first["node"]
        assert job["report"]["bundles"][0]["node"] == second["node"]
        assert job["retries_used"] == 0  # a lost node does not use up a retry
        states = [t["to"] for t in job["transitions"]]
        assert states[:5] == ["QUEUED", "PLACED", "RUNNING", "INTERRUPTED", "QUEUED"]
        assert states[-1] == "SUCCEEDED"

        records = mesh.audit()
        assert verify_chain(records) is None
        kinds = [r["kind"] for r in records if r["job"] == "bio-ml/survivor"]
        assert kinds.count("interrupt") == 1
        assert kinds.count("start") == 2
        assert any(r["kind"] == "node_leave" and r["node"] == first["node"] for r in records)
        nodes = mesh.http.get(f"{mesh.api}/nodes", headers=mesh.headers()).json()["nodes"]
        lost = next(n for n in nodes if n["name"] == first["node"])
        assert lost["alive"] is False
    finally:
        for handle in spares.values():
            mesh.cluster.remove_node(handle)


def test_a_controller_killed_mid_queue_loses_duplicates_and_restarts_nothing(mesh: Mesh) -> None:
    names = [f"steady-{i}" for i in range(7)]  # 7 one-GPU jobs on 5 GPUs: some must queue
    for name in names:
        assert mesh.submit(mesh.probe_doc(name, duration_s=6)).status_code == 201

    def working(name: str) -> bool:  # its workload has logged: the process is running
        r = mesh.http.get(f"{mesh.api}/jobs/bio-ml/{name}/logs", headers=mesh.headers())
        return bool(r.json()["lines"])

    deadline = time.monotonic() + 60
    while sum(working(n) for n in names) < 3:
        assert time.monotonic() < deadline, "the jobs never started"
        time.sleep(0.2)
    killed_at = time.time()
    ray.kill(actuator.controller(), no_restart=False)

    jobs = [mesh.wait_for(f"bio-ml/{n}", {"SUCCEEDED"}, timeout=120) for n in names]
    records = mesh.audit()
    assert verify_chain(records) is None
    for job in jobs:
        kinds = [r["kind"] for r in records if r["job"] == job["id"]]
        assert kinds.count("submit") == 1, (job["id"], kinds)
        assert kinds.count("place") == 1, (job["id"], kinds)
        assert kinds.count("start") == 1, (job["id"], kinds)
        assert kinds.count("succeed") == 1, (job["id"], kinds)
    # The jobs that ran through the restart kept their process: started before, ended after.
    survived = [j for j in jobs if j["report"]["bundles"][0]["started_at"] < killed_at]
    assert survived
    assert all(j["report"]["bundles"][0]["finished_at"] > killed_at for j in survived)


def test_cancelling_a_running_job_frees_its_placement_group(mesh: Mesh) -> None:
    assert mesh.submit(mesh.probe_doc("long", duration_s=60)).status_code == 201
    job = mesh.wait_for("bio-ml/long", {"RUNNING"})
    r = mesh.http.delete(f"{mesh.api}/jobs/bio-ml/long", headers=mesh.headers())
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "CANCELLED"
    group = actuator.group_name("bio-ml/long", job["run"], 1)
    assert group not in actuator.groups()
    again = mesh.http.delete(f"{mesh.api}/jobs/bio-ml/long", headers=mesh.headers())
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_finished"


def test_tokens_scope_what_a_member_sees(mesh: Mesh) -> None:
    http, api = mesh.http, mesh.api
    assert http.get(f"{api}/jobs").status_code == 401
    assert http.get(f"{api}/jobs", headers=mesh.headers("not-a-token")).status_code == 401
    made = http.post(
        f"{api}/tokens", json={"community": "quechua-lm"}, headers=mesh.headers()
    ).json()
    member = made["token"]
    assert http.get(f"{api}/tokens", headers=mesh.headers(member)).status_code == 403

    r = mesh.submit(mesh.probe_doc("not-mine", community="bio-ml"), token=member)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    assert (
        mesh.submit(mesh.probe_doc("mine", community="quechua-lm"), token=member).status_code == 201
    )
    listed = http.get(f"{api}/jobs", headers=mesh.headers(member)).json()["jobs"]
    assert {j["community"] for j in listed} == {"quechua-lm"}
    assert http.get(f"{api}/jobs/bio-ml/smoke", headers=mesh.headers(member)).status_code == 403
    assert http.get(f"{api}/audit", headers=mesh.headers(member)).status_code == 200

    assert http.delete(f"{api}/tokens/{made['id']}", headers=mesh.headers()).status_code == 200
    assert http.get(f"{api}/jobs", headers=mesh.headers(member)).status_code == 401
    tokens = http.get(f"{api}/tokens", headers=mesh.headers()).json()["tokens"]
    assert next(t for t in tokens if t["id"] == made["id"])["revoked"] is True
    mesh.wait_for("quechua-lm/mine", {"SUCCEEDED"})


def test_bad_input_gets_a_clear_error_and_stores_nothing(mesh: Mesh) -> None:
    http, api = mesh.http, mesh.api
    head = mesh.audit()[-1]["hash"]
    before = len(http.get(f"{api}/jobs", headers=mesh.headers()).json()["jobs"])
    yaml_typo = (
        "apiVersion: mesh/v1\nkind: Probe\nname: typo\ncommunity: bio-ml\nresources:\n  gpu: 1\n"
    )
    r = http.post(
        f"{api}/jobs",
        content=yaml_typo,
        headers={**mesh.headers(), "Content-Type": "application/yaml"},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_spec"
    assert "job: resources.gpu: unknown key; did you mean 'gpus'?" in error["message"]
    assert error["hint"]

    r = http.post(
        f"{api}/jobs",
        content="a: [1, 2",
        headers={**mesh.headers(), "Content-Type": "application/yaml"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_spec"

    r = http.post(
        f"{api}/jobs",
        content=b"x" * (1024 * 1024 + 1),
        headers={**mesh.headers(), "Content-Type": "application/yaml"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"

    r = mesh.submit(mesh.probe_doc("too-big", gpus=3, placement="strict_pack"))
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "unschedulable"
    assert "cannot run here even on an idle cluster" in r.json()["error"]["message"]

    finetune = {**mesh.probe_doc("ft"), "kind": "FineTune"}
    del finetune["probe"]
    r = mesh.submit(finetune)
    assert r.status_code in (400, 422)

    r = http.get(f"{api}/jobs/bio-ml/no-such-job", headers=mesh.headers())
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"

    assert len(http.get(f"{api}/jobs", headers=mesh.headers()).json()["jobs"]) == before
    assert mesh.audit()[-1]["hash"] == head


def test_a_workload_that_dies_uses_up_a_retry_and_runs_again(mesh: Mesh) -> None:
    doc = {**mesh.probe_doc("fragile", duration_s=4), "max_retries": 1}
    assert mesh.submit(doc).status_code == 201
    job = mesh.wait_for("bio-ml/fragile", {"RUNNING"})
    group = actuator.group_name("bio-ml/fragile", job["run"], 1)
    [worker] = actuator.find_workers(group, 1)
    assert worker is not None
    ray.kill(worker, no_restart=True)  # its node stays up: the job itself failed

    job = mesh.wait_for("bio-ml/fragile", {"SUCCEEDED"})
    assert job["retries_used"] == 1
    states = [t["to"] for t in job["transitions"]]
    assert states == ["QUEUED", "PLACED", "RUNNING", "QUEUED", "PLACED", "RUNNING", "SUCCEEDED"]
    retry = job["transitions"][3]["reason"]
    assert "failed" in retry
    assert retry.endswith("retry 1 of 1")
    kinds = [r["kind"] for r in mesh.audit(job="bio-ml/fragile")]
    assert kinds.count("retry") == 1
