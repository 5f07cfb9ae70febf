"""FGD's fill on the Alibaba openb fleet: the GPUs each packer leaves unallocated, side by side.

    python benchmarks/packing.py [--lists default,gpushare40,multigpu30,gpuspec10] [--seeds 42-51]
        [--packers mesh,first-fit,best-fit,ray-2.60] [--nodes gpu_node] [--json]

For every (pod list, seed, packer) it runs `scheduler.sim.fill.fill` (pods drawn at random keep
arriving and never leave, until the GPUs requested reach 130% of the fleet's capacity), then prints
one table per pod list and one averaged over the lists. Data: alibaba/clusterdata
cluster-trace-gpu-v2023 (Weng et al., "Beware of Fragmentation", USENIX ATC'23), read in place from
../shared/traces. Runs go to 2 worker processes; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from multiprocessing import Pool
from pathlib import Path
from statistics import mean

from rich.console import Console
from rich.table import Table

import scheduler.sim.packers as packers
from scheduler.sim.fill import (
    LISTS,
    NODE_LISTS,
    FillResult,
    FleetNode,
    PackerFactory,
    Pod,
    fill,
    read_nodes,
    read_pods,
    trace_dir,
)

BASELINES: dict[str, PackerFactory] = {
    "first-fit": packers.FirstFitPacker,
    "best-fit": packers.BestFitPacker,
    "ray-2.60": packers.RayDefaultPacker,
}
REFERENCES = (("best-fit", "vs best-fit"), ("first-fit", "vs first-fit"), ("ray-2.60", "vs ray"))
WORKERS = 2
TABLE_WIDTH = 124


def available_packers() -> dict[str, PackerFactory]:
    """The mesh policy's packer and the baselines."""
    return {"mesh": packers.MeshPacker, **BASELINES}


