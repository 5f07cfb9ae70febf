"""Our policy against the baselines in the trace-driven simulator, on the targets of issue 7.

    python benchmarks/sim_policies.py [--quick] [--json] [--only gavel|churn|scale]
        [--time-scale X] [--gavel-jobs N (0: whole traces)] [--seeds 0,1] [--policies a,b]

Every policy runs on the same trace, cluster and seed in one run; the tables print ours beside
each baseline. Scenarios:

- gavel: Gavel's Philly-derived traces (seed=0 and seed=1 folders, the first --gavel-jobs jobs of
  each) on examples/clusters/gavel-108.yaml (36 V100 + 36 P100 + 36 K80), with arrivals
  multiplied by --time-scale. A job runs at the measured speed of the GPUs it got
  (simulation_throughputs.json). The load condition of the target is checked and printed:
  fifo-firstfit's average queueing delay must exceed the average runtime.
- churn: a generated 500-GPU volunteer fleet (scheduler.sim.generate.volunteer_fleet, MTBFs
  drawn by the churn model) under `exp:mtbf=12h,mttr=1h,spread=lognormal:1.0`, fed a seeded
  stream of fine-tunes (scheduler.sim.generate.job_stream); lost GPU-hours of each policy.
- scale: --scale-jobs jobs (100,000 by default) of the same stream on the Alibaba spot fleet
  (10,412 GPUs) with `mesh`, one every --scale-interarrival seconds on average (0.8 by default:
  more GPU demand than the fleet has, so thousands of jobs wait at once): wall time, events/s,
  planning calls, peak memory, mean queueing delay and the most jobs waiting at once.

The fill procedure (FGD, openb pod lists) is benchmarks/packing.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from scheduler.cluster import ClusterSnapshot, load_cluster
from scheduler.sim.churn import ChurnSpec
from scheduler.sim.engine import SimResult, simulate
from scheduler.sim.fill import trace_dir
from scheduler.sim.generate import job_stream, volunteer_fleet
from scheduler.sim.metrics import summary
from scheduler.sim.model import Trace
from scheduler.sim.policies import POLICY_NAMES, policy_by_name
from scheduler.sim.traces import cluster_from_spot, read_trace

CHURN = "exp:mtbf=12h,mttr=1h,spread=lognormal:1.0"
out = Console()
if not out.is_terminal:
    out = Console(width=120)  # piped to a file: wide enough for every column
err = Console(stderr=True)


def run_policies(
    cluster: ClusterSnapshot,
    trace: Trace,
    policies: tuple[str, ...],
    *,
    churn: ChurnSpec | None = None,
    seed: int = 0,
    time_scale: float = 1.0,
) -> list[dict[str, Any]]:
    rows = []
    for name in policies:
        err.print(f"  {name} on {trace.source} ({len(trace.jobs):,} jobs)...")
        result = simulate(cluster, trace, policy_by_name(name), churn=churn, seed=seed)
        rows.append(summary(result, time_scale=time_scale))
    return rows


def table(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    t = Table(title=title)
    t.add_column("policy")
    for c in columns:
        t.add_column(c, justify="right")
    mesh = next((r for r in rows if r["policy"] == "mesh"), None)
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            text = f"{v:,.3f}" if isinstance(v, float) else str(v)
            if mesh is not None and r is not mesh and isinstance(v, float) and v > 0:
                text += f" ({mesh[c] / v:.2f}x)"
            cells.append(text)
        t.add_row(r["policy"], *cells)
    out.print(t)
    if mesh is not None:
        out.print("(Nx): mesh's figure divided by that policy's", style="dim")


def gavel(args: argparse.Namespace) -> list[dict[str, Any]]:
    cluster = load_cluster("examples/clusters/gavel-108.yaml")
    found = []
    for seed in args.seeds:
        trace = read_trace(
            trace_dir().parent / "gavel" / f"seed={seed}", "gavel", time_scale=args.time_scale
        )
        if args.gavel_jobs:
            trace = Trace(
                trace.jobs[: args.gavel_jobs], trace.source, trace.dropped, trace.dropped_why
            )
        rows = run_policies(cluster, trace, args.policies, seed=seed, time_scale=args.time_scale)
        fifo = next((r for r in rows if r["policy"] == "fifo-firstfit"), None)
        runtime = sum(j.duration_s for j in trace.jobs) / len(trace.jobs)
        loaded = fifo is not None and fifo["avg_queue_s"] > runtime
        table(
            f"Gavel seed={seed}: {'first ' if args.gavel_jobs else ''}{len(trace.jobs):,} jobs,"
            f" time scale {args.time_scale:g}, "
            f"gavel-108 ({trace.dropped:,} of the trace dropped: {trace.dropped_why})",
            rows,
            ("avg_jct_s", "p50_jct_s", "p99_jct_s", "avg_queue_s", "makespan_s", "fairness_jain"),
        )
        if fifo is None:
            out.print("load condition: not checked (fifo-firstfit was not run)")
        else:
            out.print(
                f"load condition: fifo-firstfit's average queueing delay"
                f" {fifo['avg_queue_s']:,.0f} s {'>' if loaded else '<='} the average runtime on"
                f" the fastest GPU {runtime:,.0f} s:"
                f" {'met' if loaded else 'NOT met; lower --time-scale'}"
            )
        found += [{**r, "scenario": f"gavel-seed{seed}", "loaded": loaded} for r in rows]
    return found


def churn(args: argparse.Namespace) -> list[dict[str, Any]]:
    fleet = volunteer_fleet(500, seed=0)
    # every node's MTBF comes from the churn model (spread around 12 h), none from the fleet
    fleet = ClusterSnapshot(tuple(dataclasses.replace(n, mtbf_h=None) for n in fleet.nodes))
    trace = job_stream(args.churn_jobs, seed=1, mean_interarrival_s=60.0)
    rows = run_policies(
        fleet, trace, ("mesh", "fifo-firstfit", "best-fit"), churn=ChurnSpec.parse(CHURN), seed=0
    )
    table(
        f"Churn {CHURN} on a {fleet.total_gpus}-GPU volunteer fleet, {len(trace.jobs):,} jobs",
        rows,
        ("lost_gpu_hours", "avg_jct_s", "gpu_utilization", "finished"),
    )
    return [{**r, "scenario": "churn"} for r in rows]


def scale(args: argparse.Namespace) -> list[dict[str, Any]]:
    fleet = cluster_from_spot(trace_dir().parent / "alibaba-spot-2026" / "node_info_df.csv")
    trace = job_stream(args.scale_jobs, seed=2, mean_interarrival_s=args.scale_interarrival)
    start = time.perf_counter()
    total_events = 2 * len(trace.jobs)  # an arrival and an end each, without preemptions
    shown = 0

    def progress(events: int, now: float) -> None:
        nonlocal shown
        if events - shown >= 20_000:
            shown = events
            err.print(
                f"  scale: {events:,} of about {total_events:,} events, simulated"
                f" {now / 3600:,.1f} h, {time.perf_counter() - start:,.0f} s"
            )

    err.print(f"  mesh on {len(trace.jobs):,} jobs, {fleet.total_gpus:,} GPUs...")
    result = simulate(fleet, trace, policy_by_name("mesh"), progress=progress)
    wall = time.perf_counter() - start
    s = summary(result)
    waiting = most_waiting(result)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = Table(
        title=f"Scale: {len(trace.jobs):,} jobs on the spot fleet ({fleet.total_gpus:,} GPUs)"
    )
    for c in (
        "wall s",
        "events",
        "events/s",
        "plans",
        "s/plan",
        "peak GiB",
        "finished",
        "JCT s",
        "queue s",
        "most waiting",
    ):
        t.add_column(c, justify="right")
    t.add_row(
        f"{wall:,.0f}",
        f"{s['events']:,}",
        f"{s['events'] / wall:,.0f}",
        f"{s['plan_calls']:,}",
        f"{wall / max(1, s['plan_calls']):.3f}",
        f"{peak_gib:.2f}",
        f"{s['finished']:,}",
        f"{s['avg_jct_s']:,.0f}",
        f"{s['avg_queue_s']:,.0f}",
        f"{waiting:,}",
    )
    out.print(t)
    return [
        {**s, "scenario": "scale", "wall_s": wall, "peak_gib": peak_gib, "most_waiting": waiting}
    ]


def most_waiting(result: SimResult) -> int:
    """The most jobs waiting for their first start at any moment of the run."""
    steps = [(j.arrival_s, 1) for j in result.jobs]
    steps += [(j.first_start_s, -1) for j in result.jobs if j.first_start_s is not None]
    steps.sort()  # at equal times a start (-1) comes before an arrival
    now = most = 0
    for _, change in steps:
        now += change
        most = max(most, now)
    return most


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", choices=("gavel", "churn", "scale"))
    ap.add_argument("--time-scale", type=float, default=0.5)
    ap.add_argument("--gavel-jobs", type=int, default=2000, help="the first N jobs; 0: all")
    ap.add_argument("--seeds", default="0,1", help="Gavel trace seeds, e.g. 0 or 0,1")
    ap.add_argument("--churn-jobs", type=int, default=3000)
    ap.add_argument("--scale-jobs", type=int, default=100_000)
    ap.add_argument("--scale-interarrival", type=float, default=0.8)
    ap.add_argument(
        "--policies", default=",".join(POLICY_NAMES), help="Gavel: the policies to compare"
    )
    args = ap.parse_args()
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds: {args.seeds!r} is not a list of seeds; write e.g. 0 or 0,1")
    args.policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    unknown = [p for p in args.policies if p not in POLICY_NAMES]
    if unknown:
        ap.error(f"unknown policies {unknown}; choose from {', '.join(POLICY_NAMES)}")
    if args.json:  # the tables go to stderr, the JSON alone to stdout
        global out
        out = err
    if args.quick:
        args.gavel_jobs, args.churn_jobs, args.scale_jobs = 300, 500, 5000
    rows: list[dict[str, Any]] = []
    for name, fn in (("gavel", gavel), ("churn", churn), ("scale", scale)):
        if args.only in (None, name):
            rows += fn(args)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
