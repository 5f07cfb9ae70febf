"""Services on the session's mesh: real vLLM (CPU) behind Ray Serve, called with the official
`openai` client through the mesh's /v1 front.

Two Services of the tiny random Llama start once for the module: `bio-ml/sv-open` (public, with
a LoRA adapter) and `bio-ml/sv-members` (members of bio-ml only). They run on two volunteers
with a GPU model no other test asks for; the GPUs are declared, the engines run on the CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import ray
import yaml

from cluster.labels import NODE
from scheduler.cluster import Gpu
from tests.integration.conftest import TERMINAL, Mesh
from tests.integration.test_workloads import extra_nodes, meshctl, register
from tests.tiny_llama import build_tiny_llama
from workloads.serving import APP_PREFIX

pytestmark = pytest.mark.integration

BASE = "bio-ml/sv-tiny"
OPEN = "bio-ml/sv-open"
MEMBERS = "bio-ml/sv-members"
HF = "bio-ml/sv-hf"
READY_TIMEOUT_S = 420.0
PROMPT = "habari ya asubuhi"


def service_doc(name: str, access: str, adapters: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "mesh/v1",
        "kind": "Service",
        "name": name,
        "community": "bio-ml",
        "resources": {
            "gpus": 1,
            "gpu_memory_gb": 4,
            "cpus": 1,
            "memory_gb": 4,
            "exclusive": False,
            "gpu_types": ["T4"],
        },
        "service": {
            "model": BASE,
            "adapters": adapters,
            "access": access,
            "max_model_len": 128,
            "sampling": {"temperature": 0, "max_tokens": 8},
        },
    }


def v1(mesh: Mesh) -> str:
    return mesh.api.rsplit("/api/v1", 1)[0] + "/v1"


def member_token(mesh: Mesh, community: str) -> str:
    r = mesh.http.post(f"{mesh.api}/tokens", json={"community": community}, headers=mesh.headers())
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def wait_served(mesh: Mesh, model: str, token: str) -> None:
    """Until GET /v1/models lists `model` with a replica that serves."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        r = mesh.http.get(f"{v1(mesh)}/models", headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 200:
            cards = {c["id"]: c for c in r.json()["data"]}
            if cards.get(model, {}).get("metadata", {}).get("replicas"):
                return
        job = mesh.job(model)
        if time.monotonic() > deadline or job["state"] in TERMINAL:
            pytest.fail(f"{model} did not serve in {READY_TIMEOUT_S:g} s: {job}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def services(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Both Services serving; {"member": a bio-ml token, "other": a quechua-lm token}."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("serving")
    tiny = build_tiny_llama(folder / "tiny")
    register(mesh, tiny, BASE, source="tests")
    torch.manual_seed(3)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny),
        LoraConfig(
            r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    peft_model.save_pretrained(str(folder / "adapter"))
    meshctl(
        mesh,
        "models",
        "import",
        folder / "adapter",
        "--name",
        "bio-ml/sv-swahili",
        "--adapter-of",
        BASE,
    )
    with extra_nodes(mesh, Gpu(0, "T4", 16.0, (7, 5)), "sv-a", "sv-b"):
        hf_doc = service_doc("sv-hf", "community", ["bio-ml/sv-swahili"])
        hf_doc["service"]["engine"] = "transformers"
        jobs = folder / "services.yaml"
        jobs.write_text(
            yaml.safe_dump(service_doc("sv-open", "public", ["bio-ml/sv-swahili"]))
            + "---\n"
            + yaml.safe_dump(service_doc("sv-members", "community", []))
            + "---\n"
            + yaml.safe_dump(hf_doc)
        )
        said = meshctl(mesh, "submit", jobs)  # returns once both answer
        assert f"{OPEN} serves: 1 of 1 replicas serve (sv-" in said
        assert f"{MEMBERS} serves" in said
        listed = meshctl(mesh, "models", "list")
        assert OPEN in listed
        assert "public" in listed
        tokens = {
            "member": member_token(mesh, "bio-ml"),
            "other": member_token(mesh, "quechua-lm"),
        }
        wait_served(mesh, OPEN, tokens["member"])
        wait_served(mesh, MEMBERS, tokens["member"])
        try:
            yield tokens
        finally:
            for job in (OPEN, MEMBERS, HF):
                mesh.http.delete(f"{mesh.api}/jobs/{job}", headers=mesh.headers())


def client(mesh: Mesh, token: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=v1(mesh), api_key=token or "none", max_retries=0, timeout=120)


def streamed_chat(c: openai.OpenAI, model: str) -> list[str]:
    """The text pieces of a streamed greedy chat answer, chunk by chunk."""
    stream = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    return [ch.choices[0].delta.content or "" for ch in stream if ch.choices]


def test_the_openai_client_lists_completes_chats_and_streams(
    mesh: Mesh, services: dict[str, str]
) -> None:
    c = client(mesh, services["member"])
    ids = {m.id for m in c.models.list()}
    assert {OPEN, f"{OPEN}:sv-swahili", MEMBERS} <= ids

    done = c.completions.create(model=OPEN, prompt=PROMPT, max_tokens=8, temperature=0)
    assert done.choices[0].text
    assert done.usage is not None
    assert done.usage.completion_tokens == 8

    chat = c.chat.completions.create(
        model=OPEN, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0
    )
    said = chat.choices[0].message.content
    assert said
    assert chat.choices[0].finish_reason == "length"

    pieces = streamed_chat(c, OPEN)
    assert len([p for p in pieces if p]) > 1  # more than one chunk carried text
    assert "".join(pieces) == said  # greedy: the stream says what the whole answer said

    default = c.completions.create(model=OPEN, prompt=PROMPT)  # the Service's sampling
    assert default.usage is not None
    assert default.usage.completion_tokens <= 8  # its max_tokens: 8
    assert default.choices[0].text == done.choices[0].text[: len(default.choices[0].text)]

    tuned = c.completions.create(
        model=f"{OPEN}:sv-swahili", prompt=PROMPT, max_tokens=8, temperature=0
    )
    assert tuned.choices[0].text != done.choices[0].text  # the adapter changes the answer
    again = c.completions.create(model=OPEN, prompt=PROMPT, max_tokens=8, temperature=0)
    assert again.choices[0].text == done.choices[0].text  # and leaves the base model as it was


def test_each_replica_runs_where_the_plan_put_it_and_holds_its_gpu_share(
    mesh: Mesh, services: dict[str, str]
) -> None:
    labels = {n["NodeID"]: n["Labels"].get(NODE) for n in ray.nodes() if n["Alive"]}
    groups = list(ray.util.placement_group_table().values())
    for job_id in (OPEN, MEMBERS):
        job = mesh.job(job_id)
        assert job["state"] == "RUNNING"
        [planned] = job["placement"]
        assert planned["gpu_fraction"] == pytest.approx(0.25)  # 4 GB of a 16 GB T4
        app = f"{APP_PREFIX}{job_id.replace('/', '--')}."
        [group] = [
            g
            for g in groups
            if g["state"] == "CREATED" and g["name"].startswith("SERVE_REPLICA::" + app)
        ]
        assert [labels[n] for n in group["bundles_to_node_id"].values()] == [planned["node"]]
        assert group["bundles"][0]["GPU"] == pytest.approx(0.25)


def error_of(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()["error"]
    assert body["message"]
    return body


def test_access_unknown_models_and_bad_bodies_get_openai_errors(
    mesh: Mesh, services: dict[str, str]
) -> None:
    url = f"{v1(mesh)}/chat/completions"
    hello = [{"role": "user", "content": PROMPT}]

    def post(body: Any, token: str | None = services["member"]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return mesh.http.post(url, json=body, headers=headers)

    r = post({"model": MEMBERS, "messages": hello}, token=None)
    assert r.status_code == 401
    assert error_of(r)["type"] == "authentication_error"
    r = post({"model": MEMBERS, "messages": hello}, token=services["other"])
    assert r.status_code == 403
    assert "bio-ml" in error_of(r)["message"]
    r = post({"model": MEMBERS, "messages": hello}, token="mesh_not-a-token")
    assert r.status_code == 401
    assert error_of(r)["code"] == "invalid_token"
    r = post({"model": "bio-ml/no-such-model", "messages": hello})
    assert r.status_code == 404
    assert error_of(r)["code"] == "model_not_found"
    r = post({"model": f"{OPEN}:no-such-adapter", "messages": hello})
    assert r.status_code == 404
    assert "sv-swahili" in error_of(r)["message"]
    assert client(mesh, None).models.list().data  # anyone sees the public model
    assert MEMBERS not in {m.id for m in client(mesh, services["other"]).models.list()}

    for bad in (
        {"model": OPEN, "messages": "hello"},  # wrong type
        {"model": OPEN, "messages": hello, "max_tokens": "many"},
        {"model": OPEN, "messages": hello, "max_tokens": 10**9},  # more than the context
        {"model": OPEN, "messages": []},
        {"model": OPEN},
    ):
        r = post(bad)
        assert r.status_code == 400, (bad, r.status_code, r.text)
        error_of(r)
    r = mesh.http.post(
        url, content=b"{not json", headers={"Authorization": f"Bearer {services['member']}"}
    )
    assert r.status_code == 400
    ok = post({"model": OPEN, "messages": hello, "max_tokens": 4, "temperature": 0})
    assert ok.status_code == 200, ok.text  # and it still serves
    assert json.loads(ok.text)["choices"][0]["message"]["content"]


def test_callers_of_a_public_model_are_rate_limited_members_are_not(
    mesh: Mesh, services: dict[str, str]
) -> None:
    body = {"model": OPEN, "prompt": "a", "max_tokens": 1, "temperature": 0}
    url = f"{v1(mesh)}/completions"
    strangers = [mesh.http.post(url, json=body) for _ in range(25)]
    codes = [r.status_code for r in strangers]
    assert set(codes) == {200, 429}, codes
    limited = strangers[codes.index(429)]
    assert int(limited.headers["Retry-After"]) >= 1
    assert error_of(limited)["type"] == "rate_limit_error"
    members = [
        mesh.http.post(url, json=body, headers={"Authorization": f"Bearer {services['member']}"})
        for _ in range(25)
    ]
    assert {r.status_code for r in members} == {200}


def test_the_transformers_engine_answers_as_vllm_does(mesh: Mesh, services: dict[str, str]) -> None:
    c = client(mesh, services["member"])
    ids = {m.id for m in c.models.list()}
    assert {HF, f"{HF}:sv-swahili"} <= ids
    for model in ("", ":sv-swahili"):
        ours = c.completions.create(model=HF + model, prompt=PROMPT, max_tokens=8, temperature=0)
        vllm = c.completions.create(model=OPEN + model, prompt=PROMPT, max_tokens=8, temperature=0)
        assert ours.choices[0].text == vllm.choices[0].text  # greedy, fp32: the same tokens
    base = c.completions.create(model=HF, prompt=PROMPT, max_tokens=8, temperature=0)
    tuned = c.completions.create(model=f"{HF}:sv-swahili", prompt=PROMPT, max_tokens=8)
    assert base.choices[0].text != tuned.choices[0].text  # the Service's default: greedy
    chat = c.chat.completions.create(
        model=HF, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0
    )
    pieces = streamed_chat(c, HF)
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == chat.choices[0].message.content
    r = mesh.http.post(
        f"{v1(mesh)}/completions",
        json={"model": HF, "prompt": PROMPT, "max_tokens": 10**6},
        headers={"Authorization": f"Bearer {services['member']}"},
    )
    assert r.status_code == 400
    assert "context" in error_of(r)["message"]
