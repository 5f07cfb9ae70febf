"""The mesh on a real local Ray cluster: submit over HTTP, placement by the policy, pinned groups."""

from __future__ import annotations

import time
from typing import Any

from tests.integration.conftest import Mesh

def test_a_probe_runs_where_the_plan_put_it(mesh: Mesh) -> None:
    r = mesh.submit(mesh.probe_doc("smoke", gpus=1, duration_s=1))
    assert r.status_code == 201, r.text
    job = mesh.wait_for("bio-ml/smoke", {"SUCCEEDED"})
    [placed] = job["placement"]
    [report] = job["report"]["bundles"]
    assert report["node"] == placed["node"]
    assert len(report["gpu_ids"]) == 1
