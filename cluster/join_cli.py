"""`meshctl join`, `meshctl leave` and `meshctl token join`: a volunteer's machine in and out.

The work is in `cluster.join`; these commands check their input, print, and exit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cluster.gpu_probe import GpuProbeError, probe_gpus
from cluster.join import (
    JoinError,
    head_address,
    node_name,
    plan_join,
    probed_gpus,
    read_token,
    running_node,
    simulated_gpus,
    start_node,
    stop_node,
)
from cluster.join import drain as drain_node
from cluster.local import MeshHome, default_home, ray_token, read_up
from scheduler import terminal

__all__ = ["join", "leave", "token_join"]

out, err, _fail = terminal.out, terminal.err, terminal.fail

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="Mesh home (token, node name, logs); default $MESH_HOME or ~/.mesh."
    ),
]


def _home(home: Path | None) -> MeshHome:
    return MeshHome((home or default_home()).expanduser().resolve())


def join(
    head: Annotated[str, typer.Argument(help="The head's Ray address, HOST[:PORT] (port 6379).")],
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="This node's name (default: the last one, else the host name)."
        ),
    ] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="The community this machine belongs to.")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="The Ray cluster token; default $MESH_HOME/ray_token."),
    ] = None,
    cpus: Annotated[
        float | None, typer.Option("--cpus", help="CPUs to lend (default: all of them).")
    ] = None,
    no_gpus: Annotated[
        bool, typer.Option("--no-gpus", help="Lend the CPUs only, none of the GPUs.")
    ] = False,
    simulate_gpus: Annotated[
        str | None,
        typer.Option(
            "--simulate-gpus",
            help="MODEL:COUNT: declare GPUs this machine does not have, marked simulated (to try"
            " a mesh; the work runs on the CPU).",
        ),
    ] = None,
    object_store_gb: Annotated[
        float | None,
        typer.Option("--object-store-gb", help="Ray object store size (default: Ray's choice)."),
    ] = None,
    node_ip: Annotated[
        str | None,
        typer.Option("--node-ip", help="The address the other nodes reach this one at."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the `ray start` command and the labels; start nothing."
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Join this machine to a mesh: probe its GPUs, label it, start its Ray node in the background.

    Returns once the head has accepted the node. The node's name stays the same across restarts,
    so work pinned to it comes back when the machine does. `meshctl leave` stops it.

    Example: meshctl join 10.0.0.5:6379 --owner swahili-nlp
    """
    mesh = _home(home)
    try:
        address = head_address(head)
        if no_gpus and simulate_gpus:
            raise JoinError("--no-gpus and --simulate-gpus contradict each other: give one")
        probe = None
        if simulate_gpus is not None:
            node_gpus = simulated_gpus(simulate_gpus)
        elif no_gpus:
            node_gpus = ()
        else:
            probe = probe_gpus()
            node_gpus = probed_gpus(probe)
        plan = plan_join(
            address,
            name=node_name(mesh, name),
            token_file=(token_file or mesh.ray_token_file).expanduser(),
            owner=owner,
            cpus=cpus,
            node_gpus=node_gpus,
            simulated=simulate_gpus is not None,
            object_store_gb=object_store_gb,
            node_ip=node_ip,
            probe=probe,
        )
    except (JoinError, GpuProbeError) as e:
        raise _fail(str(e)) from None
    gpus_text = (
        f"{len(plan.node.gpus)} x {plan.node.gpus[0].model}"
        + (" (simulated)" if plan.node.simulated else "")
        if plan.node.gpus
        else "no GPUs" + (f" ({plan.probe_note})" if plan.probe_note else "")
    )
    if dry_run:
        out.print(f"Node {plan.node.name}: {escape(gpus_text)}", highlight=False, soft_wrap=True)
        out.print("Labels:")
        for k, v in plan.labels.items():
            out.print(f"  {k}={v}", highlight=False)
        out.print("Command (not run):")
        out.print(escape(plan.shell_command()), highlight=False, soft_wrap=True)
        return
    running = running_node(mesh)
    if running is not None:
        out.print(
            f"This machine already joined {running.get('head')} as {running.get('name')}"
            f" (pid {running.get('pid')}); `meshctl leave` first to join again.",
            highlight=False,
            soft_wrap=True,
        )
        return
    out.print(
        f"Joining {address} as {plan.node.name}: {escape(gpus_text)}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        if out.is_terminal:
            with out.status("waiting for the head to accept the node") as spinner:
                result = start_node(
                    plan,
                    mesh,
                    on_wait=lambda s: spinner.update(f"waiting for the head ({s:.0f} s)"),
                )
        else:
            result = start_node(plan, mesh)
    except JoinError as e:
        raise _fail(str(e), 1) from None
    out.print(
        f"[green]Joined[/green] in {result.seconds:.1f} s: Ray node running (pid {result.pid},"
        f" log {result.log}).",
        highlight=False,
        soft_wrap=True,
    )
    if plan.node.gpus and not plan.node.simulated:
        out.print(
            "The mesh verifies its GPUs with a short probe before it gives it work"
            " (`meshctl nodes` shows VERIFYING, then READY).",
            highlight=False,
        )
    out.print("Leave with: meshctl leave --drain", highlight=False)


def leave(
    drain: Annotated[
        bool,
        typer.Option(
            "--drain",
            help="First move the mesh's work off this machine (fine-tunes checkpoint and move,"
            " Service replicas move), then stop.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the drain.")
    ] = 600.0,
    home: HomeOption = None,
) -> None:
    """Stop this machine's Ray node. Without --drain, its running work is interrupted and placed
    again elsewhere from its last checkpoint.

    Example: meshctl leave --drain
    """
    mesh = _home(home)
    running = running_node(mesh)
    if running is None:
        out.print(f"This machine is not part of a mesh (no node runs from {mesh.root}).")
        return
    name, head = str(running.get("name")), str(running.get("head"))
    if drain:
        out.print(f"Draining {name} on {head}...", highlight=False)
        last: list[object] = []

        def say(status: dict[str, object]) -> None:
            jobs = [str(j) for j in status.get("jobs") or []]  # type: ignore[attr-defined]
            if [status.get("state"), jobs] != last:
                last[:] = [status.get("state"), jobs]
                left = ", ".join(jobs) if jobs else "nothing"
                out.print(f"  {status.get('state')}: still on it: {left}", highlight=False)

        try:
            token = read_token(Path(str(running.get("token_file") or mesh.ray_token_file)))
            status = drain_node(head, name, token, timeout=timeout, on_status=say)
        except JoinError as e:
            raise _fail(str(e), 1) from None
        if status.get("state") == "UNKNOWN":
            err.print(f"[yellow]warning:[/yellow] the controller does not know {name}: leaving")
    stopped = stop_node(mesh)
    if stopped is None:
        out.print("The node had already stopped.")
        return
    how = "" if stopped.get("clean") else " (its last processes were killed)"
    out.print(f"[green]Left[/green] {head}: node {name} stopped{how}.", highlight=False)


def token_join(home: HomeOption = None) -> None:
    """Print what a volunteer needs to join this mesh: the head's address, the Ray cluster token
    and the command. Creates the token ($MESH_HOME/ray_token, mode 600) if there is none yet, as
    an operator does once before `ray up`.

    Example: meshctl token join
    """
    mesh = _home(home)
    existed = mesh.ray_token_file.exists()
    mesh.make_dirs()
    token = ray_token(mesh)
    up = read_up(mesh) or {}
    address = up.get("ray_address") or f"HEAD:{6379}"
    if not existed:
        out.print(f"Created the Ray cluster token {mesh.ray_token_file} (mode 600).")
    out.print(
        "Keep the token as secret as an SSH key: whoever holds it can run code on every node of"
        " the mesh.",
        highlight=False,
    )
    if str(address).startswith(("127.", "localhost")):
        err.print(
            f"[yellow]warning:[/yellow] Ray listens on {address}, this machine only: volunteers"
            " on other machines cannot reach it"
        )
    out.print("On each volunteer's machine:", highlight=False)
    out.print(
        f"  mkdir -p ~/.mesh && (umask 077 && printf '%s\\n' '{token}' > ~/.mesh/ray_token)",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"  meshctl join {address} [--owner COMMUNITY]", highlight=False, soft_wrap=True)
    if "HEAD" in str(address):
        out.print("(HEAD: the address of the machine that runs the Ray head.)", highlight=False)