def parse_seeds(text: str) -> list[int]:
    """`42-51`, `42,45` or a mix (`42-44,50`) as a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            seeds.extend(range(int(low), int(high) + 1) if sep else [int(part)])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"seeds: {part!r} is not a seed or a range; write e.g. 42-51 or 42,43"
            ) from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}; write e.g. 42-51 or 42,43")
    return seeds


def seed_label(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]} ({len(seeds)})"
    return f"seeds {','.join(map(str, seeds))}"


def parse_names(text: str, known: list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return names


_NODES: dict[Path, list[FleetNode]] = {}
_PODS: dict[Path, list[Pod]] = {}


Task = tuple[str, str, int, str]  # (node list file, pod list name, seed, packer name)


def run_one(task: Task) -> tuple[str, FillResult, float]:
    """One fill, in a worker process; the files are read once per worker."""
    nodes_file, list_name, seed, packer = task
    folder = trace_dir()
    nodes_path, pods_path = folder / nodes_file, folder / LISTS[list_name]
    if nodes_path not in _NODES:
        _NODES[nodes_path] = read_nodes(nodes_path)
    if pods_path not in _PODS:
        _PODS[pods_path] = read_pods(pods_path)
    started = time.perf_counter()
    result = fill(_NODES[nodes_path], _PODS[pods_path], available_packers()[packer], seed)
    return list_name, result, time.perf_counter() - started


def summarise(results: list[FillResult]) -> dict[str, float]:
    """Means over seeds of one packer on one pod list."""
    total = results[0].gpus_total
    return {
        "seeds": len(results),
        "gpus_total": total,
        "unallocated_at_100": mean(r.unallocated_at_100 for r in results),
        "unallocated_at_130": mean(r.unallocated_at_130 for r in results),
        "failed_at_100": mean(r.failed_at_100 for r in results),
        "failed_at_130": mean(r.failed_at_130 for r in results),
        "arrived_at_130": mean(r.arrived_at_130 for r in results),
    }


def ratio(value: float, reference: float | None) -> float | None:
    if reference is None or reference == 0:
        return None
    return value / reference


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def list_table(name: str, summary: dict[str, dict[str, float]], seeds: list[int]) -> Table:
    table = Table(
        title=f"{name}: {int(next(iter(summary.values()))['gpus_total'])} GPUs, "
        f"{seed_label(seeds)}; means over seeds",
        caption="vs columns: unallocated GPUs at 130% / the reference packer's (lower is better)",
    )
    for column in (
        "packer",
        "unalloc @100%",
        "unalloc @130%",
        "failed @100%",
        "failed @130%",
        *(label for _, label in REFERENCES),
    ):
        table.add_column(column, justify="left" if column == "packer" else "right", no_wrap=True)
    for packer, s in summary.items():
        total = s["gpus_total"]
        refs = [
            _fmt_ratio(
                ratio(s["unallocated_at_130"], summary.get(ref, {}).get("unallocated_at_130"))
            )
            for ref, _ in REFERENCES
        ]
        table.add_row(
            packer,
            f"{s['unallocated_at_100']:.1f} ({100 * s['unallocated_at_100'] / total:.2f}%)",
            f"{s['unallocated_at_130']:.1f} ({100 * s['unallocated_at_130'] / total:.2f}%)",
            f"{s['failed_at_100']:.0f}",
            f"{s['failed_at_130']:.0f}",
            *refs,
        )
    return table


def average_over_lists(
    summaries: dict[str, dict[str, dict[str, float]]], packer_names: list[str]
) -> dict[str, dict[str, float | None]]:
    """Per packer: mean unallocated share at 100% and 130% over the lists, and its ratios."""
    means: dict[str, dict[str, float]] = {}
    for packer in packer_names:
        rows = [s[packer] for s in summaries.values() if packer in s]
        means[packer] = {
            f"at_{mark}": mean(r[f"unallocated_at_{mark}"] / r["gpus_total"] for r in rows)
            for mark in (100, 130)
        }
    out: dict[str, dict[str, float | None]] = {}
    for packer, m in means.items():
        row: dict[str, float | None] = {
            "unallocated_fraction_100": m["at_100"],
            "unallocated_fraction_130": m["at_130"],
        }
        for ref, label in (("first-fit", "first_fit"), ("ray-2.60", "ray")):
            for mark in (130, 100):
                reference = means.get(ref, {}).get(f"at_{mark}")
                row[f"vs_{label}_{mark}"] = ratio(m[f"at_{mark}"], reference)
        out[packer] = row
    return out


def average_table(average: dict[str, dict[str, float | None]], lists: list[str]) -> Table:
    table = Table(
        title=f"average over the lists ({', '.join(lists)})",
        caption="ratios of mean unallocated GPUs to the reference packer's (lower is better)",
    )
    columns = ["packer", "unalloc @100%", "unalloc @130%"]
    columns += ["vs first-fit @130%", "vs ray @130%", "vs first-fit @100%", "vs ray @100%"]
    for column in columns:
        table.add_column(column, justify="left" if column == "packer" else "right", no_wrap=True)
    for packer, row in average.items():
        table.add_row(
            packer,
            f"{100 * (row['unallocated_fraction_100'] or 0):.2f}%",
            f"{100 * (row['unallocated_fraction_130'] or 0):.2f}%",
            _fmt_ratio(row["vs_first_fit_130"]),
            _fmt_ratio(row["vs_ray_130"]),
            _fmt_ratio(row["vs_first_fit_100"]),
            _fmt_ratio(row["vs_ray_100"]),
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lists", default=",".join(LISTS), help="pod lists, comma-separated")
    parser.add_argument("--seeds", default="42-51", help="e.g. 42-51 or 42,43")
    parser.add_argument(
        "--packers", default="mesh,first-fit,best-fit,ray-2.60", help="packers, comma-separated"
    )
    parser.add_argument("--nodes", default="gpu_node", choices=sorted(NODE_LISTS))
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    err = Console(stderr=True)
    try:
        lists = parse_names(args.lists, list(LISTS), "pod list")
        seeds = parse_seeds(args.seeds)
        packer_names = parse_names(args.packers, ["mesh", *BASELINES], "packer")
        trace_dir()
    except (argparse.ArgumentTypeError, ValueError, FileNotFoundError) as e:
        err.print(f"error: {e}")
        return 2

    # 1. Every (list, seed, packer) run, two at a time.
    tasks: list[Task] = [
        (NODE_LISTS[args.nodes], name, seed, packer)
        for name in lists
        for seed in seeds
        for packer in packer_names
    ]
    results: dict[str, dict[str, list[FillResult]]] = {
        name: {packer: [] for packer in packer_names} for name in lists
    }
    runs: list[tuple[str, FillResult, float]] = []
    started = time.perf_counter()
    with Pool(WORKERS) as pool:
        for done, (name, result, seconds) in enumerate(pool.imap_unordered(run_one, tasks), 1):
            results[name][result.packer].append(result)
            runs.append((name, result, seconds))
            err.print(
                f"[{done}/{len(tasks)}] {name} seed {result.seed} {result.packer}: {seconds:.1f} s"
            )
    err.print(f"{len(tasks)} runs in {time.perf_counter() - started:.1f} s on {WORKERS} workers")

    # 2. Means per list, then over the lists.
    summaries = {
        name: {packer: summarise(rs) for packer, rs in by_packer.items()}
        for name, by_packer in results.items()
    }
    average = average_over_lists(summaries, packer_names)

    # 3. Print.
    if args.json:
        runs.sort(key=lambda run: (lists.index(run[0]), run[1].seed, run[1].packer))
        records = [
            {"list": name, "seconds": round(seconds, 2), **asdict(result)}
            for name, result, seconds in runs
        ]
        document = {"nodes": args.nodes, "seeds": seeds, "runs": records}
        document |= {"per_list": summaries, "average": average}
        print(json.dumps(document, indent=2))
        return 0
    out = Console(width=max(Console().width, TABLE_WIDTH))  # a pipe would otherwise get 80
    for name in lists:
        out.print(list_table(name, summaries[name], seeds))
    out.print(average_table(average, lists))
    return 0


if __name__ == "__main__":
    sys.exit(main())
