"""`meshctl up` and `meshctl down`: start and stop a mesh on one machine.

The work is in `cluster.local`; these commands check their input, spawn or signal the supervisor,
and print. `scheduler/cli.py` registers them with `app.command()(up)` and `app.command()(down)`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.local import (
    MeshHome,
    UpFailed,
    check_port_free,
    default_home,
    host_node_name,
    leftovers,
    lock_held,
    read_up,
    running_supervisor,
    spawn_supervisor,
    stop_mesh,
    stop_spawned,
    wait_until_ready,
)
from scheduler import terminal
from scheduler.cluster import ClusterSnapshot, load_cluster
from scheduler.documents import SpecError

__all__ = ["down", "up"]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


_fail = terminal.fail


def _home(home: Path | None) -> MeshHome:
    return MeshHome((home or default_home()).expanduser().resolve())


def _gpus_text(node_gpus: tuple[Any, ...]) -> str:
    if not node_gpus:
        return "-"
    models = [g.model for g in node_gpus]
    return ", ".join(f"{models.count(m)} x {m}" for m in dict.fromkeys(models))


def _print_nodes(snapshot: ClusterSnapshot) -> None:
    out.print(
        f"[yellow]The GPUs of these {len(snapshot.nodes)} nodes are simulated:[/yellow] declared to"
        " Ray so that the scheduler can place work on them, but every computation runs on this"
        " machine's CPU."
    )
    t = Table("node", "GPUs", "CPUs", "memory", "owner", title="Simulated nodes")
    for n in snapshot.nodes:
        t.add_row(n.name, _gpus_text(n.gpus), f"{n.cpus:g}", f"{n.memory_gb:g} GB", n.owner or "-")
    out.print(t)


def _print_up(up: dict[str, Any], home: MeshHome, snapshot: ClusterSnapshot | None) -> None:
    def line(label: str, value: str) -> None:
        out.print(f"{label + ':':<14}{value}", soft_wrap=True)  # paths stay whole

    line("API", str(up.get("api")))
    line("Admin token", _config_token(home) or "(see config.yaml)")
    line("Config", f"{home.config_file}  (0600; the other meshctl commands read it)")
    where = "started here" if up.get("started_head") else "attached"
    line("Ray cluster", f"{up.get('ray_address')} ({where})")
    if up.get("ray_token_file"):
        line("Ray token", f"{up['ray_token_file']}  (Ray clients and joining nodes need it)")
        line("Volunteers", "meshctl token join  (prints what a machine needs to join)")
    line("Log", str(home.log_file))
    if snapshot is not None:
        _print_nodes(snapshot)
    out.print("Stop it with: meshctl down" + _home_flag(home), soft_wrap=True)


def _home_flag(home: MeshHome) -> str:
    return "" if home.root == default_home().expanduser().resolve() else f" --home {home.root}"


def _config_token(home: MeshHome) -> str | None:
    import yaml

    try:
        data = yaml.safe_load(home.config_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _already_running(home: MeshHome) -> bool:
    """Print and return True if this home's mesh is up or starting; clear a stale ready file."""
    sup = running_supervisor(home)
    up = read_up(home)
    if sup is not None and up is not None and up.get("pid") == sup.pid:
        out.print(
            f"A mesh is already up in {home.root} (supervisor pid {sup.pid}): API at"
            f" {up.get('api')}",
            soft_wrap=True,
        )
        out.print("Stop it with: meshctl down" + _home_flag(home), soft_wrap=True)
        return True
    if sup is not None or lock_held(home):
        which = f" (supervisor pid {sup.pid})" if sup else ""
        raise _fail(
            f"a mesh is starting or stopping in {home.root}{which}; wait for it, or stop it"
            " with: meshctl down" + _home_flag(home),
            1,
        )
    if up is not None:
        alive = leftovers(up)
        if alive:
            raise _fail(
                f"the mesh in {home.root} lost its supervisor but {len(alive)} of its Ray processes"
                " still run; stop them with: meshctl down" + _home_flag(home),
                1,
            )
        home.up_file.unlink(missing_ok=True)
    return False


