"""`meshctl join`, `leave` and `token join` up to the point where Ray starts (no Ray here)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.gpu_probe import GpuProbe, ProbedGpu
from cluster.join import (
    JoinError,
    head_address,
    node_name,
    plan_join,
    probed_gpus,
    read_token,
    simulated_gpus,
)
from cluster.local import MeshHome
from scheduler.cli import app

runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


def probed(*names: str, memory: float = 23.99) -> GpuProbe:
    from scheduler import gpus

    found = []
    for i, name in enumerate(names):
        model = gpus.find(name)
        found.append(
            ProbedGpu(
                i, name, memory, (8, 9), None, model.name if model else None, gpus.label_value(name)
            )
        )
    return GpuProbe(tuple(found), "550.54.15", "12.4", None)


@pytest.mark.parametrize(
    ("text", "address"),
    [("10.0.0.5", "10.0.0.5:6379"), ("10.0.0.5:6380", "10.0.0.5:6380"), (" head:1 ", "head:1")],
)
def test_a_head_address_gets_the_default_port(text: str, address: str) -> None:
    assert head_address(text) == address


@pytest.mark.parametrize(
    "text", ["ray://10.0.0.5:10001", "10.0.0.5:port", "10.0.0.5:70000", ":6379"]
)
def test_a_head_address_that_is_not_host_port_says_what_to_give(text: str) -> None:
    with pytest.raises(JoinError, match=r"HOST\[:PORT\]"):
        head_address(text)


def test_the_node_name_is_the_one_given_else_the_one_kept_else_the_host_name(
    tmp_path: Path,
) -> None:
    home = MeshHome(tmp_path)
    assert node_name(home, None) not in ("", None)
    (tmp_path / "node.json").write_text(json.dumps({"name": "alice-4090"}))
    assert node_name(home, None) == "alice-4090"
    assert node_name(home, "bob-3090") == "bob-3090"
    with pytest.raises(JoinError, match="not a DNS label"):
        node_name(home, "Bob's PC")


def test_probed_gpus_become_the_claim_and_a_machine_the_mesh_cannot_describe_is_refused() -> None:
    gpus = probed_gpus(probed("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"))
    assert [(g.index, g.model, g.memory_gb) for g in gpus] == [
        (0, "RTX-4090", 23.99),
        (1, "RTX-4090", 23.99),
    ]
    assert probed_gpus(GpuProbe((), None, None, "no NVIDIA library")) == ()
    with pytest.raises(JoinError, match="GPUs of 2 models .* --no-gpus"):
        probed_gpus(probed("NVIDIA GeForce RTX 4090", "Tesla T4"))
    with pytest.raises(JoinError, match="'NVIDIA Futura X1' is not in the catalogue"):
        probed_gpus(probed("NVIDIA Futura X1"))


def test_simulated_gpus_are_model_and_count() -> None:
    assert [g.model for g in simulated_gpus("4090:2")] == ["RTX-4090", "RTX-4090"]
    with pytest.raises(JoinError, match="MODEL:COUNT"):
        simulated_gpus("RTX-4090")
    with pytest.raises(JoinError, match="--simulate-gpus: .*GeForce-9999"):
        simulated_gpus("GeForce-9999:1")


def test_the_ray_start_command_carries_the_labels_and_resources(tmp_path: Path) -> None:
    plan = plan_join(
        "10.0.0.5:6379",
        name="alice-4090",
        token_file=tmp_path / "ray_token",
        owner="swahili-nlp",
        cpus=6,
        node_gpus=probed_gpus(probed("NVIDIA GeForce RTX 4090")),
    )
    assert plan.labels == {
        "mesh/node": "alice-4090",
        "mesh/gpu-model": "RTX-4090",
        "mesh/gpu-memory-gb": "23.99",
        "mesh/compute-capability": "8.9",
        "mesh/owner": "swahili-nlp",
    }
    assert plan.argv[1:] == [
        "start",
        "--address=10.0.0.5:6379",
        "--block",
        "--disable-usage-stats",
        "--num-cpus=6",
        "--num-gpus=1",
        "--labels=mesh/node=alice-4090,mesh/gpu-model=RTX-4090,mesh/gpu-memory-gb=23.99,"
        "mesh/compute-capability=8.9,mesh/owner=swahili-nlp",
    ]
    line = plan.shell_command()
    assert line.startswith(
        f'RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat {tmp_path}/ray_token)" ray start'
    )
    with pytest.raises(JoinError, match="--owner"):
        plan_join("h:1", name="a", token_file=tmp_path, owner="Swahili NLP")


def test_join_dry_run_prints_the_command_and_labels_and_starts_nothing(tmp_path: Path) -> None:
    code, said = run(
        "join",
        "10.0.0.5",
        "--name",
        "vol-1",
        "--simulate-gpus",
        "T4:2",
        "--cpus",
        "4",
        "--home",
        tmp_path,
        "--dry-run",
    )
    assert code == 0, said
    assert "Node vol-1: 2 x T4 (simulated)" in said
    assert "mesh/simulated=true" in said
    assert (
        f'RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat {tmp_path}/ray_token)" ray start'
        " --address=10.0.0.5:6379 --block --disable-usage-stats --num-cpus=4 --num-gpus=2"
        " --labels=mesh/node=vol-1,mesh/gpu-model=T4,mesh/gpu-memory-gb=16,"
        "mesh/compute-capability=7.5,mesh/simulated=true"
    ) in said
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "node.json").exists()


def test_join_on_this_machine_without_a_gpu_is_a_cpu_only_node(tmp_path: Path) -> None:
    code, said = run("join", "10.0.0.5", "--name", "cpu-box", "--home", tmp_path, "--dry-run")
    assert code == 0, said
    assert "Node cpu-box: no GPUs" in said
    assert "--num-gpus=0 --labels=mesh/node=cpu-box" in said


def test_join_without_the_token_says_where_to_get_it(tmp_path: Path) -> None:
    code, said = run("join", "10.0.0.5", "--name", "vol-1", "--no-gpus", "--home", tmp_path)
    assert code == 1, said
    assert f"no Ray cluster token at {tmp_path}/ray_token" in said
    assert "meshctl token join" in said
    assert not (tmp_path / "run" / "node.json").exists()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(JoinError, match="is empty"):
        read_token(tmp_path / "empty")


def test_bad_join_options_are_refused_before_anything_starts(tmp_path: Path) -> None:
    code, said = run("join", "h", "--no-gpus", "--simulate-gpus", "T4:1", "--home", tmp_path)
    assert code == 2
    assert "contradict" in said
    code, said = run("join", "h", "--cpus", "0", "--no-gpus", "--home", tmp_path)
    assert code == 2
    assert "--cpus 0" in said


def test_token_join_creates_the_token_once_private_and_prints_the_join_command(
    tmp_path: Path,
) -> None:
    code, said = run("token", "join", "--home", tmp_path)
    assert code == 0, said
    token_file = tmp_path / "ray_token"
    token = token_file.read_text().strip()
    assert len(token) == 64
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert "Created the Ray cluster token" in said
    assert token in said
    assert "meshctl join HEAD:6379" in said
    code, again = run("token", "join", "--home", tmp_path)
    assert code == 0
    assert "Created" not in again
    assert token_file.read_text().strip() == token


def test_leave_when_nothing_joined_says_so_and_succeeds(tmp_path: Path) -> None:
    code, said = run("leave", "--drain", "--home", tmp_path)
    assert code == 0, said
    assert "not part of a mesh" in said
