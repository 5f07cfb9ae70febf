"""`meshctl sim`: policies compared on a trace and a cluster, by simulation (no cluster needed).

The command parses, calls `scheduler.sim` (trace adapters, the engine, FGD's fill, the metrics)
and prints; it holds no logic. `scheduler.cli` adds it to the `meshctl` app.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from scheduler import terminal
from scheduler.policy.model import cpu_milli, mib
from scheduler.sim import packers
from scheduler.sim.fill import PackerFactory

app = typer.Typer()
out, err, _fail = terminal.out, terminal.err, terminal.fail

TABLE_WIDTH = 132  # a pipe would otherwise get 80 columns
CHECKPOINT_COST_S = 60.0  # seconds one checkpoint pauses a job, for every policy
FILL_SEEDS = 10  # FGD repeats each fill over ten seeds (42-51 in the paper)
# --mode fill: each policy's packing rule, as the packing benchmark runs it.
FILL_PACKERS: dict[str, PackerFactory] = {
    "mesh": packers.MeshPacker,
    "fifo-firstfit": packers.FirstFitPacker,
    "las": packers.FirstFitPacker,
    "best-fit": packers.BestFitPacker,
    "ray-default": packers.RayDefaultPacker,
}


class TraceFormat(StrEnum):
    gavel = "gavel"
    openb = "openb"
    csv = "csv"


class SimMode(StrEnum):
    run = "run"
    fill = "fill"


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich status line on stderr (none when `enabled` is false); yields a setter for it."""
    if not enabled:
        yield lambda _text: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("starting")
        yield lambda text: bar.update(task, description=text)


def _wide() -> Console:
    """Standard output at least TABLE_WIDTH wide, so that a pipe gets the whole table."""
    return Console(width=max(out.width, TABLE_WIDTH))


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _run_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="meshctl sim: one row per policy",
        caption="JCT, queue and makespan in simulated seconds; JCT over finished jobs",
    )
    columns = (
        ("policy", lambda r: r["policy"]),
        ("finished", lambda r: f"{r['finished']}/{r['jobs']}"),
        ("avg JCT", lambda r: _num(r["avg_jct_s"], ",.0f")),
        ("p50", lambda r: _num(r["p50_jct_s"], ",.0f")),
        ("p99", lambda r: _num(r["p99_jct_s"], ",.0f")),
        ("avg queue", lambda r: _num(r["avg_queue_s"], ",.0f")),
        ("makespan", lambda r: _num(r["makespan_s"], ",.0f")),
        ("util", lambda r: _num(r["gpu_utilization"], ".1%")),
        ("lost GPU-h", lambda r: _num(r["lost_gpu_hours"], ",.1f")),
        ("Jain", lambda r: _num(r["fairness_jain"], ".3f")),
        ("calls", lambda r: f"{r['plan_calls']:,}"),
        ("events/s", lambda r: _num(r["events_per_s"], ",.0f")),
    )
    for name, _ in columns:
        table.add_column(name, justify="left" if name == "policy" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(cell(row) for _, cell in columns))
    return table


def _fill_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="meshctl sim --mode fill: means over the seeds")
    for name in (
        "policy",
        "packer",
        "unalloc @100%",
        "unalloc @130%",
        "failed @100%",
        "failed @130%",
    ):
        if name in ("policy", "packer"):
            table.add_column(name, justify="left", no_wrap=True)
        else:
            table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["policy"],
            r["packer"],
            f"{r['gpus_unallocated_at_100']:.1f} ({r['unallocated_fraction_at_100']:.2%})",
            f"{r['gpus_unallocated_at_130']:.1f} ({r['unallocated_fraction_at_130']:.2%})",
            f"{r['pods_failed_at_100']:.1f}",
            f"{r['pods_failed_at_130']:.1f}",
        )
    return table


