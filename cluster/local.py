"""A mesh on one machine: the supervisor behind `meshctl up`, and what `meshctl down` stops.

`meshctl up` spawns `python -m cluster.local` detached (its own session). That supervisor either
starts a Ray head on this machine, plus one Ray node per node of a cluster description file with
its GPUs declared (simulated: Ray counts them, the computation runs on the CPU), or attaches to a
Ray cluster that already runs (`--address`). Then it starts the controller and the API
(`scheduler.deploy.start_services`), writes `$MESH_HOME/config.yaml` (0600) and, last, the ready
file `$MESH_HOME/run/up.json`, and sleeps until SIGTERM or SIGINT. On either it stops what it
started and removes the ready file.

Files under `$MESH_HOME`:

    run/supervisor.json   {"pid", "start"} from the moment the supervisor runs
    run/status            one line: what the supervisor is doing now (the CLI's spinner shows it)
    run/error             why it gave up (written just before it exits 1)
    run/up.json           ready: pid, ray_address, api, started_head, nodes, pids, processes, home
    logs/up.log           the supervisor's stdout and stderr (the previous run's: up.log.1)
    config.yaml           api + admin token for the other meshctl commands ("Finding the API")
    ray_token             the Ray cluster's token (0600; token auth is on for a cluster `up` starts)

A process is named by its PID and its start time (`/proc/PID/stat`), so that `down` never signals
a process that merely reuses a recorded PID. Ray's node processes share the supervisor's fate:
Ray starts them with the kernel's parent-death signal, so they die with it even if it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from cluster.nodes import host_node, host_node_name, start_cluster
from cluster.processes import MeshProcess, cmdline, is_alive, process_start, session_members
from scheduler.cluster import Node, load_cluster

__all__ = [
    "MeshHome",
    "MeshProcess",
    "StopReport",
    "UpFailed",
    "check_port_free",
    "default_home",
    "host_node",
    "host_node_name",
    "is_alive",
    "leftovers",
    "lock_held",
    "main",
    "read_up",
    "running_supervisor",
    "session_members",
    "spawn_supervisor",
    "stop_spawned",
    "stop_mesh",
    "wait_until_ready",
]

SUPERVISOR_MODULE = "cluster.local"
NAMESPACE = "mesh"
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0

log = logging.getLogger("mesh.up")


# --- where things live ----------------------------------------------------------------------------


def default_home() -> Path:
    """`$MESH_HOME`, else `~/.mesh`."""
    env = os.environ.get("MESH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".mesh"


@dataclass(frozen=True)
class MeshHome:
    """The files of one mesh home (see the module docstring)."""

    root: Path

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def up_file(self) -> Path:
        return self.run_dir / "up.json"

    @property
    def supervisor_file(self) -> Path:
        return self.run_dir / "supervisor.json"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "supervisor.lock"

    @property
    def status_file(self) -> Path:
        return self.run_dir / "status"

    @property
    def error_file(self) -> Path:
        return self.run_dir / "error"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "up.log"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def ray_token_file(self) -> Path:
        return self.root / "ray_token"

    def make_dirs(self) -> None:
        for d in (self.root, self.run_dir, self.logs_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` through a temporary file created with `mode`, then rename it:
    a reader sees the old content or the new, never a part, and never wider permissions."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_up(home: MeshHome) -> dict[str, Any] | None:
    """The ready file of a mesh (`run/up.json`), or None if there is none (or it is unreadable)."""
    return _read_json(home.up_file)


# --- the supervisor's process ---------------------------------------------------------------


def is_supervisor(pid: int, start: int | None = None) -> bool:
    """Whether `pid` is a live `python -m cluster.local` (and the one that started at `start`)."""
    if not is_alive(pid, start):
        return False
    args = cmdline(pid)
    return any(a == "-m" and b == SUPERVISOR_MODULE for a, b in zip(args, args[1:], strict=False))


def running_supervisor(home: MeshHome) -> MeshProcess | None:
    """The supervisor of this home if one runs (starting or up), else None."""
    for path in (home.up_file, home.supervisor_file):
        data = _read_json(path)
        if data is None:
            continue
        proc = MeshProcess.from_json({**data, "kind": "supervisor"})
        if proc is not None and is_supervisor(proc.pid, proc.start):
            return proc
    return None


def leftovers(up: Mapping[str, Any]) -> list[MeshProcess]:
    """Processes of a mesh whose supervisor is gone that still run (`meshctl down` stops them)."""
    sup = MeshProcess.from_json({**up, "kind": "supervisor"})
    alive = [p for p in recorded_processes(up) if is_alive(p.pid, p.start)]
    if sup is not None and not is_alive(sup.pid, sup.start):
        known = {p.pid for p in alive}
        alive += [p for p in session_members(sup) if p.pid not in known]
    return alive


def recorded_processes(up: Mapping[str, Any]) -> list[MeshProcess]:
    """The Ray processes a ready file lists, with their start times where it has them."""
    found = [MeshProcess.from_json(p) for p in up.get("processes", [])]
    procs = [p for p in found if p is not None]
    known = {p.pid for p in procs}
    for pid in up.get("pids", []):
        if isinstance(pid, int) and pid not in known:
            procs.append(MeshProcess(pid, None, "ray"))
    return procs


# --- this machine as a node -----------------------------------------------------------------------


def check_port_free(host: str, port: int) -> bool:
    """Whether a TCP server could listen on host:port now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# --- the CLI's side: spawn, wait, stop ------------------------------------------------------------


