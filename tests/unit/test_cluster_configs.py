"""The `ray up` cluster files under cluster/: valid for Ray 2.60, and they start a mesh as ours.

Each file goes through what `ray up` itself does first (`prepare_config`: fill in the provider's
defaults, then `validate_config`: Ray's JSON schema and its own checks); both run offline, for
the `aws` provider too (its defaults are a file inside Ray; boto3 and credentials are needed only
later, to create instances). The other checks read the prepared config, which holds every
command `ray up` will run, the provider's defaults included.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # ships no type stubs
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "cluster"
CONFIG_FILES = sorted(CLUSTER_DIR.glob("*.yaml"))
FILE_IDS = [path.name for path in CONFIG_FILES]

# command lists of a cluster file, top level and per node type
TOP_LEVEL_COMMANDS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
NODE_TYPE_COMMANDS = ("initialization_commands", "worker_setup_commands")
# an editable install of the copied checkout, `pip install [OPTIONS] -e "$HOME/mesh[EXTRA]"`
INSTALL = r'pip install (-\S+ \S+ )*-e "\$HOME/mesh'


def load(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(config, dict), f"{path.name}: not a mapping"
    return config


def prepared(path: Path) -> dict[str, Any]:
    """The config as `ray up` sees it after filling in the provider's defaults."""
    config: dict[str, Any] = prepare_config(load(path))
    return config


def all_commands(config: dict[str, Any]) -> list[str]:
    commands = [cmd for key in TOP_LEVEL_COMMANDS for cmd in config.get(key) or []]
    for node_type in (config.get("available_node_types") or {}).values():
        commands += [cmd for key in NODE_TYPE_COMMANDS for cmd in node_type.get(key) or []]
    return commands


def ray_start_command(commands: list[str]) -> str:
    starts = [cmd for cmd in commands if "ray start" in cmd]
    assert len(starts) == 1, f"expected one `ray start`, got {starts}"
    return starts[0]


def test_there_are_at_least_two_cluster_files() -> None:
    assert len(CONFIG_FILES) >= 2, [p.name for p in CONFIG_FILES]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_a_cluster_file_passes_rays_own_preparation_and_validation(path: Path) -> None:
    validate_config(prepared(path))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_a_misspelt_top_level_key_fails_validation(path: Path) -> None:
    config = load(path)
    config["max_worker"] = 2  # meant: max_workers
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_validation_alone_rejects_a_raw_file_so_preparation_is_needed(path: Path) -> None:
    with pytest.raises(RuntimeError, match="cluster_synced_files"):
        validate_config(load(path))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_preparation_leaves_the_file_it_was_given_unchanged(path: Path) -> None:
    config = load(path)
    before = copy.deepcopy(config)
    prepare_config(config)
    assert config == before


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_every_node_gets_the_checkout_and_the_ray_token(path: Path) -> None:
    config = prepared(path)
    assert config["file_mounts"]["~/mesh"] == "."
    assert config["file_mounts"]["~/.mesh/ray_token"] == "~/.mesh/ray_token"
    assert "chmod 600 ~/.mesh/ray_token" in config["setup_commands"]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_the_head_and_the_workers_install_the_project_with_an_engine(path: Path) -> None:
    config = prepared(path)
    head = [c for c in config["head_setup_commands"] if re.search(INSTALL + r"\[(cpu|gpu)\]", c)]
    workers = [c for c in config["worker_setup_commands"] if re.search(INSTALL + r"\[gpu\]", c)]
    assert len(head) == 1, config["head_setup_commands"]
    assert len(workers) == 1, config["worker_setup_commands"]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_no_command_quotes_a_tilde_path_which_the_shell_would_not_expand(path: Path) -> None:
    quoted = [cmd for cmd in all_commands(prepared(path)) if re.search(r"[\"']~/", cmd)]
    assert quoted == []


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_the_head_starts_ray_with_token_auth_from_the_mesh_token(path: Path) -> None:
    commands = prepared(path)["head_start_ray_commands"]
    start = ray_start_command(commands)
    assert start.startswith('RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat ~/.mesh/ray_token)" ')
    assert "--head" in start
    assert "--labels=mesh/node=mesh-head" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_the_head_brings_up_the_mesh_attached_to_its_ray_after_ray_starts(path: Path) -> None:
    commands = prepared(path)["head_start_ray_commands"]
    ups = [i for i, cmd in enumerate(commands) if "meshctl up" in cmd]
    assert len(ups) == 1, commands
    up = commands[ups[0]]
    assert up.startswith("RAY_AUTH_MODE=token ")
    assert "--address=localhost:6379" in up
    assert ups[0] > commands.index(ray_start_command(commands))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_a_worker_joins_with_meshctl_and_the_token_file_never_with_ray_itself(
    path: Path,
) -> None:
    commands = prepared(path)["worker_start_ray_commands"]
    joins = [cmd for cmd in commands if cmd.startswith("meshctl join ")]
    assert joins == ["meshctl join $RAY_HEAD_IP:6379 --token-file ~/.mesh/ray_token"]
    assert commands.index("meshctl leave || true") < commands.index(joins[0])
    assert not [cmd for cmd in commands if re.search(r"\bray (start|stop)\b", cmd)]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=FILE_IDS)
def test_nothing_writes_rays_per_user_token_file(path: Path) -> None:
    config = prepared(path)
    assert [cmd for cmd in all_commands(config) if ".ray/auth_token" in cmd] == []
    assert [dest for dest in config["file_mounts"] if ".ray/" in dest] == []
