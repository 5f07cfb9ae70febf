"""The figures a simulation reports, from a `SimResult` (run mode) or `FillResult`s (fill mode).

Definitions (times in simulated seconds):

- JCT (job completion time) = finish - arrival, over finished jobs only; jobs that did not finish
  (still queued or running when the run stopped) are counted in `unfinished`, and jobs the trace
  adapter could not use in `dropped`.
- Percentiles are nearest-rank: the p-th percentile of n sorted values is the value at rank
  ceil(p / 100 * n) (1-based).
- `avg_queue_s`: arrival to first start, over the jobs that started.
- `makespan_s`: first arrival to the end of the run (the last completion, or where it stopped).
- `gpu_utilization`: GPU-seconds held by running jobs (shared fractions count as fractions,
  checkpoint pauses count as held) / GPU-seconds of capacity of the nodes that were up, both over
  the makespan.
- `lost_gpu_hours`: for every interruption by a node going down, the seconds since the job's last
  checkpoint (or its start) x the GPUs it held, in hours.
- `fairness_jain`: Jain's index (sum x)^2 / (n sum x^2) over the n communities with a finished
  job, where x = 1 / the community's mean slowdown and slowdown = JCT / the job's `duration_s`
  (its runtime on the trace's reference speed). 1 is perfectly even; 1/n is one community served.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from scheduler.sim.engine import SimResult
from scheduler.sim.fill import FillResult


def nearest_rank(sorted_values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0 < p <= 100) by nearest rank; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(round(p / 100 * len(sorted_values), 9)))
    return sorted_values[rank - 1]


def jain(values: Sequence[float]) -> float | None:
    """Jain's fairness index of `values`; None for none."""
    if not values:
        return None
    squares = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * squares) if squares else 1.0


def fairness_over_communities(result: SimResult) -> float | None:
    """Jain's index over communities of 1 / mean slowdown (see the module docstring)."""
    slowdowns: dict[str, list[float]] = {}
    for job in result.jobs:
        jct = job.jct_s
        if jct is not None and job.duration_s > 0:
            slowdowns.setdefault(job.community, []).append(jct / job.duration_s)
    inverse = [1.0 / fmean(s) for s in slowdowns.values() if fmean(s) > 0]
    return jain(inverse)


def jcts(result: SimResult) -> list[float]:
    """The JCTs of the finished jobs, sorted."""
    return sorted(j.jct_s for j in result.jobs if j.jct_s is not None)


def summary(result: SimResult, *, time_scale: float = 1.0) -> dict[str, Any]:
    """One policy's run as the JSON object `meshctl sim --json` prints."""
    done = jcts(result)
    started = [j.first_start_s - j.arrival_s for j in result.jobs if j.first_start_s is not None]
    makespan = result.end_s - result.start_s
    return {
        "policy": result.policy,
        "mode": "run",
        "jobs": len(result.jobs),
        "finished": len(done),
        "unfinished": len(result.jobs) - len(done),
        "dropped": result.dropped,
        "avg_jct_s": fmean(done) if done else None,
        "p50_jct_s": nearest_rank(done, 50),
        "p99_jct_s": nearest_rank(done, 99),
        "makespan_s": makespan,
        "avg_queue_s": fmean(started) if started else None,
        "gpu_utilization": (
            result.gpu_seconds_held / result.gpu_seconds_up if result.gpu_seconds_up else None
        ),
        "lost_gpu_hours": result.lost_gpu_seconds / 3600.0,
        "fairness_jain": fairness_over_communities(result),
        "preemptions": sum(j.preemptions for j in result.jobs),
        "interruptions": sum(j.interruptions for j in result.jobs),
        "plan_calls": result.plan_calls,
        "events": result.events,
        "events_per_s": result.events / result.wall_s if result.wall_s > 0 else None,
        "wall_s": result.wall_s,
        "plan_rule": result.plan_rule,
        "plan_interval_s": result.plan_interval_s,
        "checkpoint_cost_s": result.checkpoint_cost_s,
        "churn": result.churn,
        "seed": result.seed,
        "time_scale": time_scale,
    }


def fill_summary(policy: str, results: Sequence[FillResult]) -> dict[str, Any]:
    """One policy's FGD fills, means over the seeds, as `meshctl sim --mode fill --json` prints.

    `gpus_allocated`, `gpus_unallocated`, `unallocated_fraction` and `pods_failed` are at 130% of
    capacity requested, the end of the fill; the same figures at 100% and 130% have the suffixes
    `_at_100` and `_at_130`.
    """
    if not results:
        raise ValueError("no fill results to summarise")
    total = results[0].gpus_total
    out: dict[str, Any] = {
        "policy": policy,
        "mode": "fill",
        "packer": results[0].packer,
        "seeds": [r.seed for r in results],
        "gpus_total": total,
    }
    for mark in (100, 130):
        unallocated = fmean(getattr(r, f"unallocated_at_{mark}") for r in results)
        out[f"gpus_allocated_at_{mark}"] = total - unallocated
        out[f"gpus_unallocated_at_{mark}"] = unallocated
        out[f"unallocated_fraction_at_{mark}"] = unallocated / total
        out[f"pods_failed_at_{mark}"] = fmean(getattr(r, f"failed_at_{mark}") for r in results)
    for key in ("gpus_allocated", "gpus_unallocated", "unallocated_fraction", "pods_failed"):
        out[key] = out[f"{key}_at_130"]
    return out


def plot_jct_cdf(results: Sequence[SimResult], path: str | Path) -> None:
    """Write a PNG of each policy's JCT CDF (finished jobs) to `path`; needs matplotlib."""
    import matplotlib  # lazily: only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in results:
        values = jcts(result)
        if values:
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, ys, where="post", label=f"{result.policy} ({len(values)} finished)")
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (s, log scale)")
    ax.set_ylabel("fraction of finished jobs")
    ax.set_title("JCT CDF per policy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
