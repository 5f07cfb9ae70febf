"""How fast the mesh drains a queue of 1-GPU Probe jobs, beside the ideal drain time.

    python benchmarks/queue_drain.py [--jobs 1000] [--quick] [--duration 1] [--json]

Starts a local Ray cluster of examples/clusters/volunteers-small.yaml (7 nodes with declared,
simulated GPUs, 10 GPUs in all; the work runs on this machine's CPUs) plus a head with 2 CPUs,
and the mesh with the defaults of `scheduler.controller.Settings`. Then:

1. submits every job first, one POST at a time from one client (1,000, or 100 with `--quick`;
   each a Probe of 1 GPU, `duration_s` 1, matmul_size 256), and measures the submit rate. The
   controller starts placing as soon as the first job arrives;
2. waits until every job has ended, reading the audit log as it grows (one GET every 2 s);
3. measures, from the audit records (the controller's clock; this machine's): jobs placed and
   finished per second, the drain time (first submission to last end), the GPU time split into
   free, placed before the Probe starts, the Probe's own run and after it (each Probe's start
   and end from its report), the median gap a GPU stays free between two jobs, the
   controller's CPU seconds (`stats()` before and after) per job placed, and the CPU seconds
   of this run's processes (the Ray cluster this script started, read from /proc every
   0.25 s; a process that ends counts with its last reading).

There is no baseline to run beside it; the table shows the ideal drain time, jobs x duration /
GPUs (every GPU busy with work all the time, zero overhead), beside the one measured, and GPU
utilisation (10 GPUs x the drain time as the whole) as GPU-seconds allocated (PLACED to end), as
RUNNING GPU-seconds (what the mesh bills) and as work GPU-seconds (each Probe's own start to end,
from its report, read after the drain). Progress goes to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from rich.console import Console
from rich.table import Table

from cluster.nodes import local_mesh
from scheduler import actuator
from scheduler.cluster import ClusterSnapshot, Node, load_cluster
from scheduler.controller import Settings

CLUSTER_FILE = (
    Path(__file__).resolve().parents[1] / "examples" / "clusters" / "volunteers-small.yaml"
)
HEAD = Node("head", cpus=2, memory_gb=4)
COMMUNITY = "bio-ml"
PREFIX = "drain-"
ADMIN_TOKEN = "bench-admin-token"
JOBS, QUICK_JOBS = 1_000, 100
MATMUL_SIZE = 256
POLL_S = 2.0
PROGRESS_S = 15.0
ENDS = frozenset({"succeed", "fail", "cancel"})
LEAVES = ENDS | {"requeue", "retry", "preempt", "interrupt"}  # audit kinds that free a placement
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.25


def probe_spec(name: str, duration_s: float) -> dict[str, Any]:
    return {
        "apiVersion": "mesh/v1",
        "kind": "Probe",
        "name": name,
        "community": COMMUNITY,
        "resources": {"gpus": 1},
        "probe": {"duration_s": duration_s, "matmul_size": MATMUL_SIZE},
    }


@contextmanager
def mesh_up(snapshot: ClusterSnapshot, err: Console) -> Iterator[str]:
    """A local Ray cluster of HEAD and the snapshot's nodes with the mesh on it; the API's URL."""
    # Ray prints the cluster's messages (one when Serve shuts down) on stdout: keep it for --json
    with (
        redirect_stdout(sys.stderr),
        tempfile.TemporaryDirectory(prefix="mesh-bench-") as home,
    ):
        started = time.perf_counter()
        with local_mesh(
            HEAD,
            snapshot.nodes,
            home=Path(home),
            admin_token=ADMIN_TOKEN,
            progress=lambda m: err.print(m, highlight=False),
        ) as (_, api):
            err.print(f"mesh up at {api} in {time.perf_counter() - started:.1f} s", highlight=False)
            yield api


# --- CPU and memory of this run's processes, from /proc -----------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    group: str
    cpu_s: float  # its own user + system time
    rss_mb: float


def _group(pid: int, root: int, comm: str) -> str:
    if pid == root:
        return "this script (driver, HTTP client, sampler)"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other Ray processes"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        name = first[5:].split(" ")[0].split(":")[0].split(".")[0]
        if name == "MeshController":
            return "controller (ray::MeshController)"
        if name == "WorkloadActor":
            return WORKLOADS
        if name in ("ServeController", "ProxyActor", "ServeReplica", "SERVE_REPLICA"):
            return "Serve (controller, proxy, API replica)"
        if name in ("DashboardAgent", "RuntimeEnvAgent"):
            return "Ray agents, dashboard, monitors"
        return "Ray workers that never held a workload"
    text = " ".join(a.decode(errors="replace") for a in argv)
    if "raylet" in comm or "/raylet" in text:
        return "raylets (8)"
    if "gcs_server" in comm or "gcs_server" in text:
        return "GCS"
    return "Ray agents, dashboard, monitors"


WORKLOADS = "workload actors (Probe workers)"


def processes(root: int) -> list[Proc]:
    """`root` and every process below it (raylets, their workers, the GCS, the agents)."""
    stats: dict[int, tuple[str, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        stats[int(entry.name)] = (comm, text[text.rindex(")") + 2 :].split())
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (_, fields) in stats.items():
        children[int(fields[1])].append(pid)
    found: list[Proc] = []
    todo = [root]
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    while todo:
        pid = todo.pop()
        if pid not in stats:
            continue
        comm, f = stats[pid]
        cpu = (int(f[11]) + int(f[12])) / CLK_TCK
        found.append(Proc(pid, _group(pid, root, comm), cpu, int(f[21]) * page_mb))
        todo += children.get(pid, [])
    return found


class Sampler:
    """Reads this run's processes every SAMPLE_S in a thread: CPU by group, peak memory.

    Raylets reap their workers without accounting for them (no children's time), so a process
    that ends is counted with its CPU time at its last reading: a lower bound, short by at most
    SAMPLE_S of its life.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.first = {p.pid: p for p in processes(root)}
        self.last = dict(self.first)
        self.groups: dict[int, str] = {}
        self.peak_rss_mb = 0.0
        self.rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        now = processes(self.root)
        for p in now:
            self.last[p.pid] = p
            if self.groups.get(p.pid) != WORKLOADS:  # a worker that held a workload stays one
                self.groups[p.pid] = p.group
        self.rss_mb = sum(p.rss_mb for p in now)
        self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb)

    def stop(self) -> dict[str, float]:
        """CPU seconds each group used since the sampler started."""
        self._stop.set()
        self._thread.join()
        self.sample()
        used: dict[str, float] = defaultdict(float)
        for pid, p in self.last.items():
            was = self.first.get(pid)
            used[self.groups.get(pid, p.group)] += p.cpu_s - (was.cpu_s if was else 0.0)
        return dict(sorted(used.items(), key=lambda kv: -kv[1]))