class UpFailed(Exception):
    """The supervisor did not get the mesh up; `log_tail` holds the end of its log."""

    def __init__(self, message: str, log_tail: list[str]) -> None:
        super().__init__(message)
        self.log_tail = log_tail


def _tail(path: Path, lines: int = 30) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


def _clear(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def spawn_supervisor(
    home: MeshHome,
    *,
    nodes_file: Path | None,
    address: str | None,
    host: str,
    port: int,
    ray_host: str | None = None,
    ray_port: int = 0,
) -> subprocess.Popen[bytes]:
    """Start the supervisor detached, its output in logs/up.log; returns at once."""
    home.make_dirs()
    _clear(home.up_file, home.error_file, home.status_file)
    if home.log_file.exists():
        os.replace(home.log_file, home.log_file.with_name("up.log.1"))
    cmd = [sys.executable, "-m", SUPERVISOR_MODULE, "--home", str(home.root)]
    cmd += ["--host", host, "--port", str(port)]
    if nodes_file is not None:
        cmd += ["--nodes", str(nodes_file.resolve())]
    if address is not None:
        cmd += ["--address", address]
    if ray_host is not None:
        cmd += ["--ray-host", ray_host]
    if ray_port:
        cmd += ["--ray-port", str(ray_port)]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # the supervisor must not attach to a cluster by accident
    env["PYTHONUNBUFFERED"] = "1"
    # the supervisor imports this package: make sure it finds the same copy as we did
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    with open(home.log_file, "ab") as logf:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=home.root,
            env=env,
            start_new_session=True,
        )


