"""Start and stop the mesh services on a Ray cluster: the controller actor and the Serve API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from scheduler import actuator
from scheduler.controller import MeshController

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
) -> str:
    """Start (or find) the controller and the API on the connected Ray cluster; the API's URL.

    Blocks until the API answers GET /health.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    controller = start_controller(home, settings)
    ray.get(controller.ensure_admin.remote(admin_token))
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    from scheduler.api import api_app

    serve.run(api_app(), name=API_APP, route_prefix=API_PREFIX, blocking=False)
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
    """Delete the API app, shut Serve down and kill the controller (running jobs stay)."""
    try:
        serve.delete(API_APP)
    finally:
        serve.shutdown()
        try:
            ray.kill(actuator.controller(), no_restart=True)
        except ValueError:
            pass
