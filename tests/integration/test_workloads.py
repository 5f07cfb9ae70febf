"""FineTune and BatchInference on the session's mesh: real peft training, real engines, real Ray.

The base model is a tiny random Llama built here and registered through the HTTP API like any
imported model; datasets and prompt files are uploaded by `meshctl submit`. Simulated GPU nodes
account for the GPUs; the work runs on the CPU. Every job here is named wl-... so that it meets
no job of another test module; the nodes added here have GPU models no other test uses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scheduler import transfer
from scheduler.audit import verify_chain
from scheduler.cli import app
from scheduler.cluster import Gpu, Node
from tests.integration.conftest import Mesh
from tests.tiny_llama import build_tiny_llama

pytestmark = pytest.mark.integration

BASE = "bio-ml/tiny-llama"
SLOW_BASE = "bio-ml/slow-llama"
runner = CliRunner()


def meshctl(mesh: Mesh, *args: str | Path) -> str:
    argv = [str(a) for a in args] + ["--api", mesh.api, "--token", mesh.admin_token]
    result = runner.invoke(app, argv, env={"COLUMNS": "200", "MESH_API": None, "MESH_TOKEN": None})
    assert result.exit_code == 0, result.output
    return result.output


def register(mesh: Mesh, folder: Path, name: str, **kw: Any) -> dict[str, Any]:
    headers = mesh.headers()
    digest = transfer.upload_tree(mesh.http, mesh.api, headers, folder, "bio-ml", None)
    body = {"name": name, "sha256": digest, "kind": "base", **kw}
    r = mesh.http.post(f"{mesh.api}/models", json=body, headers=headers)
    assert r.status_code == 201, r.text
    model: dict[str, Any] = r.json()
    return model


@pytest.fixture(scope="module")
def models(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base model (fast) and a bigger one (slow enough to interrupt), registered."""
    root = tmp_path_factory.mktemp("models")
    tiny = build_tiny_llama(root / "tiny")
    slow = build_tiny_llama(root / "slow", hidden=512, layers=6, positions=512)
    register(mesh, tiny, BASE, source="tests")
    register(mesh, slow, SLOW_BASE, source="tests")
    return {"tiny": tiny, "slow": slow}


def rows(n: int) -> str:
    sentences = [
        "habari ya asubuhi rafiki yangu",
        "allinllachu kachkanki wawqiy",
        "the quick brown fox jumps over the lazy dog",
    ]
    return "".join(json.dumps({"text": sentences[i % 3]}) + "\n" for i in range(n))


