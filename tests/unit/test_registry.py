"""The model registry, artifact access and job inputs on real SQLite, and what submission checks.

`resolve_inputs` is given the artifact store's answer (which blobs it holds) as a plain callable:
the store itself is exercised in test_artifacts.py and on Ray in the integration tests.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from scheduler.audit import verify_chain
from scheduler.jobio import check_folder, may_read, resolve_inputs, upload_community
from scheduler.registry import PUBLIC
from scheduler.spec import parse_job
from scheduler.store import Principal, Store
from scheduler.views import ApiError

ADMIN = Principal("t0", "admin", None)
BIO = Principal("t1", "member", "bio-ml")
QUECHUA = Principal("t2", "member", "quechua-lm")
BASE_SHA, ADAPTER_SHA, DATA_SHA = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "mesh.db")


def register_base(store: Store, name: str = "bio-ml/tiny", sha: str = BASE_SHA) -> dict[str, Any]:
    return store.register_model(
        name=name,
        kind="base",
        sha256=sha,
        files=["f" * 64],
        base=None,
        provenance={"source": "tests"},
        now=10.0,
        actor="admin:*:t0",
    )


def test_each_registration_is_a_new_version_and_an_audit_record(store: Store) -> None:
    first = register_base(store)
    second = register_base(store, sha="d" * 64)
    assert (first["version"], second["version"]) == (1, 2)
    latest = store.model("bio-ml/tiny")
    assert latest is not None
    assert latest["sha256"] == "d" * 64
    assert store.model("bio-ml/tiny", version=1)["sha256"] == BASE_SHA  # type: ignore[index]
    assert [m["version"] for m in store.models()] == [2]
    records = [r for r in store.audit() if r["kind"] == "model_register"]
    assert [r["data"]["version"] for r in records] == [1, 2]
    assert verify_chain(store.audit()) is None


def test_a_registered_models_files_are_public_and_uploads_stay_in_their_community(
    store: Store,
) -> None:
    register_base(store)
    assert store.readers("f" * 64) == {PUBLIC}
    assert may_read(store, QUECHUA, BASE_SHA)
    store.grant([DATA_SHA], "bio-ml", 11.0)
    assert may_read(store, BIO, DATA_SHA)
    assert may_read(store, ADMIN, DATA_SHA)
    assert not may_read(store, QUECHUA, DATA_SHA)
    assert upload_community(ADMIN, None) == "@admin"  # an admin's unnamed upload stays private
    with pytest.raises(ApiError, match="not quechua-lm"):
        upload_community(BIO, "quechua-lm")


def finetune(base_model: str, path: str = "data/rows.jsonl") -> Any:
    return parse_job(
        {
            "apiVersion": "mesh/v1",
            "kind": "FineTune",
            "name": "ft",
            "community": "bio-ml",
            "resources": {"gpus": 1},
            "finetune": {"base_model": base_model, "datasets": [{"path": path}]},
        },
        source="job.yaml",
    )


def nothing_missing(digests: Any) -> list[str]:
    return []


def test_inputs_are_pinned_to_the_registry_version_and_the_upload_hash(store: Store) -> None:
    register_base(store)
    store.grant([DATA_SHA], "bio-ml", 11.0)
    files = {"data/rows.jsonl": {"sha256": DATA_SHA, "tree": False}}
    inputs = resolve_inputs(store, BIO, finetune("bio-ml/tiny"), files, nothing_missing)
    assert inputs["base_model"]["sha256"] == BASE_SHA
    assert inputs["base_model"]["version"] == 1
    assert inputs["datasets"] == [
        {
            "ref": "data/rows.jsonl",
            "sha256": DATA_SHA,
            "tree": False,
            "label": "rows.jsonl",
            "format": "text",
        }
    ]


def test_submission_refuses_what_the_job_could_not_read(store: Store) -> None:
    register_base(store)
    files = {"data/rows.jsonl": {"sha256": DATA_SHA, "tree": False}}
    with pytest.raises(ApiError) as e:
        resolve_inputs(store, BIO, finetune("bio-ml/tiyn"), files, nothing_missing)
    assert e.value.code == "model_not_found"
    assert "bio-ml/tiny" in (e.value.hint or "")
    with pytest.raises(ApiError) as e:
        resolve_inputs(store, BIO, finetune("bio-ml/tiny"), {}, nothing_missing)
    assert e.value.code == "not_uploaded"
    store.grant([DATA_SHA], "quechua-lm", 11.0)  # another community's upload
    with pytest.raises(ApiError) as e:
        resolve_inputs(store, BIO, finetune("bio-ml/tiny"), files, nothing_missing)
    assert e.value.status == 403
    store.grant([DATA_SHA], "bio-ml", 11.0)
    with pytest.raises(ApiError) as e:
        resolve_inputs(store, BIO, finetune("bio-ml/tiny"), files, lambda d: list(d))
    assert e.value.code == "artifact_missing"


def test_a_model_folder_needs_its_files_and_no_pickles() -> None:
    def manifest(*paths: str) -> list[dict[str, Any]]:
        return [{"path": p, "sha256": "0" * 64, "size": 1} for p in paths]

    check_folder(manifest("config.json", "model.safetensors", "tokenizer.json"), "base")
    check_folder(manifest("adapter_config.json", "adapter_model.safetensors"), "adapter")
    with pytest.raises(ApiError) as e:
        check_folder(manifest("config.json", "model.safetensors", "pytorch_model.bin"), "base")
    assert e.value.code == "unsafe_weights"
    with pytest.raises(ApiError) as e:
        check_folder(manifest("config.json"), "base")
    assert "*.safetensors" in e.value.message


def test_a_database_from_before_the_registry_gains_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, community TEXT NOT NULL, name TEXT NOT NULL,"
        " kind TEXT NOT NULL, state TEXT NOT NULL, priority TEXT NOT NULL, gpus INTEGER NOT NULL,"
        " spec TEXT NOT NULL, run INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,"
        " retries_used INTEGER NOT NULL DEFAULT 0, max_retries INTEGER NOT NULL,"
        " submitted_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, reason TEXT,"
        " waiting TEXT, placement TEXT, report TEXT, gpu_seconds REAL NOT NULL DEFAULT 0)"
    )
    db.commit()
    db.close()
    store = Store(path)
    row = store.submit(
        job_id="bio-ml/p",
        community="bio-ml",
        name="p",
        kind="Probe",
        priority="normal",
        gpus=1,
        max_retries=0,
        spec={},
        now=1.0,
        actor="t",
        inputs={"x": 1},
    )
    assert row.inputs == {"x": 1}
    store.set_progress("bio-ml/p", {"step": 3})
    assert store.job("bio-ml/p").progress == {"step": 3}  # type: ignore[union-attr]