def _check_policies(names: list[str], known: tuple[str, ...]) -> None:
    for name in names:
        if name not in known:
            raise _fail(f"unknown policy {name!r}; choose from {', '.join(known)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail(f"--policy {twice[0]} is given twice; give each policy once")


@app.command("sim")
def sim_command(
    trace: Annotated[
        Path,
        typer.Option(
            "--trace", exists=True, help="The trace: a file, or a folder of Gavel .trace files"
        ),
    ],
    fmt: Annotated[TraceFormat, typer.Option("--format", help="How to read --trace")],
    cluster: Annotated[
        Path,
        typer.Option(
            "--cluster",
            exists=True,
            dir_okay=False,
            help="Cluster file (YAML), openb node list or spot node_info_df.csv",
        ),
    ],
    policies: Annotated[
        list[str],
        typer.Option(
            "--policy",
            help="A policy to run; repeat to compare: mesh, fifo-firstfit, las, best-fit,"
            " ray-default",
        ),
    ],
    time_scale: Annotated[
        float,
        typer.Option(
            "--time-scale", help="Multiply arrival times by this (> 0; below 1 raises the load)"
        ),
    ] = 1.0,
    churn: Annotated[
        str | None,
        typer.Option("--churn", help="Node churn, e.g. exp:mtbf=24h,mttr=2h,spread=lognormal:1.0"),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the churn; in fill mode, the first seed")
    ] = 0,
    mode: Annotated[
        SimMode,
        typer.Option("--mode", help=f"run: replay the trace; fill: FGD's fill, {FILL_SEEDS} seeds"),
    ] = SimMode.run,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, one object per policy")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a PNG of the JCT CDF per policy (needs 2+ policies)"),
    ] = None,
    plan_interval: Annotated[
        float,
        typer.Option("--plan-interval", min=0, help="Seconds of simulated time between calls"),
    ] = 60.0,
) -> None:
    """Compare scheduling policies on a trace and a cluster by discrete-event simulation.

    Every --policy runs on the same trace, cluster and seed; the policy is called as the
    controller calls it, at most once per --plan-interval of simulated time. --mode fill runs FGD's
    fill on an openb pod list (--format openb) for seeds N..N+9 (N = --seed), with each policy's
    packing rule, and reports the GPUs left unallocated at 100% and 130% of capacity requested.

    A csv trace has the header arrival_s,duration_s,gpus,gpu_memory_gb,community (the last two
    optional).

    Example: meshctl sim --trace examples/traces/volunteers-day.csv --format csv --cluster
    examples/clusters/volunteers-small.yaml --policy mesh --policy fifo-firstfit
    """
    from scheduler.sim.policies import POLICY_NAMES  # lazily: it loads every policy's module

    _check_policies(policies, POLICY_NAMES)
    if plot is not None:
        if mode is SimMode.fill or len(policies) < 2:
            raise _fail("--plot draws a JCT CDF per policy: give --mode run and 2 or more --policy")
        if importlib.util.find_spec("matplotlib") is None:
            raise _fail("--plot needs matplotlib. To fix: pip install 'community-mesh[sim]'")
    if mode is SimMode.fill:
        if churn is not None:
            raise _fail("--churn applies to --mode run; a fill has no time in which nodes fail")
        rows = _fill(trace, fmt, cluster, policies, seed, progress=not as_json)
    else:
        rows = _run(
            trace, fmt, cluster, policies, seed, time_scale, churn, plan_interval, plot, not as_json
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if mode is SimMode.fill:
        _wide().print(_fill_table(rows))
        out.print(
            f"FGD fill of {rows[0]['gpus_total']:g} GPUs with pods drawn from {trace.name},"
            f" seeds {seed}-{seed + FILL_SEEDS - 1}; unalloc = GPUs left unallocated when the"
            " GPUs requested reach 100% / 130% of capacity",
            highlight=False,
            soft_wrap=True,
        )
        return
    _wide().print(_run_table(rows))
    first = rows[0]
    dropped = f"; {first['dropped']} jobs of the trace dropped" if first["dropped"] else ""
    out.print(
        f"Plan rule: {first['plan_rule']}. Churn: {first['churn'] or 'none'}; time scale"
        f" {time_scale:g}; checkpoint cost {CHECKPOINT_COST_S:g} s; seed {seed}{dropped}.",
        highlight=False,
        soft_wrap=True,
    )


def _run(
    trace_path: Path,
    fmt: TraceFormat,
    cluster: Path,
    policies: list[str],
    seed: int,
    time_scale: float,
    churn_text: str | None,
    plan_interval: float,
    plot: Path | None,
    progress: bool,
) -> list[dict[str, Any]]:
    from scheduler.sim.churn import ChurnSpec
    from scheduler.sim.engine import PolicyError, SimResult, simulate
    from scheduler.sim.metrics import plot_jct_cdf, summary
    from scheduler.sim.policies import policy_by_name
    from scheduler.sim.traces import load_any_cluster, read_trace

    try:
        churn = ChurnSpec.parse(churn_text) if churn_text is not None else None
        snapshot = load_any_cluster(cluster)
        trace = read_trace(trace_path, fmt.value, time_scale=time_scale)
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from None
    results: list[SimResult] = []
    with _progress(progress) as show:
        for name in policies:
            policy = policy_by_name(name, checkpoint_cost_s=CHECKPOINT_COST_S)

            def tell(events: int, now: float, name: str = name) -> None:
                show(f"{name}: {events:,} events, simulated {now / 3600:,.1f} h")

            show(f"{name}: starting")
            try:
                results.append(
                    simulate(
                        snapshot,
                        trace,
                        policy,
                        churn=churn,
                        seed=seed,
                        plan_interval_s=plan_interval,
                        checkpoint_cost_s=CHECKPOINT_COST_S,
                        progress=tell,
                    )
                )
            except PolicyError as e:
                raise _fail(f"the simulator stopped the run: {e}", code=1) from None
    if plot is not None:
        plot_jct_cdf(results, plot)
    return [summary(r, time_scale=time_scale) for r in results]


def _fill(
    trace_path: Path,
    fmt: TraceFormat,
    cluster: Path,
    policies: list[str],
    seed: int,
    *,
    progress: bool,
) -> list[dict[str, Any]]:
    from scheduler.sim.fill import FillResult, FleetNode, fill, read_pods
    from scheduler.sim.metrics import fill_summary
    from scheduler.sim.traces import load_any_cluster

    if fmt is not TraceFormat.openb:
        raise _fail("--mode fill draws pods from an openb pod list: give --format openb")
    try:
        snapshot = load_any_cluster(cluster)
        pods = read_pods(trace_path)
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from None
    fleet: list[FleetNode] = []
    for node in snapshot.nodes:
        if len(node.gpu_models) > 1:
            raise _fail(f"node {node.name} mixes GPU models; --mode fill takes one model per node")
        fleet.append(
            FleetNode(
                name=node.name,
                cpu_milli=cpu_milli(node.cpus),
                memory_mib=mib(node.memory_gb),
                gpu_count=len(node.gpus),
                gpu_model=node.gpu_models[0] if node.gpus else None,
            )
        )
    rows = []
    with _progress(progress) as show:
        for name in policies:
            results: list[FillResult] = []
            for s in range(seed, seed + FILL_SEEDS):
                show(f"fill {name}: seed {s} ({s - seed + 1}/{FILL_SEEDS})")
                try:
                    results.append(fill(fleet, pods, FILL_PACKERS[name], s))
                except ValueError as e:
                    raise _fail(str(e)) from None
            rows.append(fill_summary(name, results))
    return rows