def machine_busy_s() -> float:
    """CPU seconds this machine has been busy (all cores, all processes) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    jobs: int
    duration_s: float
    gpus: int
    submit_started: float = 0.0
    submit_ended: float = 0.0
    submit_latencies: list[float] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    work: dict[str, tuple[float, float]] = field(default_factory=dict)  # the Probe's own times
    stats_before: dict[str, Any] = field(default_factory=dict)
    stats_after: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    machine_cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    timed_out: bool = False


class Client:
    def __init__(self, api: str, http: httpx.Client) -> None:
        self.api = api
        self.http = http
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def submit(self, doc: dict[str, Any]) -> None:
        r = self.http.post(f"{self.api}/jobs", json=doc, headers=self.headers)
        if r.status_code != 201:
            raise RuntimeError(f"submitting {doc['name']}: {r.status_code} {r.text}")

    def audit(self, since: int) -> list[dict[str, Any]]:
        r = self.http.get(
            f"{self.api}/audit", params={"since": since, "limit": 100_000}, headers=self.headers
        )
        r.raise_for_status()
        records: list[dict[str, Any]] = r.json()["records"]
        return records

    def work(self, job_id: str) -> tuple[float, float] | None:
        """When the job's Probe started and finished (its report), None without a report."""
        r = self.http.get(f"{self.api}/jobs/{job_id}", headers=self.headers)
        r.raise_for_status()
        report = r.json().get("report") or {}
        [bundle] = report.get("bundles") or [{}]
        if "started_at" not in bundle:
            return None
        return float(bundle["started_at"]), float(bundle["finished_at"])

    def cancel(self, job_id: str) -> None:
        self.http.delete(f"{self.api}/jobs/{job_id}", headers=self.headers)


