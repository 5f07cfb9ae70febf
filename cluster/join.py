"""A volunteer's machine joining a mesh and leaving it (`meshctl join`, `meshctl leave`).

`join` probes the machine's GPUs (`cluster.gpu_probe`), builds the node's labels (DESIGN.md
"Node labels") and starts `ray start --address HEAD --block` with them, with token
authentication (`RAY_AUTH_MODE=token`, the token from a file, never `~/.ray/auth_token`), in its
own session in the background. It returns once the head has accepted the node, and stops it
again if the head refuses its token. `leave` stops that process (Ray then tells the head the
node is going); with a drain it first asks the mesh controller to move the work off the node
and waits until nothing of the mesh runs there.

Files under `$MESH_HOME`:

    node.json          {"name"}: the node's name, kept so that it is stable across restarts
    run/node.json      the running node: pid, start, head, name, labels, log
    logs/node.log      the output of `ray start` (the previous one: node.log.1)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.gpu_probe import GpuProbe
from cluster.labels import labels_for
from cluster.local import MeshHome, _read_json, _write_atomic
from cluster.nodes import host_node_name
from cluster.processes import MeshProcess, is_alive, process_start, session_members
from scheduler import gpus
from scheduler.cluster import Gpu, Node

DEFAULT_PORT = 6379
JOIN_TIMEOUT_S = 60.0
LEAVE_TIMEOUT_S = 45.0  # `ray start --block` drains for up to 30 s on SIGTERM
JOINED = "This command will now block"  # what `ray start --block` prints once it is in
REFUSED = ("InvalidAuthToken", "Unauthenticated")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class JoinError(Exception):
    """The machine cannot join as asked; the message says what to fix."""


@dataclass(frozen=True)
class JoinPlan:
    """What `meshctl join` does: the node it makes and the `ray start` command that makes it."""

    head: str
    node: Node
    labels: dict[str, str]
    argv: list[str]
    token_file: Path
    probe_note: str | None = None
    gpu_names: tuple[str, ...] = ()

    def shell_command(self) -> str:
        """The command as one shell line, the token read from its file (never printed)."""
        env = f'RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat {shlex.quote(str(self.token_file))})"'
        return f"{env} {shlex.join(['ray', *self.argv[1:]])}"


def head_address(text: str) -> str:
    """`HOST[:PORT]` of the head's Ray (GCS) address; the port defaults to 6379."""
    text = text.strip()
    for prefix in ("ray://", "http://", "https://"):
        if text.startswith(prefix):
            raise JoinError(
                f"{text}: give the head's Ray address as HOST[:PORT] (for example"
                f" 10.0.0.5:{DEFAULT_PORT}), not a URL"
            )
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or " " in host:
        raise JoinError(
            f"{text!r} is not a Ray head address: give HOST[:PORT], for example"
            f" 10.0.0.5:{DEFAULT_PORT} (`meshctl token join` on the head prints it)"
        )
    return f"{host}:{int(port)}"


def node_name(home: MeshHome, name: str | None) -> str:
    """--name, else the name this machine joined with before, else its host name."""
    if name is not None:
        if not _DNS_LABEL.match(name):
            raise JoinError(
                f"node name {name!r} is not a DNS label: lowercase letters, digits and '-',"
                " at most 63 characters, starting and ending with a letter or digit"
            )
        return name
    saved = _read_json(home.root / "node.json")
    if saved and isinstance(saved.get("name"), str) and _DNS_LABEL.match(saved["name"]):
        return str(saved["name"])
    return host_node_name()


def simulated_gpus(text: str) -> tuple[Gpu, ...]:
    """`MODEL:COUNT` (`T4:2`) as declared, simulated GPUs."""
    model_text, _, count_text = text.rpartition(":")
    if not model_text or not count_text.isdigit() or int(count_text) < 1:
        raise JoinError(f"--simulate-gpus {text!r}: write MODEL:COUNT, for example RTX-4090:2")
    try:
        model = gpus.resolve(model_text)
    except gpus.UnknownGpuError as e:
        raise JoinError(f"--simulate-gpus: {e}") from None
    return tuple(
        Gpu(i, model.name, model.memory_gb, model.compute_capability)
        for i in range(int(count_text))
    )


