"""Start and stop the mesh services on a Ray cluster: the controller actor and the Serve API."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from scheduler import actuator
from scheduler.controller import MeshController
from workloads.artifacts import start_artifact_store, store_actor

API_APP = "mesh-api"
API_PREFIX = "/api/v1"
READY_TIMEOUT_S = 120.0


def start_controller(home: Path, settings: dict[str, Any] | None = None) -> Any:
    """The controller: detached, named, pinned to the head (this driver's node), restarted."""
    return (
        ray.remote(MeshController)
        .options(
            name=actuator.CONTROLLER,
            namespace=actuator.NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=64,
            num_cpus=0,
            label_selector={"ray.io/node-id": actuator.head_node_id()},
        )
        .remote(str(home), settings)
    )


def start_services(
    *,
    home: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_token: str,
    settings: dict[str, Any] | None = None,
    artifacts: str | None = None,
) -> str:
    """Start (or find) the controller, the artifact store and the API on the connected Ray
    cluster; the API's URL.

    The artifact store keeps its blobs at `artifacts`, else $MESH_ARTIFACTS, else home/artifacts
    (a path on the head, or an fsspec URL such as s3://bucket/mesh). Blocks until the API
    answers GET /health.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    controller = start_controller(home, settings)
    ray.get(controller.ensure_admin.remote(admin_token))

    # the artifact store (workloads/artifacts.py): before the API, which streams through it
    start_artifact_store(artifacts or os.environ.get("MESH_ARTIFACTS") or str(home / "artifacts"))

    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    from scheduler.api import api_app

    serve.run(api_app(), name=API_APP, route_prefix=API_PREFIX, blocking=False)
    try:  # the OpenAI-compatible front of the Services (needs vLLM and ray.serve.llm)
        from workloads.serving_front import FRONT_APP, front_app
    except ImportError as e:
        print(f"mesh: /v1 is not served: {e} (install the cpu or gpu extra)", file=sys.stderr)
    else:
        serve.run(front_app(), name=FRONT_APP, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}{API_PREFIX}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the mesh API did not answer at {url} in {READY_TIMEOUT_S:g} s")
        time.sleep(0.25)


def stop_services() -> None:
    """Delete the API app, shut Serve down, kill the controller and the artifact store (running
    jobs stay, their artifact calls waiting for the next store; stored artifacts are kept)."""
    try:
        serve.delete(API_APP)
    finally:
        serve.shutdown()
        try:
            ray.kill(actuator.controller(), no_restart=True)
        except ValueError:
            pass
        try:
            ray.kill(store_actor(), no_restart=True)
        except ValueError:
            pass
