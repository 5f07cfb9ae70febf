"""The store on real SQLite: the job lifecycle, tokens kept hashed, and an audit chain that
shows the first record anyone changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from scheduler.audit import GENESIS, canonical_json, record_hash, verify_chain
from scheduler.store import NEXT, InvalidTransition, State, Store, StoreError


def submit(store: Store, name: str = "probe-a", now: float = 100.0) -> str:
    job = store.submit(
        job_id=f"bio-ml/{name}",
        community="bio-ml",
        name=name,
        kind="Probe",
        priority="normal",
        gpus=1,
        max_retries=2,
        spec={"apiVersion": "mesh/v1", "kind": "Probe", "name": name, "community": "bio-ml"},
        now=now,
        actor="admin:*:t1",
    )
    return job.id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "mesh.db")


PLACEMENT = [{"node": "lab-a100", "gpus": [0], "gpu_fraction": 1.0}]


def test_every_state_decides_where_it_may_go() -> None:
    assert set(NEXT) == set(State)
    assert all(not NEXT[s] for s in State if s.terminal)


def test_a_job_goes_through_its_lifecycle_and_each_step_is_audited(store: Store) -> None:
    job = submit(store)
    store.transition(job, State.PLACED, "placed", 101, placement=PLACEMENT, attempt=1)
    assert store.open_allocations()[0]["node"] == "lab-a100"
    store.transition(job, State.RUNNING, "started", 102)
    row = store.transition(job, State.SUCCEEDED, "done", 110, report={"ok": 1}, gpu_seconds=8)
    assert row.state == State.SUCCEEDED
    assert row.report == {"ok": 1}
    assert row.gpu_seconds == 8
    assert store.open_allocations() == []
    kinds = [r["kind"] for r in store.audit(job=job)]
    assert kinds == ["submit", "place", "start", "succeed"]
    assert [t["to"] for t in store.transitions(job)] == ["QUEUED", "PLACED", "RUNNING", "SUCCEEDED"]
    assert store.verify_audit() is None


def test_a_transition_the_lifecycle_forbids_is_refused_and_changes_nothing(store: Store) -> None:
    job = submit(store)
    head = store.audit_head()
    with pytest.raises(InvalidTransition, match="QUEUED -> SUCCEEDED is not allowed"):
        store.transition(job, State.SUCCEEDED, "no", 101)
    assert store.job(job).state == State.QUEUED  # type: ignore[union-attr]
    assert store.audit_head() == head


def test_a_retry_counts_and_a_lost_node_does_not(store: Store) -> None:
    job = submit(store)
    store.transition(job, State.PLACED, "p", 101, placement=PLACEMENT, attempt=1)
    store.transition(job, State.INTERRUPTED, "node lost", 102)
    store.transition(job, State.QUEUED, "back", 102)
    assert store.job(job).retries_used == 0  # type: ignore[union-attr]
    store.transition(job, State.PLACED, "p", 103, placement=PLACEMENT, attempt=2)
    store.transition(job, State.RUNNING, "r", 104)
    store.transition(job, State.QUEUED, "failed; retry 1 of 2", 105, retry=True)
    row = store.job(job)
    assert row is not None
    assert row.retries_used == 1
    assert row.attempt == 2
    kinds = [r["kind"] for r in store.audit(job=job)]
    assert kinds == ["submit", "place", "interrupt", "requeue", "place", "start", "retry"]


def test_an_unfinished_job_cannot_be_submitted_twice_and_a_finished_one_runs_again(
    store: Store,
) -> None:
    job = submit(store)
    with pytest.raises(StoreError, match="already exists and is QUEUED") as e:
        submit(store)
    assert e.value.code == "job_exists"
    store.transition(job, State.CANCELLED, "cancelled", 101)
    again = store.job(submit(store, now=200))
    assert again is not None
    assert again.run == 2
    assert again.state == State.QUEUED
    assert [t["to"] for t in store.transitions(job)] == ["QUEUED"]  # this run's only


def test_tokens_are_stored_only_as_hashes_and_can_be_revoked(store: Store, tmp_path: Path) -> None:
    token = "mesh_secret-token-value"
    token_id = store.add_token(token, community="bio-ml", role="member", now=1, actor="admin")
    principal = store.authenticate(token)
    assert principal is not None
    assert principal.community == "bio-ml"
    assert principal.may_see("bio-ml")
    assert not principal.may_see("quechua-lm")
    assert token.encode() not in (tmp_path / "mesh.db").read_bytes()
    store.revoke_token(token_id, 2, "admin")
    assert store.authenticate(token) is None
    with pytest.raises(StoreError, match="no token nope"):
        store.revoke_token("nope", 3, "admin")


def test_nodes_keep_their_up_and_down_history(store: Store) -> None:
    labels = {"mesh/node": "home-3090"}
    args = {"ray_node_id": "n1", "labels": labels, "cpus": 8.0, "memory_gb": 32.0, "gpus": 1}
    store.node_up("home-3090", now=0, **args)  # type: ignore[arg-type]
    store.node_up("home-3090", now=50, **args)  # type: ignore[arg-type]
    assert store.node_down("home-3090", 60, "gone")
    assert not store.node_down("home-3090", 61, "gone again")
    store.node_up("home-3090", now=100, **args)  # type: ignore[arg-type]
    [node] = store.nodes(now=120)
    assert node["alive"] is True
    assert node["availability"] == pytest.approx(80 / 120)
    kinds = [r["kind"] for r in store.audit()]
    assert kinds == ["node_join", "node_leave", "node_join"]


def test_a_drained_leave_counts_as_time_away_but_not_as_a_failure(store: Store) -> None:
    args = {"ray_node_id": "n1", "labels": {}, "cpus": 8.0, "memory_gb": 32.0, "gpus": 1}
    store.node_up("lab", now=0, **args)  # type: ignore[arg-type]
    assert store.node_down("lab", 100, "Ray reports the node dead or gone")
    store.node_up("lab", now=200, **args)  # type: ignore[arg-type]
    assert store.set_node_drain("lab", 250, by="its volunteer", drained=False)
    assert store.set_node_drain("lab", 260, by=None, drained=True)
    [node] = store.nodes(now=300)
    assert (node["drain_since"], node["drain_by"], node["drained"]) == (250, "its volunteer", True)
    assert store.node_down("lab", 300, "left after a drain", event="leave")
    store.node_up("lab", now=400, **args)  # type: ignore[arg-type]
    [node] = store.nodes(now=400)
    assert node["failures"] == 1
    assert node["mtbf_h"] == pytest.approx(200 / 3600)  # 200 s up, one failure
    assert node["availability"] == pytest.approx(200 / 400)
    assert node["drain_since"] is None  # back after the leave: the drain is over
    assert not node["drained"]
    kinds = [r["kind"] for r in store.audit()]
    assert kinds == [
        "node_join",
        "node_leave",
        "node_join",
        "node_drain",
        "node_drained",
        "node_leave",
        "node_join",
    ]
    assert not store.set_node_drain("nowhere", 500, by="admin", drained=False)


def test_a_node_trust_verdict_is_kept_with_its_claim_and_audited_when_it_changes(
    store: Store,
) -> None:
    args = {"ray_node_id": "n1", "labels": {}, "cpus": 8.0, "memory_gb": 32.0, "gpus": 1}
    store.node_up("home-4090", now=0, **args)  # type: ignore[arg-type]
    claim = {"gpus": 1, "model": "RTX-4090", "memory_gb": 23.99, "compute_capability": "8.9"}
    store.set_node_trust("home-4090", "VERIFYING", "waiting for the probe", claim, 1)
    store.set_node_trust("home-4090", "VERIFYING", "waiting for the probe", claim, 2)  # no change
    store.set_node_trust("home-4090", "READY", "1 x RTX-4090 verified", claim, 3)
    [node] = store.nodes(now=4)
    assert (node["trust"], node["trust_reason"], node["claim"]) == (
        "READY",
        "1 x RTX-4090 verified",
        claim,
    )
    trust = [r for r in store.audit() if r["kind"] == "node_trust"]
    assert [(r["ts"], r["data"]["trust"]) for r in trust] == [(1, "VERIFYING"), (3, "READY")]


def test_logs_are_numbered_from_one_and_read_from_where_the_reader_left(store: Store) -> None:
    job = submit(store)
    store.append_logs(job, [(1.0, "a"), (2.0, "b")], cursors=[2])
    store.append_logs(job, [(3.0, "c")], cursors=[3])
    assert [r["line"] for r in store.logs(job, since=2)] == ["b", "c"]
    assert store.log_cursors(job, 2) == [3, 0]


def test_verification_finds_the_first_record_someone_changed(store: Store, tmp_path: Path) -> None:
    for i in range(5):
        submit(store, name=f"job-{i}", now=100 + i)
    assert store.verify_audit() is None
    db = sqlite3.connect(tmp_path / "mesh.db")
    db.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 3")
    db.commit()
    broken = store.verify_audit()
    assert broken is not None
    assert broken.seq == 3
    assert broken.reason == "record 3 was changed: its hash is not that of its contents"


def test_verification_notices_a_deleted_record(store: Store, tmp_path: Path) -> None:
    for i in range(4):
        submit(store, name=f"job-{i}", now=100 + i)
    db = sqlite3.connect(tmp_path / "mesh.db")
    db.execute("DELETE FROM audit WHERE seq = 2")
    db.commit()
    broken = store.verify_audit()
    assert broken is not None
    assert broken.seq == 3
    assert "records missing" in broken.reason


def test_a_record_hash_covers_its_fields_in_canonical_form() -> None:
    record = {
        "seq": 1,
        "ts": 1.5,
        "kind": "submit",
        "job": "c/n",
        "node": None,
        "actor": "a",
        "data": {"b": 1, "a": "é"},
        "prev": GENESIS,
    }
    assert canonical_json(record["data"]) == '{"a":"é","b":1}'
    record["hash"] = record_hash(record)
    assert verify_chain([record]) is None
    assert verify_chain([{**record, "data": {"a": "é", "b": 2}}]) is not None