def probed_gpus(probe: GpuProbe) -> tuple[Gpu, ...]:
    """The probe's GPUs as the node claims them; a machine the mesh cannot describe is refused."""
    if probe.cpu_only:
        return ()
    names = sorted({g.name for g in probe.gpus})
    if len(names) > 1:
        raise JoinError(
            f"this machine has GPUs of {len(names)} models ({', '.join(names)}); a node holds"
            " one model. Join with --no-gpus to lend its CPUs only, or make each model its own"
            " node (CUDA_VISIBLE_DEVICES per `meshctl join --name`)"
        )
    first = probe.gpus[0]
    if first.model is None:
        raise JoinError(
            f"GPU model {first.name!r} is not in the catalogue (`meshctl gpus` lists it), so the"
            " scheduler cannot place work on it; join with --no-gpus to lend the CPUs only"
        )
    model = gpus.resolve(first.model)
    return tuple(Gpu(g.index, model.name, g.memory_gb, g.compute_capability) for g in probe.gpus)


def plan_join(
    head: str,
    *,
    name: str,
    token_file: Path,
    owner: str | None = None,
    cpus: float | None = None,
    node_gpus: tuple[Gpu, ...] = (),
    simulated: bool = False,
    object_store_gb: float | None = None,
    node_ip: str | None = None,
    probe: GpuProbe | None = None,
) -> JoinPlan:
    """The node and the `ray start` command for it (nothing is started)."""
    if owner is not None and not _DNS_LABEL.match(owner):
        raise JoinError(f"--owner {owner!r} is not a community name (a DNS label)")
    if cpus is not None and cpus <= 0:
        raise JoinError(f"--cpus {cpus:g}: lend at least part of one CPU")
    total_cpus = float(os.cpu_count() or 1)
    node = Node(
        name=name,
        cpus=cpus if cpus is not None else total_cpus,
        memory_gb=0.0,
        gpus=node_gpus,
        owner=owner,
        simulated=simulated,
    )
    labels = labels_for(node)
    argv = [_ray_executable(), "start", f"--address={head}", "--block", "--disable-usage-stats"]
    if cpus is not None:
        argv.append(f"--num-cpus={cpus:g}")
    argv.append(f"--num-gpus={len(node_gpus)}")
    argv.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
    if object_store_gb is not None:
        argv.append(f"--object-store-memory={int(object_store_gb * 2**30)}")
    if node_ip is not None:
        argv.append(f"--node-ip-address={node_ip}")
    return JoinPlan(
        head=head,
        node=node,
        labels=labels,
        argv=argv,
        token_file=token_file,
        probe_note=probe.note if probe is not None else None,
        gpu_names=tuple(g.name for g in probe.gpus) if probe is not None else (),
    )


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def read_token(token_file: Path) -> str:
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise JoinError(
            f"no Ray cluster token at {token_file}: ask the mesh's operator for it (`meshctl"
            " token join` on the head prints it), save it there with mode 600, or give"
            " --token-file"
        ) from None
    except OSError as e:
        raise JoinError(f"cannot read the Ray cluster token {token_file}: {e}") from None
    if not token:
        raise JoinError(f"{token_file} is empty: it must hold the mesh's Ray cluster token")
    return token


# --- the running node -------------------------------------------------------------------------


def _run_file(home: MeshHome) -> Path:
    return home.run_dir / "node.json"


def _log_file(home: MeshHome) -> Path:
    return home.logs_dir / "node.log"


def running_node(home: MeshHome) -> dict[str, Any] | None:
    """The node this home started, if its `ray start` still runs."""
    data = _read_json(_run_file(home))
    if data is None:
        return None
    proc = MeshProcess.from_json({**data, "kind": "node"})
    if proc is None or not is_alive(proc.pid, proc.start):
        return None
    return data