def write_job(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def finetune_doc(name: str, steps: int, every: int | str, **resources: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mesh/v1",
        "kind": "FineTune",
        "name": name,
        "community": "bio-ml",
        "max_retries": 0,
        "resources": {"cpus": 1, "memory_gb": 2, **resources},
        "finetune": {
            "base_model": BASE,
            "datasets": [{"path": "data/rows.jsonl"}],
            "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
            "training": {
                "max_steps": steps,
                "batch_size": 4,
                "learning_rate": 0.01,
                "lr_scheduler": "constant",
                "seq_len": 64,
            },
            "checkpoint_every": every,
        },
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text(rows(96))
    return tmp_path


def losses(job: dict[str, Any]) -> list[list[float]]:
    found: list[list[float]] = job["report"]["bundles"][0]["losses"]
    return found


def test_a_two_worker_finetune_learns_and_registers_its_adapter(
    mesh: Mesh, models: dict[str, Path], workdir: Path
) -> None:
    doc = finetune_doc("wl-ft", steps=40, every=10, gpus=2, gpu_types=["A100-80GB"])
    out = meshctl(mesh, "submit", write_job(workdir, doc), "--wait")
    assert "uploaded data/rows.jsonl" in out

    job = mesh.job("bio-ml/wl-ft")
    assert job["state"] == "SUCCEEDED", job
    curve = losses(job)
    assert [s for s, _ in curve] == list(range(1, 41))
    first = sum(v for _, v in curve[:5]) / 5
    last = sum(v for _, v in curve[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    bundles = job["report"]["bundles"]
    assert len(bundles) == 2
    assert {b["steps"] for b in bundles} == {40}

    model = mesh.http.get(f"{mesh.api}/models/bio-ml/wl-ft", headers=mesh.headers()).json()
    assert model["kind"] == "adapter"
    assert model["base"] == BASE
    p = model["provenance"]
    dataset_sha = job["inputs"]["datasets"][0]["sha256"]
    assert p["datasets"][0]["sha256"] == dataset_sha
    assert p["base_model"]["sha256"] == job["inputs"]["base_model"]["sha256"]
    assert p["final_loss"] == pytest.approx(curve[-1][1], abs=1e-5)
    assert p["gpu_seconds"] > 0
    assert p["lora"]["r"] == 8
    assert {n["node"] for n in p["nodes"]} == {"lab-a100"}
    assert p["nodes"][0]["gpu_model"] == "A100-80GB"
    records = mesh.audit("bio-ml/wl-ft")
    [registered] = [r for r in records if r["kind"] == "model_register"]
    assert registered["data"]["sha256"] == model["sha256"]
    assert verify_chain(mesh.audit()) is None

    pulled = workdir / "adapter"
    meshctl(mesh, "results", "bio-ml/wl-ft", "-o", pulled)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models["tiny"])
    tuned = PeftModel.from_pretrained(base, pulled / "adapter")
    assert any("lora_" in n for n, _ in tuned.named_parameters())


@contextmanager
def extra_nodes(mesh: Mesh, gpu: Gpu, *names: str) -> Iterator[dict[str, Any]]:
    """Volunteers with one `gpu` each, that only the tests here ask for; gone afterwards."""
    handles = {name: mesh.add_node(Node(name, cpus=2, memory_gb=8, gpus=(gpu,))) for name in names}
    deadline = time.monotonic() + 30
    while True:  # until the controller has seen them (a job submitted before would not fit)
        r = mesh.http.get(f"{mesh.api}/nodes", headers=mesh.headers())
        seen = (
            {n["name"] for n in r.json()["nodes"] if n["alive"]} if r.status_code == 200 else set()
        )
        if set(names) <= seen:
            break
        assert time.monotonic() < deadline, f"the mesh did not see {names} join: {seen}"
        time.sleep(0.2)
    try:
        yield handles
    finally:
        for handle in handles.values():
            try:
                mesh.cluster.remove_node(handle)
            except Exception:  # already killed by the test
                pass


@pytest.fixture
def volunteers(mesh: Mesh) -> Iterator[dict[str, Any]]:
    with extra_nodes(mesh, Gpu(0, "L4", 24.0, (8, 9)), "vol-a", "vol-b", "vol-c") as handles:
        yield handles


def test_a_finetune_whose_node_is_killed_resumes_from_its_checkpoint(
    mesh: Mesh, models: dict[str, Path], workdir: Path, volunteers: dict[str, Any]
) -> None:
    every = 10
    doc = finetune_doc(
        "wl-resume", steps=240, every=every, gpus=2, gpu_types=["L4"], placement="spread"
    )
    meshctl(mesh, "submit", write_job(workdir, doc))
    job = mesh.wait_for("bio-ml/wl-resume", {"RUNNING"})
    deadline = time.monotonic() + 120
    while (job.get("progress") or {}).get("step", 0) < 3 * every:
        assert time.monotonic() < deadline, job
        assert job["state"] == "RUNNING", job
        time.sleep(0.2)
        job = mesh.job("bio-ml/wl-resume")
    seen = job["progress"]["step"]
    victim = job["placement"][0]["node"]  # bundle 0: the worker that writes checkpoints
    mesh.cluster.remove_node(volunteers.pop(victim), allow_graceful=False)

    job = mesh.wait_for("bio-ml/wl-resume", {"SUCCEEDED"}, timeout=240)
    states = [t["to"] for t in job["transitions"]]
    assert "INTERRUPTED" in states
    assert job["retries_used"] == 0
    assert victim not in {b["node"] for b in job["placement"]}
    resumed = job["report"]["bundles"][0]["resumed_from_step"]
    assert resumed is not None
    assert resumed > 0
    assert resumed >= seen - every, (resumed, seen)  # at most one interval of work lost
    curve = losses(job)
    assert [s for s, _ in curve] == list(range(1, 241))  # the loss curve continues
    logs = mesh.http.get(f"{mesh.api}/jobs/bio-ml/wl-resume/logs", headers=mesh.headers()).json()[
        "lines"
    ]
    assert any(f"resuming from the checkpoint at step {resumed}" in x["line"] for x in logs)


def test_a_malformed_dataset_line_fails_the_job_before_training(
    mesh: Mesh, models: dict[str, Path], workdir: Path
) -> None:
    bad = rows(5) + '{"text": 42}\n'
    (workdir / "data" / "rows.jsonl").write_text(bad)
    doc = finetune_doc("wl-bad-data", steps=5, every=5, gpus=1, gpu_types=["A100-80GB"])
    meshctl(mesh, "submit", write_job(workdir, doc))
    job = mesh.wait_for("bio-ml/wl-bad-data", {"FAILED"}, timeout=120)
    assert "rows.jsonl:6" in job["reason"], job["reason"]
    logs = mesh.http.get(f"{mesh.api}/jobs/bio-ml/wl-bad-data/logs", headers=mesh.headers()).json()[
        "lines"
    ]
    assert not any(x["line"].startswith("step ") for x in logs)


def test_a_missing_model_or_adapter_is_refused_at_submission(
    mesh: Mesh, models: dict[str, Path], workdir: Path
) -> None:
    doc = finetune_doc("wl-no-model", steps=5, every=5, gpus=1)
    doc["finetune"]["base_model"] = "bio-ml/tiny-lama"
    r = mesh.http.post(
        f"{mesh.api}/jobs",
        json={"job": doc, "files": {"data/rows.jsonl": {"sha256": "0" * 64, "tree": False}}},
        headers=mesh.headers(),
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "model_not_found"
    assert "bio-ml/tiny-llama" in r.json()["error"]["hint"]  # the close match

    batch = batch_doc("wl-no-adapter", "vllm", gpus=1)
    batch["batch"]["adapter"] = "bio-ml/never-trained"
    r = mesh.http.post(f"{mesh.api}/jobs", json={"job": batch, "files": {}}, headers=mesh.headers())
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "model_not_found"
    assert "batch.adapter" in r.json()["error"]["message"]
    doc["finetune"]["base_model"] = BASE
    r = mesh.submit(doc)  # a local path that was never uploaded
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "not_uploaded"
    assert (
        mesh.http.get(f"{mesh.api}/jobs/bio-ml/wl-no-model", headers=mesh.headers()).status_code
        == 404
    )


def prompts(n: int) -> str:
    lines = []
    for i in range(n):
        if i % 2:
            row: dict[str, Any] = {
                "id": f"q{i}",
                "messages": [{"role": "user", "content": "habari"}],
            }
        else:
            row = {"id": i, "prompt": "the quick brown fox"}
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def batch_doc(name: str, engine: str, *, model: str = BASE, **resources: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mesh/v1",
        "kind": "BatchInference",
        "name": name,
        "community": "bio-ml",
        "max_retries": 0,
        "resources": {"cpus": 1, "memory_gb": 2, **resources},
        "batch": {
            "model": model,
            "input": "prompts.jsonl",
            "engine": engine,
            "max_model_len": 128,
            "sampling": {"temperature": 0, "max_tokens": 16},
        },
    }


def results_of(mesh: Mesh, job_id: str, folder: Path) -> list[dict[str, Any]]:
    meshctl(mesh, "results", job_id, "-o", folder)
    text = (folder / "results.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_batch_inference_with_each_engine_answers_every_id_in_order(
    mesh: Mesh, models: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "prompts.jsonl").write_text(prompts(20))
    expected = [i if i % 2 == 0 else f"q{i}" for i in range(20)]
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(models["tiny"]),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    meshctl(
        mesh,
        "models",
        "import",
        tmp_path / "adapter",
        "--name",
        "bio-ml/wl-adapter",
        "--adapter-of",
        BASE,
    )

    hf = batch_doc("wl-batch-hf", "transformers", gpus=2, gpu_types=["RTX-4090"])
    meshctl(mesh, "submit", write_job(tmp_path, hf), "--wait")
    got = results_of(mesh, "bio-ml/wl-batch-hf", tmp_path / "hf")
    assert [r["id"] for r in got] == expected
    assert all(isinstance(r["text"], str) and r["completion_tokens"] > 0 for r in got)
    job = mesh.job("bio-ml/wl-batch-hf")
    assert len(job["report"]["bundles"]) == 2
    assert sum(b["rows"] for b in job["report"]["bundles"]) == 20

    vllm = batch_doc(
        "wl-batch-vllm", "vllm", gpus=1, gpu_types=["RTX-3060"], exclusive=False, gpu_memory_gb=6
    )
    vllm["batch"]["adapter"] = "bio-ml/wl-adapter"
    meshctl(mesh, "submit", write_job(tmp_path, vllm), "--wait")
    got = results_of(mesh, "bio-ml/wl-batch-vllm", tmp_path / "vllm")
    assert [r["id"] for r in got] == expected
    job = mesh.job("bio-ml/wl-batch-vllm")
    assert job["inputs"]["adapter"]["name"] == "bio-ml/wl-adapter"
    assert job["placement"][0]["gpu_fraction"] == pytest.approx(0.5)


@pytest.fixture
def slow_nodes(mesh: Mesh) -> Iterator[dict[str, Any]]:
    with extra_nodes(mesh, Gpu(0, "T4", 16.0, (7, 5)), "slow-a", "slow-b") as handles:
        yield handles


def test_an_interrupted_batch_does_not_redo_finished_shards(
    mesh: Mesh, models: dict[str, Path], tmp_path: Path, slow_nodes: dict[str, Any]
) -> None:
    (tmp_path / "prompts.jsonl").write_text(prompts(64))
    doc = batch_doc("wl-batch-cut", "transformers", model=SLOW_BASE, gpus=1, gpu_types=["T4"])
    doc["batch"]["sampling"]["max_tokens"] = 200
    doc["batch"]["max_model_len"] = 512
    meshctl(mesh, "submit", write_job(tmp_path, doc))
    job = mesh.wait_for("bio-ml/wl-batch-cut", {"RUNNING"})
    url = f"{mesh.api}/jobs/bio-ml/wl-batch-cut/logs"
    deadline = time.monotonic() + 180
    while not any(
        "shard 0 done" in x["line"]
        for x in mesh.http.get(url, headers=mesh.headers()).json()["lines"]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    victim = job["placement"][0]["node"]
    mesh.cluster.remove_node(slow_nodes.pop(victim), allow_graceful=False)

    job = mesh.wait_for("bio-ml/wl-batch-cut", {"SUCCEEDED"}, timeout=240)
    assert "INTERRUPTED" in [t["to"] for t in job["transitions"]]
    [bundle] = job["report"]["bundles"]
    assert bundle["shards_skipped"] >= 1
    assert bundle["rows"] < 64  # the second placement generated only what was left
    got = results_of(mesh, "bio-ml/wl-batch-cut", tmp_path / "out")
    assert [r["id"] for r in got] == [i if i % 2 == 0 else f"q{i}" for i in range(64)]