def drain(api: str, run: Run, timeout_s: float, err: Console) -> None:
    controller = actuator.controller()
    root = os.getpid()
    with httpx.Client(timeout=60) as http:
        client = Client(api, http)
        sampler = Sampler(root)
        busy_before = machine_busy_s()
        run.stats_before = ray.get(controller.stats.remote())
        started = time.time()

        # 1. every job, one POST at a time
        run.submit_started = time.time()
        for i in range(run.jobs):
            t = time.perf_counter()
            client.submit(probe_spec(f"{PREFIX}{i:05d}", run.duration_s))
            run.submit_latencies.append(time.perf_counter() - t)
            if (i + 1) % 100 == 0:
                err.print(f"submitted {i + 1}/{run.jobs}", highlight=False)
        run.submit_ended = time.time()
        rate = run.jobs / (run.submit_ended - run.submit_started)
        err.print(
            f"{run.jobs} submitted in {run.submit_ended - run.submit_started:.1f} s ({rate:.1f}/s)",
            highlight=False,
        )

        # 2. until every job has ended, following the audit log
        ended: set[str] = set()
        cursor = 1
        deadline = time.monotonic() + timeout_s
        next_progress = time.monotonic()
        while True:
            new = client.audit(cursor)
            if new:
                cursor = new[-1]["seq"] + 1
                run.records += new
                ended.update(r["job"] for r in new if r["kind"] in ENDS)
            rss = sampler.rss_mb
            if time.monotonic() >= next_progress or len(ended) >= run.jobs:
                placed = sum(1 for r in run.records if r["kind"] == "place")
                err.print(
                    f"{time.time() - started:6.0f} s: {placed} placements, {len(ended)} ended,"
                    f" {rss / 1024:.1f} GiB RSS in this run's processes",
                    highlight=False,
                )
                next_progress = time.monotonic() + PROGRESS_S
            if len(ended) >= run.jobs:
                break
            if time.monotonic() > deadline:
                run.timed_out = True
                err.print(f"timed out after {timeout_s:g} s; cancelling what is left")
                break
            time.sleep(POLL_S)

        run.wall_s = time.time() - started
        run.stats_after = ray.get(controller.stats.remote())
        run.cpu = sampler.stop()
        run.peak_rss_mb = sampler.peak_rss_mb
        run.machine_cpu_s = machine_busy_s() - busy_before
        if run.timed_out:
            for i in range(run.jobs):
                if f"{COMMUNITY}/{PREFIX}{i:05d}" not in ended:
                    client.cancel(f"{COMMUNITY}/{PREFIX}{i:05d}")

        # 3. each Probe's own start and end, from its report (after the drain: times nothing)
        err.print("reading the Probes' reports", highlight=False)
        for r in run.records:
            if r["kind"] == "succeed" and r["job"].startswith(f"{COMMUNITY}/{PREFIX}"):
                got = client.work(r["job"])
                if got is not None:
                    run.work[r["job"]] = got


# --- the figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """One placement of a job: on which GPU, from when to when, and when it started RUNNING."""

    job: str
    gpu: tuple[str, int]
    placed: float
    started: float | None
    ended: float
    how: str  # the audit kind that ended it


