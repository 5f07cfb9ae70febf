"""`meshctl up` / `meshctl down` on this machine, through typer's CliRunner.

`up` spawns a supervisor that starts its own Ray cluster (the head plus the declared nodes of
tests/data/two-nodes.yaml) on ports of its own, beside the session cluster of the other
integration tests. Every test that may start one calls `down` in a finalizer, so that a failing
test leaves no process behind.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from cluster.local import MeshHome, MeshProcess, is_alive, recorded_processes, session_members
from scheduler.cli import app

pytestmark = pytest.mark.integration

TWO_NODES = Path(__file__).resolve().parents[1] / "data" / "two-nodes.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def meshctl(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A mesh home that is brought down after the test, whatever happened in it."""
    path = tmp_path / "mesh-home"
    yield path
    result = meshctl("down", "--home", str(path))
    assert result.exit_code == 0, result.output


def test_up_starts_a_simulated_mesh_that_down_stops_completely(home: Path) -> None:
    port = free_port()
    result = meshctl("up", "--nodes", str(TWO_NODES), "--home", str(home), "--port", str(port))
    assert result.exit_code == 0, result.output
    assert "Mesh up in" in result.output
    assert "simulated" in result.output
    for name in ("alice-4090", "inti-3060"):
        assert name in result.output

    config_file = home / "config.yaml"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    config = yaml.safe_load(config_file.read_text())
    assert config["api"] == f"http://127.0.0.1:{port}/api/v1"
    assert config["token"]
    assert config["token"] in result.output

    up = json.loads((home / "run" / "up.json").read_text())
    assert up["started_head"] is True
    assert up["nodes"] == ["alice-4090", "inti-3060"]
    assert up["pids"]
    assert all(is_alive(p) for p in up["pids"])
    # the cluster's Ray token is the mesh's, never ~/.ray/auth_token
    assert up["ray_token_file"] == str(home.resolve() / "ray_token")
    assert stat.S_IMODE((home / "ray_token").stat().st_mode) == 0o600
    assert not os.path.exists(Path.home() / ".ray" / "auth_token")

    r = httpx.get(
        f"{config['api']}/nodes",
        headers={"Authorization": f"Bearer {config['token']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    nodes = {n["name"]: n for n in r.json()["nodes"]}
    assert nodes["alice-4090"]["simulated"] is True
    assert [g["model"] for g in nodes["alice-4090"]["gpus"]] == ["RTX-4090", "RTX-4090"]
    assert nodes["inti-3060"]["simulated"] is True
    assert len(nodes) == 3  # and the head, this machine

    again = meshctl("up", "--home", str(home), "--port", str(port))
    assert again.exit_code == 0, again.output
    assert "already up" in again.output
    assert json.loads((home / "run" / "up.json").read_text())["pid"] == up["pid"]

    down = meshctl("down", "--home", str(home))
    assert down.exit_code == 0, down.output
    assert f"Supervisor (pid {up['pid']}) stopped" in down.output
    assert not (home / "run" / "up.json").exists()
    processes = recorded_processes(up)
    assert len(processes) == len(up["pids"])
    assert not [p for p in processes if is_alive(p.pid, p.start)]
    assert not is_alive(up["pid"], up["start"])
    # nor any worker or actor of the cluster (they were in the supervisor's session)
    assert session_members(MeshProcess(up["pid"], up["start"], "supervisor")) == []
    assert "No mesh is up" in meshctl("down", "--home", str(home)).output


def test_up_with_an_invalid_cluster_file_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - name: x\n    cpus: 1\n    memry_gb: 2\n")
    home = tmp_path / "mesh-home"
    result = meshctl("up", "--nodes", str(bad), "--home", str(home))
    assert result.exit_code == 2
    assert "memry_gb: unknown key; did you mean 'memory_gb'?" in result.output
    assert "Traceback" not in result.output
    assert not home.exists()


def test_up_refuses_nodes_together_with_address(tmp_path: Path) -> None:
    home = tmp_path / "mesh-home"
    result = meshctl(
        "up", "--nodes", str(TWO_NODES), "--address", "127.0.0.1:6379", "--home", str(home)
    )
    assert result.exit_code == 2
    assert "give one of them" in result.output
    assert not home.exists()


def test_down_without_a_mesh_says_so(tmp_path: Path) -> None:
    result = meshctl("down", "--home", str(tmp_path))
    assert result.exit_code == 0
    assert f"No mesh is up in {tmp_path.resolve()}" in result.output
    assert MeshHome(tmp_path).up_file.exists() is False