def up(
    nodes: Annotated[
        Path | None,
        typer.Option(
            "--nodes",
            help="Cluster description YAML: start one Ray node per node, its GPUs simulated.",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Attach to a running Ray cluster (HOST:PORT); start no nodes."
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address the API listens on.")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, typer.Option("--port", help="Port the API listens on.", min=1, max=65535)
    ] = 8000,
    ray_host: Annotated[
        str | None,
        typer.Option(
            "--ray-host",
            help="The address of this machine that volunteers reach Ray at (default: Ray's"
            " choice, the primary address).",
        ),
    ] = None,
    ray_port: Annotated[
        int,
        typer.Option(
            "--ray-port",
            help="Ray's port for joining nodes (default: a free one).",
            min=0,
            max=65535,
        ),
    ] = 0,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="Mesh home (config, logs, state); default $MESH_HOME or ~/.mesh."
        ),
    ] = None,
) -> None:
    """Start a mesh on this machine: a Ray head (or --address), the controller and the API.

    With --nodes, each node of the file joins as a Ray node whose GPUs are declared, not real:
    a whole mesh to try on one machine. Runs in the background; `meshctl down` stops it.

    Example: meshctl up --nodes examples/clusters/volunteers-small.yaml
    """
    mesh = _home(home)
    snapshot = None
    if nodes is not None and address is not None:
        raise _fail(
            "--nodes starts simulated nodes on this machine and --address attaches to a cluster"
            " that has its own: give one of them"
        )
    if nodes is not None:
        try:
            snapshot = load_cluster(nodes)
        except SpecError as e:
            raise _fail(str(e)) from None
        head = host_node_name()
        if any(n.name == head for n in snapshot.nodes):
            raise _fail(
                f"{nodes.name}: node '{head}' has this machine's name, which the head node"
                " takes; rename it"
            )
    if _already_running(mesh):
        return
    if not check_port_free(host, port):
        raise _fail(f"{host}:{port} is in use; choose another with --port", 1)
    t0 = time.monotonic()
    if address is not None and (ray_host is not None or ray_port):
        raise _fail(
            "--ray-host and --ray-port set up a Ray head this command starts; with"
            " --address it starts none"
        )
    proc = spawn_supervisor(
        mesh,
        nodes_file=nodes,
        address=address,
        host=host,
        port=port,
        ray_host=ray_host,
        ray_port=ray_port,
    )
    try:
        if out.is_terminal:
            with out.status("starting the mesh") as spinner:
                ready = wait_until_ready(proc, mesh, on_status=lambda s: spinner.update(escape(s)))
        else:
            ready = wait_until_ready(proc, mesh, on_status=lambda s: out.print(f"  {escape(s)}"))
    except UpFailed as e:
        err.print(f"[red]error:[/red] the mesh did not start: {escape(str(e))}", soft_wrap=True)
        if e.log_tail:
            err.print(f"Last lines of {mesh.log_file}:")
            for line in e.log_tail:
                err.print(f"  {escape(line)}", soft_wrap=True)
        raise typer.Exit(1) from None
    except BaseException:
        stop_spawned(proc)  # Ctrl-C while waiting: leave nothing running
        raise
    out.print(f"[green]Mesh up[/green] in {time.monotonic() - t0:.1f} s.")
    _print_up(ready, mesh, snapshot)


def down(
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Mesh home; default $MESH_HOME or ~/.mesh."),
    ] = None,
) -> None:
    """Stop the mesh that `meshctl up` started: the API, the controller and its Ray nodes.

    Example: meshctl down
    """
    mesh = _home(home)
    report = stop_mesh(mesh)
    if not report.found:
        out.print(f"No mesh is up in {mesh.root}.")
        return
    if report.supervisor is not None:
        how = "killed after it did not stop in time" if report.supervisor_killed else "stopped"
        out.print(f"Supervisor (pid {report.supervisor}) {how}.")
    else:
        out.print("The supervisor was not running.")
    if report.stopped or report.killed:
        n = len(report.stopped) + len(report.killed)
        out.print(
            f"Ray processes stopped: {n}"
            + (f" ({len(report.killed)} killed)" if report.killed else "")
        )
    for p in report.left:
        which = (
            "not killed: its start time was not recorded" if p.start is None else "still running"
        )
        err.print(f"[yellow]warning:[/yellow] pid {p.pid} ({p.kind}) {which}")
    if report.api:
        out.print(f"API {report.api} is down.")
    out.print(f"Mesh down in {report.seconds:.1f} s.")
    if report.left:
        raise typer.Exit(1)