def placements(records: Sequence[dict[str, Any]]) -> list[Held]:
    open_: dict[str, tuple[float, tuple[str, int], float | None]] = {}
    held = []
    for r in records:
        job = r["job"]
        if r["kind"] == "place":
            [bundle] = r["data"]["bundles"]  # 1-GPU jobs: one bundle, one GPU
            open_[job] = (r["ts"], (bundle["node"], bundle["gpus"][0]), None)
        elif r["kind"] == "start" and job in open_:
            placed, gpu, _ = open_[job]
            open_[job] = (placed, gpu, r["ts"])
        elif r["kind"] in LEAVES and job in open_:
            placed, gpu, started = open_.pop(job)
            held.append(Held(job, gpu, placed, started, r["ts"], r["kind"]))
    return held


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def steady_rate(times: Sequence[float]) -> float:
    """Events per second between the 10th and the 90th percentile of their times."""
    ordered = sorted(times)
    if len(ordered) < 10:
        return float("nan")
    lo, hi = ordered[len(ordered) // 10], ordered[(9 * len(ordered)) // 10]
    count = (9 * len(ordered)) // 10 - len(ordered) // 10
    return count / (hi - lo) if hi > lo else float("nan")


def figures(run: Run) -> dict[str, Any]:
    ours = [r for r in run.records if (r.get("job") or "").startswith(f"{COMMUNITY}/{PREFIX}")]
    submitted = [r["ts"] for r in ours if r["kind"] == "submit"]
    placed = [r["ts"] for r in ours if r["kind"] == "place"]
    ends = [r["ts"] for r in ours if r["kind"] in ENDS]
    kinds: dict[str, int] = defaultdict(int)
    for r in ours:
        kinds[r["kind"]] += 1
    held = placements(ours)
    first, last = min(submitted), max(ends) if ends else max(submitted)
    drain_s = last - first
    running = [h.ended - h.started for h in held if h.started is not None]
    # a succeeded placement, cut at the Probe's own start and end (whatever RUNNING means)
    cut = [
        (run.work[h.job][0] - h.placed, *run.work[h.job], h.ended - run.work[h.job][1])
        for h in held
        if h.how == "succeed" and h.job in run.work
    ]
    to_work = [c[0] for c in cut]
    work = [c[2] - c[1] for c in cut]
    work_to_end = [c[3] for c in cut]
    unreported = [
        h.ended - h.placed for h in held if not (h.how == "succeed" and h.job in run.work)
    ]
    before_running = [(h.started or h.ended) - h.placed for h in held]
    capacity = run.gpus * drain_s
    by_gpu: dict[tuple[str, int], list[Held]] = defaultdict(list)
    for h in held:
        by_gpu[h.gpu].append(h)
    gaps = []  # a GPU free between one job leaving it and the next placed on it
    for on_gpu in by_gpu.values():
        on_gpu.sort(key=lambda h: h.placed)
        gaps += [b.placed - a.ended for a, b in zip(on_gpu, on_gpu[1:], strict=False)]
    delta = {k: run.stats_after[k] - run.stats_before[k] for k in ("rounds", "placed", "cpu_s")}
    ideal = run.jobs * run.duration_s / run.gpus
    return {
        "jobs": run.jobs,
        "duration_s": run.duration_s,
        "gpus": run.gpus,
        "ended": kinds["succeed"] + kinds["fail"] + kinds["cancel"],
        "succeeded": kinds["succeed"],
        "failed": kinds["fail"],
        "cancelled": kinds["cancel"],
        "placed_again": kinds["requeue"] + kinds["retry"] + kinds["interrupt"],
        "timed_out": run.timed_out,
        "submit_s": run.submit_ended - run.submit_started,
        "submit_per_s": run.jobs / (run.submit_ended - run.submit_started),
        "submit_latency_p50_s": statistics.median(run.submit_latencies),
        "submit_latency_p90_s": quantile(run.submit_latencies, 0.9),
        "placed_per_s": len(placed) / (max(placed) - first) if placed else 0.0,
        "placed_per_s_steady": steady_rate(placed),
        "finished_per_s": len(ends) / drain_s if drain_s > 0 else 0.0,
        "finished_per_s_steady": steady_rate(ends),
        "drain_s": drain_s,
        "drain_after_submit_s": last - max(submitted),
        "ideal_drain_s": ideal,
        "drain_vs_ideal": drain_s / ideal,
        "gpu_s_capacity": capacity,
        "gpu_s_held": sum(h.ended - h.placed for h in held),
        "gpu_s_running": sum(running),
        "gpu_s_work": sum(work),
        "gpu_s_placed_to_work": sum(to_work),
        "gpu_s_work_to_end": sum(work_to_end),
        "gpu_s_unreported": sum(unreported),
        "utilisation_held": sum(h.ended - h.placed for h in held) / capacity if capacity else 0.0,
        "utilisation_running": sum(running) / capacity if capacity else 0.0,
        "utilisation_work": sum(work) / capacity if capacity else 0.0,
        "placed_to_running_p50_s": statistics.median(before_running) if held else float("nan"),
        "placed_to_running_p90_s": quantile(before_running, 0.9),
        "running_p50_s": statistics.median(running) if running else float("nan"),
        "running_p90_s": quantile(running, 0.9),
        "placed_to_work_p50_s": statistics.median(to_work) if cut else float("nan"),
        "placed_to_work_p90_s": quantile(to_work, 0.9),
        "work_p50_s": statistics.median(work) if cut else float("nan"),
        "work_to_end_p50_s": statistics.median(work_to_end) if cut else float("nan"),
        "work_to_end_p90_s": quantile(work_to_end, 0.9),
        "gpu_free_gap_p50_s": statistics.median(gaps) if gaps else float("nan"),
        "gpu_free_gap_p90_s": quantile(gaps, 0.9),
        "controller_rounds": delta["rounds"],
        "controller_placed": delta["placed"],
        "controller_cpu_s": delta["cpu_s"],
        "controller_cpu_ms_per_placed": 1000 * delta["cpu_s"] / max(1, delta["placed"]),
        "controller_cpu_ms_per_round": 1000 * delta["cpu_s"] / max(1, delta["rounds"]),
        "wall_s": run.wall_s,
        "machine_cpu_s": run.machine_cpu_s,
        "cpu_s_by_process": run.cpu,
        "peak_rss_gb": run.peak_rss_mb / 1024,
    }


def secs(value: float) -> str:
    return f"{value:,.1f} s" if value >= 10 else f"{value:,.2f} s"


def pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def drain_rows(f: dict[str, Any]) -> list[list[tuple[str, str, str, str]]]:
    """Sections of (figure, measured, ideal, measured / ideal)."""
    ideal_rate = f["gpus"] / f["duration_s"]
    return [
        [
            (
                "drain time (first submission -> last end)",
                secs(f["drain_s"]),
                secs(f["ideal_drain_s"]),
                f"{f['drain_vs_ideal']:.2f}x",
            ),
            ("  of which after the last submission", secs(f["drain_after_submit_s"]), "", ""),
            (
                "jobs finished per second (overall)",
                f"{f['finished_per_s']:.2f}",
                f"{ideal_rate:.2f}",
                f"{f['finished_per_s'] / ideal_rate:.2f}x",
            ),
            (
                "jobs finished per second (10th-90th pct)",
                f"{f['finished_per_s_steady']:.2f}",
                "",
                "",
            ),
            ("jobs placed per second (overall)", f"{f['placed_per_s']:.2f}", "", ""),
            ("jobs placed per second (10th-90th pct)", f"{f['placed_per_s_steady']:.2f}", "", ""),
            (
                "GPU utilisation: allocated (PLACED -> end) / capacity",
                f"{100 * f['utilisation_held']:.1f}%",
                "100%",
                "",
            ),
            (
                "GPU utilisation: RUNNING GPU-s (billed) / capacity",
                f"{100 * f['utilisation_running']:.1f}%",
                "100%",
                "",
            ),
            (
                "GPU utilisation: work (the Probes' own run) / capacity",
                f"{100 * f['utilisation_work']:.1f}%",
                "100%",
                "",
            ),
        ],
        [
            ("submissions per second (one client, in turn)", f"{f['submit_per_s']:.1f}", "", ""),
            (
                "submit latency p50 / p90",
                pair(
                    f"{1000 * f['submit_latency_p50_s']:.0f}",
                    f"{1000 * f['submit_latency_p90_s']:.0f} ms",
                ),
                "",
                "",
            ),
            (
                "PLACED -> RUNNING p50 / p90",
                pair(secs(f["placed_to_running_p50_s"]), secs(f["placed_to_running_p90_s"])),
                "0",
                "",
            ),
            (
                "RUNNING -> end p50 / p90",
                pair(secs(f["running_p50_s"]), secs(f["running_p90_s"])),
                secs(f["duration_s"]),
                "",
            ),
            (
                "PLACED -> the Probe starts p50 / p90",
                pair(secs(f["placed_to_work_p50_s"]), secs(f["placed_to_work_p90_s"])),
                "0",
                "",
            ),
            ("the Probe's own run p50", secs(f["work_p50_s"]), secs(f["duration_s"]), ""),
            (
                "the Probe ends -> SUCCEEDED p50 / p90",
                pair(secs(f["work_to_end_p50_s"]), secs(f["work_to_end_p90_s"])),
                "0",
                "",
            ),
            (
                "a GPU free between two jobs p50 / p90",
                pair(secs(f["gpu_free_gap_p50_s"]), secs(f["gpu_free_gap_p90_s"])),
                "0",
                "",
            ),
        ],
        [
            ("controller CPU (stats() after - before)", secs(f["controller_cpu_s"]), "", ""),
            (
                "controller CPU per job placed",
                f"{f['controller_cpu_ms_per_placed']:.1f} ms",
                "",
                "",
            ),
            (
                "controller rounds / CPU per round",
                pair(f"{f['controller_rounds']:,}", f"{f['controller_cpu_ms_per_round']:.1f} ms"),
                "",
                "",
            ),
            (
                "ended: succeeded / failed / cancelled",
                f"{f['succeeded']} / {f['failed']} / {f['cancelled']}",
                str(f["jobs"]),
                "",
            ),
            ("placements given up and placed again", str(f["placed_again"]), "0", ""),
            ("peak memory of this run's processes", f"{f['peak_rss_gb']:.1f} GiB", "", ""),
        ],
    ]


def drain_table(f: dict[str, Any], cluster: str) -> Table:
    table = Table(
        title=f"Draining {f['jobs']:,} queued 1-GPU Probe jobs of {f['duration_s']:g} s"
        f" on {cluster} ({f['gpus']} simulated GPUs), controller defaults",
        caption="ideal: every GPU doing work all the time, no overhead (jobs x duration / GPUs)",
    )
    for column in ("figure", "measured", "ideal", "measured / ideal"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for section in drain_rows(f):
        for row in section:
            table.add_row(*row)
        table.add_section()
    return table


def gpu_time_table(f: dict[str, Any]) -> Table:
    capacity = f["gpu_s_capacity"]
    idle = capacity - f["gpu_s_held"]
    rows = {
        "free (no job placed on it)": idle,
        "PLACED, the Probe not started (group made ready, actor process starting)": f[
            "gpu_s_placed_to_work"
        ],
        "the Probe running (its own start to end: the work)": f["gpu_s_work"],
        "the Probe ended, the job not SUCCEEDED yet (end seen, logs, release)": f[
            "gpu_s_work_to_end"
        ],
        "placed, no report (failed, cancelled, placed again)": f["gpu_s_unreported"],
    }
    table = Table(title=f"Where the GPU time goes: {f['gpus']} GPUs x {secs(f['drain_s'])}")
    for column in ("state", "GPU-s", "share"):
        table.add_column(column, justify="left" if column == "state" else "right")
    for name, value in rows.items():
        table.add_row(name, f"{value:,.0f}", f"{100 * value / capacity:.1f}%")
    return table


def cpu_table(f: dict[str, Any]) -> Table:
    wall, cores = f["wall_s"], os.cpu_count() or 1
    table = Table(
        title=f"CPU seconds while draining ({secs(wall)} wall, {cores} cores ="
        f" {cores * wall:,.0f} CPU-s)",
        caption="this run's processes from /proc; machine: every process, other users' included",
    )
    for column in ("processes", "CPU-s", "cores busy"):
        table.add_column(column, justify="left" if column == "processes" else "right")
    total = 0.0
    for group, value in f["cpu_s_by_process"].items():
        total += value
        table.add_row(group, f"{value:,.0f}", f"{value / wall:.2f}")
    table.add_section()
    table.add_row("this run, in all", f"{total:,.0f}", f"{total / wall:.2f}")
    table.add_row(
        "the machine, in all", f"{f['machine_cpu_s']:,.0f}", f"{f['machine_cpu_s'] / wall:.2f}"
    )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=None, help=f"jobs queued (default {JOBS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_JOBS} jobs")
    parser.add_argument("--duration", type=float, default=1.0, help="each Probe's duration_s")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after (seconds)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    jobs = args.jobs if args.jobs is not None else QUICK_JOBS if args.quick else JOBS
    if jobs < 1 or args.duration < 1:
        parser.error("--jobs must be at least 1 and --duration at least 1 (a Probe's minimum)")

    err = Console(stderr=True)
    snapshot = load_cluster(CLUSTER_FILE)
    run = Run(jobs=jobs, duration_s=args.duration, gpus=snapshot.total_gpus)
    err.print(f"controller settings: {Settings().model_dump()}", highlight=False)
    with mesh_up(snapshot, err) as api:
        drain(api, run, args.timeout, err)
    f = figures(run)

    if args.json:
        raw = {k: v for k, v in asdict(run).items() if k != "records"}  # figures hold the rest
        print(json.dumps({"cluster": CLUSTER_FILE.name, **f, "run": raw}, indent=2))
        return 0
    out = Console(width=max(Console().width, 120))  # a pipe would otherwise get 80 columns
    out.print(drain_table(f, CLUSTER_FILE.name))
    out.print(gpu_time_table(f))
    out.print(cpu_table(f))
    return 1 if f["timed_out"] else 0


if __name__ == "__main__":
    sys.exit(main())