def lock_held(home: MeshHome) -> bool:
    """Whether a supervisor holds this home's lock (it is starting, up or stopping)."""
    try:
        fd = os.open(home.lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_status(home: MeshHome) -> str | None:
    try:
        return home.status_file.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    home: MeshHome,
    *,
    timeout: float = READY_TIMEOUT_S,
    on_status: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Wait for the supervisor's ready file; raise UpFailed if it exits or `timeout` passes
    (then it is stopped, and it stops what it had started)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        up = read_up(home)
        if up is not None and up.get("pid") == proc.pid:
            return up
        status = read_status(home)
        if status and status != last:
            last = status
            on_status(status)
        code = proc.poll()
        if code is not None:
            try:
                why = home.error_file.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                why = ""
            why = why or f"the supervisor exited with code {code}"
            raise UpFailed(why, _tail(home.log_file))
        if time.monotonic() > deadline:
            stop_spawned(proc)
            raise UpFailed(
                f"the mesh was not up after {timeout:.0f} s (last step: {last or 'starting'});"
                " stopped it",
                _tail(home.log_file),
            )
        time.sleep(0.2)


def stop_spawned(proc: subprocess.Popen[bytes]) -> None:
    """Stop a supervisor this process spawned (a start that timed out, or Ctrl-C in
    `meshctl up`): SIGTERM, so that it stops what it started; SIGKILL after 60 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class StopReport:
    """What `stop_mesh` did."""

    found: bool = False
    supervisor: int | None = None
    supervisor_killed: bool = False
    stopped: list[MeshProcess] = field(default_factory=list)
    killed: list[MeshProcess] = field(default_factory=list)
    left: list[MeshProcess] = field(default_factory=list)
    seconds: float = 0.0
    api: str | None = None


def _wait_gone(procs: list[MeshProcess], timeout: float) -> list[MeshProcess]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if is_alive(p.pid, p.start)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def stop_mesh(home: MeshHome, *, timeout: float = STOP_TIMEOUT_S) -> StopReport:
    """Stop the mesh of `home`: SIGTERM its supervisor (which stops Ray and the services), wait up
    to `timeout`, then SIGKILL whichever recorded process is still there, and what is left of the
    supervisor's session. Only processes named by PID and start time are ever signalled: the
    supervisor (its command line checked too), the Ray processes it recorded, and members of the
    session it leads that started after it."""
    t0 = time.monotonic()
    report = StopReport()
    up = read_up(home)
    sup_data = up if up is not None else _read_json(home.supervisor_file)
    if sup_data is None:
        _clear(home.status_file, home.error_file)
        return report
    report.found = True
    report.api = up.get("api") if up else None
    sup = MeshProcess.from_json({**sup_data, "kind": "supervisor"})
    if sup is not None and is_supervisor(sup.pid, sup.start):
        report.supervisor = sup.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(sup.pid, signal.SIGTERM)
        if _wait_gone([sup], timeout) and is_supervisor(sup.pid, sup.start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(sup.pid, signal.SIGKILL)
            report.supervisor_killed = True
            _wait_gone([sup], 5.0)
    recorded = recorded_processes(up) if up else []
    still = [p for p in recorded if is_alive(p.pid, p.start)]
    # a PID recorded without a start time could have been reused: leave those alone
    for p in still:
        if p.start is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    report.left = _wait_gone(still, 5.0)
    report.killed = [p for p in still if p not in report.left]
    report.stopped = [p for p in recorded if p not in still]
    if sup is not None and not is_alive(sup.pid, sup.start):
        # children of Ray's processes (agents, workers) outlive them when the supervisor was
        # killed: whatever is left of its session after a short grace goes too
        orphans = _wait_gone(session_members(sup), 2.0)
        for p in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        alive = _wait_gone(orphans, 5.0)
        report.killed += [p for p in orphans if p not in alive]
        report.left += alive
    if sup is None or not is_alive(sup.pid, sup.start):
        _clear(home.up_file, home.supervisor_file, home.status_file)
    report.seconds = time.monotonic() - t0
    return report


# --- the supervisor -------------------------------------------------------------------------------


class _Stop(Exception):
    """SIGTERM or SIGINT reached the supervisor."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _take_signals() -> None:
    """Install our handlers; Ray's node objects install their own SIGTERM handler (kill that one
    node, exit 1), so this runs again after each node is added."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Cleanup runs to its end: a second signal during it is ignored."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    yield


@dataclass
class _Started:
    """What the supervisor has started so far, for cleanup."""

    cluster: Any = None
    connected: bool = False
    services: bool = False


def _status(home: MeshHome, message: str) -> None:
    log.info(message)
    _write_atomic(home.status_file, message + "\n")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _admin_token(home: MeshHome) -> str:
    token = _read_config(home.config_file).get("token")
    return token if isinstance(token, str) and token else secrets.token_urlsafe(32)


def ray_token(home: MeshHome) -> str:
    """The Ray cluster token of this mesh, from `ray_token` (created 0600 the first time).
    DESIGN "Finding the API": never `~/.ray/auth_token`, which would switch token auth on for
    every local cluster of this user."""
    try:
        token = home.ray_token_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_hex(32)
        _write_atomic(home.ray_token_file, token + "\n", mode=0o600)
    return token


def write_config(home: MeshHome, *, api: str, token: str) -> None:
    """`config.yaml` with `api:` and `token:` (other keys kept), created 0600."""
    data = _read_config(home.config_file)
    data.update(api=api, token=token)
    text = "# written by `meshctl up`; holds the admin token: keep it private\n"
    text += yaml.safe_dump(data, sort_keys=False)
    _write_atomic(home.config_file, text, mode=0o600)
    os.chmod(home.config_file, 0o600)


def _processes(cluster: Any) -> list[MeshProcess]:
    """Every process the Ray nodes of `cluster` started (ray._private.node.Node.all_processes)."""
    procs = []
    for node in [cluster.head_node, *cluster.worker_nodes]:
        if node is None:
            continue
        for kind, infos in node.all_processes.items():
            for info in infos:
                pid = info.process.pid
                procs.append(MeshProcess(pid, process_start(pid), str(kind)))
    return procs


def _start_ray(
    home: MeshHome, declared: list[Node], started: _Started, ray_host: str | None, ray_port: int
) -> str:
    def progress(message: str) -> None:
        _status(home, message)
        _take_signals()

    started.cluster = start_cluster(
        host_node(), declared, progress=progress, ray_host=ray_host, ray_port=ray_port
    )
    return str(started.cluster.address)


def _cleanup(started: _Started) -> None:
    import ray

    if started.services and started.cluster is None:
        # attached to a cluster we do not own: remove only what we added to it
        log.info("stopping the controller and the API")
        try:
            from scheduler.deploy import stop_services

            stop_services()
        except Exception:
            log.exception("stopping the services failed")
    if started.connected:
        with contextlib.suppress(Exception):
            ray.shutdown()
    if started.cluster is not None:
        log.info("shutting the Ray cluster down")
        try:
            started.cluster.shutdown()
        except Exception:
            log.exception("shutting the Ray cluster down failed")


def supervise(
    home: MeshHome,
    *,
    nodes_file: Path | None,
    address: str | None,
    host: str,
    port: int,
    ray_host: str | None = None,
    ray_port: int = 0,
) -> int:
    """Bring the mesh up, wait for a signal, bring it down. Returns the exit status."""
    home.make_dirs()
    if address is None or (home.ray_token_file.exists() and "RAY_AUTH_MODE" not in os.environ):
        # our own cluster, or one started with this home's token (`ray up`): token
        # authentication with the mesh's token, set before Ray is imported so that this driver
        # and every Ray process started from here use it
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = ray_token(home)
    import ray

    lock = os.open(home.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _write_atomic(home.error_file, f"another supervisor runs for {home.root}\n")
        return 1
    me = MeshProcess(os.getpid(), process_start(os.getpid()), "supervisor")
    _write_atomic(home.supervisor_file, json.dumps(me.to_json()) + "\n")
    _clear(home.error_file)
    _take_signals()
    started = _Started()
    code = 0
    try:
        if nodes_file is not None and address is not None:
            raise ValueError("--nodes starts simulated nodes; with --address none are started")
        declared = list(load_cluster(nodes_file).nodes) if nodes_file is not None else []
        if address is None:
            ray_address = _start_ray(home, declared, started, ray_host, ray_port)
        else:
            ray_address = address
        _status(home, f"connecting to Ray at {ray_address}")
        ray.init(address=ray_address, namespace=NAMESPACE, log_to_driver=False)
        started.connected = True
        _take_signals()
        _status(home, "starting the controller and the API")
        from scheduler.deploy import start_services

        token = _admin_token(home)
        started.services = True
        api = start_services(home=home.root, host=host, port=port, admin_token=token)
        _take_signals()
        write_config(home, api=api, token=token)
        procs = _processes(started.cluster) if started.cluster is not None else []
        up = {
            "pid": me.pid,
            "start": me.start,
            "ray_address": ray_address,
            "api": api,
            "started_head": started.cluster is not None,
            "nodes": [n.name for n in declared],
            "head": host_node_name() if started.cluster is not None else None,
            "pids": [p.pid for p in procs],
            "processes": [p.to_json() for p in procs],
            "home": str(home.root),
            "ray_token_file": str(home.ray_token_file) if started.cluster is not None else None,
        }
        _write_atomic(home.up_file, json.dumps(up, indent=2) + "\n")
        _status(home, f"up: API at {api}")
        while True:
            signal.pause()
    except _Stop as e:
        log.info("%s: stopping", e)
    except Exception as e:
        code = 1
        log.error("giving up:\n%s", traceback.format_exc())
        _write_atomic(home.error_file, f"{type(e).__name__}: {e}\n")
    finally:
        with _signals_deferred():
            _clear(home.up_file)
            _status(home, "stopping")
            _cleanup(started)
            _clear(home.status_file, home.supervisor_file)
            log.info("stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {SUPERVISOR_MODULE}",
        description="The supervisor of a one-machine mesh (started by `meshctl up`).",
    )
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--nodes", type=Path, default=None)
    parser.add_argument("--address", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ray-host", default=None)
    parser.add_argument("--ray-port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # start_services polls /health
    home = MeshHome((args.home or default_home()).expanduser().resolve())
    return supervise(
        home,
        nodes_file=args.nodes,
        address=args.address,
        host=args.host,
        port=args.port,
        ray_host=args.ray_host,
        ray_port=args.ray_port,
    )


if __name__ == "__main__":
    sys.exit(main())
