"""`meshctl`: the command line of Mesh. Thin: it parses, calls the library, prints with rich."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cluster.join_cli import join, leave, token_join
from cluster.lifecycle_cli import down, up
from scheduler import cli_mesh, cli_models, cli_sim, gpus, terminal
from scheduler.cluster import ClusterFile, ClusterSnapshot, load_cluster
from scheduler.documents import SpecError
from scheduler.policy import Plan, QueuedJob, plan
from scheduler.running import load_running
from scheduler.spec import JobSpec, job_json_schema, load_jobs

app = typer.Typer(
    name="meshctl",
    help="Mesh: pool community GPUs; schedule fine-tuning, batch inference and serving on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out, err, _fail = terminal.out, terminal.err, terminal.fail


def _version(value: bool) -> None:
    if value:
        try:
            out.print(f"meshctl {version('community-mesh')}")
        except PackageNotFoundError:
            out.print("meshctl (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    _version_flag: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Mesh: pool community GPUs; schedule fine-tuning, batch inference and serving on them."""


def _load_queue(files: list[Path]) -> list[JobSpec]:
    jobs: list[JobSpec] = []
    where: dict[str, str] = {}
    for f in files:
        for job in load_jobs(f):
            if job.job_id in where:
                other = where[job.job_id]
                raise SpecError(f"{f.name}: job {job.job_id} is also defined in {other}")
            where[job.job_id] = f.name
            jobs.append(job)
    return jobs


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Job files (YAML; several jobs per file)")],
) -> None:
    """Check job files against the spec; print each job, or every problem found.

    Example: meshctl validate examples/jobs/*.yaml
    """
    bad = 0
    for f in files:
        try:
            jobs = load_jobs(f)
        except SpecError as e:
            err.print(f"[red]invalid[/red] {e}", highlight=False, soft_wrap=True)
            bad += 1
            continue
        for j in jobs:
            out.print(f"[green]ok[/green] {f.name}: {j.kind.value} {j.job_id}", highlight=False)
    if bad:
        raise typer.Exit(1)


@app.command()
def schema(
    cluster: Annotated[
        bool, typer.Option("--cluster", help="The cluster description file's schema instead.")
    ] = False,
) -> None:
    """Print the JSON Schema of job files (for editors), or of cluster files with --cluster.

    Example: meshctl schema > mesh-job.schema.json
    """
    doc = ClusterFile.model_json_schema() if cluster else job_json_schema()
    typer.echo(json.dumps(doc, indent=2))


@app.command("gpus")
def list_gpus() -> None:
    """List the GPU catalogue: names, memory, compute capability, speed, and aliases.

    Example: meshctl gpus
    """
    t = Table("model", "memory", "cc", "speed", "TFLOP/s", "aliases", title="GPU catalogue")
    for g in gpus.CATALOGUE:
        t.add_row(
            g.name,
            f"{g.memory_gb:g} GB",
            gpus.format_compute_capability(g.compute_capability),
            f"{g.relative_speed:.2f}",
            f"{g.tflops_16:g}",
            ", ".join(g.aliases[:4]) + (" ..." if len(g.aliases) > 4 else ""),
        )
    out.print(t)
    out.print("speed: training throughput relative to an A100-80GB; sources in scheduler/gpus.py")


def _print_plan(result: Plan, snapshot: ClusterSnapshot, queued: int, running: int) -> None:
    total = snapshot.total_gpus
    out.print(
        f"Plan for {queued} queued job{'s' if queued != 1 else ''} ({running} running)"
        f" on {len(snapshot.nodes)} nodes with {total} GPUs",
        highlight=False,
    )
    if result.placements:
        t = Table("job", "node", "GPUs", "share", title="Placements")
        for p in result.placements:
            for i, b in enumerate(p.bundles):
                t.add_row(
                    p.job if i == 0 else "",
                    b.node,
                    ",".join(str(g) for g in b.gpus) or "-",
                    f"{b.gpu_fraction:.3f}" if b.gpus else "-",
                )
        out.print(t)
    if result.preemptions:
        t = Table("job", "reason", title="Preemptions")
        for pre in result.preemptions:
            t.add_row(pre.job, pre.reason)
        out.print(t)
    if result.waiting:
        t = Table("job", "why it waits", title="Waiting")
        for w in result.waiting:
            t.add_row(w.job, "\n".join(w.reasons))
        out.print(t)
    if not (result.placements or result.preemptions or result.waiting):
        out.print("Nothing to do: the queue is empty.")


@app.command("plan")
def plan_command(
    jobs: Annotated[list[Path], typer.Argument(help="Job files to place, in queue order")],
    cluster: Annotated[Path, typer.Option("--cluster", "-c", help="Cluster description YAML")],
    running: Annotated[
        Path | None,
        typer.Option("--running", "-r", help="YAML list of jobs already placed"),
    ] = None,
    now: Annotated[
        float, typer.Option("--now", help="The present, in seconds on the --running clock")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON")] = False,
) -> None:
    """Dry-run the scheduler: where each job would run now, whom it would preempt, why others wait.

    No cluster is needed. Jobs are queued in the order given (files, then documents).

    Example: meshctl plan examples/jobs/queue-mixed.yaml -c examples/clusters/volunteers-small.yaml
    """
    try:
        snapshot = load_cluster(cluster)
        specs = _load_queue(jobs)
        placed = load_running(running, snapshot) if running is not None else []
    except SpecError as e:
        raise _fail(str(e)) from None
    queue = [QueuedJob.from_spec(s, submitted_at=float(i)) for i, s in enumerate(specs)]
    result = plan(snapshot, queue, placed, now)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_plan(result, snapshot, len(queue), len(placed))


app.command()(up)
app.command()(down)
app.command()(join)
app.command()(leave)
cli_mesh.token_app.command("join")(token_join)
# The commands that talk to a running mesh live in their own module.
app.registered_commands += cli_mesh.app.registered_commands
app.registered_groups += cli_mesh.app.registered_groups
app.registered_commands += cli_sim.app.registered_commands
app.registered_commands += cli_models.app.registered_commands
app.registered_groups += cli_models.app.registered_groups
