"""One local multi-node Ray cluster with declared GPUs per test session, with the mesh on it.

Nodes are those of tests/integration/cluster.yaml, labelled as `meshctl up --nodes` labels them
(simulated GPUs: Ray accounts for them, the work runs on the CPU). Fast health checks, so that a
killed node is noticed in about a second; the controller loop runs every half second.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The session's cluster runs with token authentication, as a mesh does (DESIGN.md "Finding the
# API"); the token reaches Ray in the environment, never in ~/.ray/auth_token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

import httpx
import pytest
from ray.cluster_utils import Cluster

from cluster.nodes import declared_node_args, local_mesh
from scheduler.cluster import Node, load_cluster

CLUSTER_FILE = Path(__file__).with_name("cluster.yaml")
FAST = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 200,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


@dataclasses.dataclass
class Mesh:
    api: str
    admin_token: str
    home: Path
    cluster: Cluster
    http: httpx.Client

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    def add_node(self, node: Node) -> Any:
        """Start one more Ray node with declared GPUs (a volunteer joining)."""
        handle = self.cluster.add_node(**declared_node_args(node))
        self.cluster.wait_for_nodes()
        return handle

    def probe_doc(
        self,
        name: str,
        community: str = "bio-ml",
        gpus: int = 1,
        duration_s: float = 1.0,
        **resources: Any,
    ) -> dict[str, Any]:
        return {
            "apiVersion": "mesh/v1",
            "kind": "Probe",
            "name": name,
            "community": community,
            "resources": {"gpus": gpus, **resources},
            "probe": {"duration_s": duration_s, "matmul_size": 256},
        }

    def submit(self, doc: dict[str, Any], token: str | None = None) -> httpx.Response:
        return self.http.post(f"{self.api}/jobs", json=doc, headers=self.headers(token))

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's view; waits out a controller restart (503 with Retry-After)."""
        deadline = time.monotonic() + 60
        r = self.http.get(f"{self.api}/jobs/{job_id}", headers=self.headers())
        while r.status_code == 503 and time.monotonic() < deadline:
            time.sleep(float(r.headers.get("Retry-After", "1")) / 4)
            r = self.http.get(f"{self.api}/jobs/{job_id}", headers=self.headers())
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def wait_for(self, job_id: str, states: set[str], timeout: float = 90.0) -> dict[str, Any]:
        """Poll a job until it is in one of `states`; fail with its last view otherwise."""
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["state"] not in states:
            if time.monotonic() > deadline or (job["state"] in TERMINAL - states):
                pytest.fail(f"{job_id} is {job['state']}, not {sorted(states)}: {job}")
            time.sleep(0.2)
            job = self.job(job_id)
        return job

    def audit(self, job: str | None = None) -> list[dict[str, Any]]:
        params = {"job": job} if job else {}
        r = self.http.get(f"{self.api}/audit", params=params, headers=self.headers())
        r.raise_for_status()
        records: list[dict[str, Any]] = r.json()["records"]
        return records


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("mesh-home")
    token = "test-admin-token"
    with (
        local_mesh(
            Node("head", cpus=2, memory_gb=4),
            load_cluster(CLUSTER_FILE).nodes,
            home=home,
            admin_token=token,
            settings={
                "loop_interval_s": 0.5,
                "placement_timeout_s": 20,
                "log_interval_s": 0.5,
                "serve_rate_per_minute": 60,  # test_serving reaches the limit in one test
                "serve_burst": 10,
                "serve_upscale_delay_s": 2,  # test_serving_chaos scales a Service up and down
                "serve_downscale_delay_s": 5,
            },
            system_config=FAST,
        ) as (cluster, api),
        httpx.Client(timeout=30) as http,
    ):
        yield Mesh(api=api, admin_token=token, home=home, cluster=cluster, http=http)