@dataclass
class JoinResult:
    pid: int
    seconds: float
    log: Path


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_node(
    plan: JoinPlan,
    home: MeshHome,
    *,
    timeout: float = JOIN_TIMEOUT_S,
    on_wait: Callable[[float], None] = lambda seconds: None,
) -> JoinResult:
    """Start the node's `ray start --block` in the background; return once the head took it.

    Raises JoinError (having stopped what it started) when the head refuses the token, the
    process ends, or `timeout` passes.
    """
    token = read_token(plan.token_file)
    home.make_dirs()
    log = _log_file(home)
    if log.exists():
        os.replace(log, log.with_name("node.log.1"))
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    t0 = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    record = MeshProcess(proc.pid, process_start(proc.pid), "node")
    _write_atomic(
        _run_file(home),
        json.dumps(
            {
                **record.to_json(),
                "head": plan.head,
                "name": plan.node.name,
                "labels": plan.labels,
                "log": str(log),
                "token_file": str(plan.token_file),
                "joined_at": time.time(),
            },
            indent=2,
        )
        + "\n",
    )
    _write_atomic(home.root / "node.json", json.dumps({"name": plan.node.name}) + "\n")
    try:
        while True:
            text = log.read_text(encoding="utf-8", errors="replace")
            if JOINED in text:
                return JoinResult(proc.pid, time.monotonic() - t0, log)
            if any(marker in text for marker in REFUSED):
                raise JoinError(
                    f"the head at {plan.head} refused this node: its Ray cluster token"
                    f" ({plan.token_file}) is not the mesh's. Get the right one with `meshctl"
                    " token join` on the head"
                )
            if proc.poll() is not None:
                raise JoinError(
                    f"`ray start` ended with code {proc.returncode} before the node joined;"
                    f" the end of {log}:\n{_tail(log)}"
                )
            if time.monotonic() - t0 > timeout:
                raise JoinError(
                    f"the node had not joined the head at {plan.head} after {timeout:.0f} s:"
                    f" check the address and that this machine reaches its port; the end of"
                    f" {log}:\n{_tail(log)}"
                )
            on_wait(time.monotonic() - t0)
            time.sleep(0.2)
    except BaseException:
        _stop(record, LEAVE_TIMEOUT_S)
        _run_file(home).unlink(missing_ok=True)
        raise


def _stop(proc: MeshProcess, timeout: float) -> bool:
    """SIGTERM a node's `ray start --block` (it drains and stops its processes), then SIGKILL
    what is left of its session. True if it ended by itself."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_alive(proc.pid, proc.start) and time.monotonic() < deadline:
        time.sleep(0.1)
    clean = not is_alive(proc.pid, proc.start)
    for p in [proc, *session_members(proc)]:
        if is_alive(p.pid, p.start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)
    return clean


def stop_node(home: MeshHome, timeout: float = LEAVE_TIMEOUT_S) -> dict[str, Any] | None:
    """Stop this home's node (`meshctl leave`); what was running, or None if nothing was."""
    data = running_node(home)
    if data is None:
        _run_file(home).unlink(missing_ok=True)
        return None
    proc = MeshProcess.from_json({**data, "kind": "node"})
    assert proc is not None
    data["clean"] = _stop(proc, timeout)
    _run_file(home).unlink(missing_ok=True)
    return data


def drain(
    head: str,
    name: str,
    token: str,
    *,
    timeout: float,
    on_status: Callable[[dict[str, Any]], None] = lambda status: None,
) -> dict[str, Any]:
    """Ask the mesh controller to drain node `name`; wait until it is DRAINED (or `timeout`).

    Runs as a Ray driver of the cluster (the volunteer holds its token)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    import ray

    try:
        ray.init(address=head, namespace="mesh", log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # ConnectionError, an auth error, a timeout: all mean the same here
        raise JoinError(
            f"cannot reach the mesh at {head} to drain this node ({type(e).__name__}: {e});"
            " `meshctl leave` without --drain stops it now"
        ) from None
    try:
        try:
            controller = ray.get_actor("mesh-controller", namespace="mesh")
        except ValueError:
            raise JoinError(
                f"no mesh controller runs on the cluster at {head}: nothing to drain"
            ) from None
        status: dict[str, Any] = dict(ray.get(controller.drain_node.remote(name), timeout=60))
        deadline = time.monotonic() + timeout
        while status.get("state") not in ("DRAINED", "UNKNOWN"):
            on_status(status)
            if time.monotonic() > deadline:
                raise JoinError(
                    f"node {name} was not drained after {timeout:.0f} s; still on it:"
                    f" {', '.join(status.get('jobs') or []) or 'nothing'}. Run `meshctl leave"
                    " --drain` again to wait longer, or `meshctl leave` to stop it now"
                )
            time.sleep(1.0)
            status = dict(ray.get(controller.node_status.remote(name), timeout=60))
        on_status(status)
        return status
    finally:
        ray.shutdown()
