"""From submission to a running 1-GPU Probe, through the mesh and directly with Ray, in one run.

    python benchmarks/submit_latency.py [--runs 10] [--warmup 2] [--quick] [--settings tests]
        [--busy] [--json]

Starts a local Ray cluster (a head with 2 CPUs and no GPUs, and two declared nodes: 2 x RTX-4090
and 1 x RTX-3060, simulated GPUs), the mesh controller and its HTTP API, then times one job at a
time, alternating the two sides (mesh first in even pairs, direct first in odd ones):

- mesh: POST a Probe job (1 GPU, duration_s 1, matmul_size 256) to /api/v1/jobs; its
  transitions and log lines are read once it has ended (the GET polls do not time anything).
- direct: what the actuator and the controller do, written out with Ray's API in this process:
  a placement group of one bundle {"CPU": 1, "GPU": 1} pinned by `bundle_label_selector` to
  the node the mesh chose in the latest mesh run, `ray.get(pg.ready())`, the same
  `WorkloadActor` (kind Probe, the same spec) started in it with the actuator's options
  (detached, named), then `ray.get(actor.ping.remote())`.

Two definitions of "running", the same on both sides:

(a) RUNNING: mesh, the job's RUNNING transition, which the controller records once every worker
    has started and answered `ping()` (the time is that of the loop round that sees it);
    direct, `ping()` answered.
(b) working: the timestamp of the Probe's first log line, written by the workload itself (in
    the actor's process) once it runs; read afterwards, so polling does not blur it.

Every time is on this machine's clock (the controller runs here too), from just before the POST
or the `placement_group()` call. Prints p50, p90 and mean per side and the ratio mesh/direct
(floor: at most 2x, goal: 1.2x), and the median time to each milestone on either side. The
controller runs with the defaults of `scheduler.controller.Settings` (the configuration we
ship); `--settings tests` uses the integration tests' faster loop instead. `--busy` keeps one
more Probe (1 GPU, BUSY_S long) running on the mesh the whole time, as on a mesh in use: the
controller then has workers to watch while it waits for the next event. Both sides share the
cluster, so both see it. Progress goes to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from rich.console import Console
from rich.table import Table

from cluster.labels import NODE
from cluster.nodes import local_mesh
from scheduler import actuator
from scheduler.cluster import Node, cluster_from_dict
from scheduler.controller import Settings
from workloads.runner import WorkloadActor

NODES = {
    "nodes": [
        {
            "name": "home-4090",
            "cpus": 8,
            "memory_gb": 32,
            "gpus": {"model": "RTX-4090", "count": 2},
        },
        {
            "name": "home-3060",
            "cpus": 4,
            "memory_gb": 16,
            "gpus": {"model": "RTX-3060", "count": 1},
        },
    ]
}
HEAD = Node("head", cpus=2, memory_gb=4)
COMMUNITY = "bio-ml"
ADMIN_TOKEN = "bench-admin-token"
DURATION_S = 1.0
MATMUL_SIZE = 256
POLL_S = 0.5  # how often a mesh job is polled until it ends; it times nothing
PAUSE_S = 0.5  # between two runs, so that one run's clean-up does not overlap the next
JOB_TIMEOUT_S = 120.0
BUSY_S = 3600  # the longest Probe there is; cancelled once the runs are done
SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},  # scheduler.controller.Settings as shipped
    "tests": {"loop_interval_s": 0.5, "placement_timeout_s": 20, "log_interval_s": 0.5},
}
FLOOR, GOAL = 2.0, 1.2

_Workload = ray.remote(WorkloadActor)


@dataclass(frozen=True)
class Sample:
    """One run, times in seconds from its start (None: not seen on that side)."""

    side: str  # "mesh" or "direct"
    run: int  # -1, -2...: warm-up
    node: str
    accepted: float | None  # mesh: QUEUED (the store has it); direct: None
    placed: float | None  # mesh: PLACED (group requested); direct: `placement_group()` returned
    group_ready: float | None  # direct: `ready()` returned; mesh: not observable
    created: float | None  # direct: the actor's creation submitted; mesh: not observable
    running: float  # (a): mesh RUNNING; direct: the actor answered `ping()`
    first_log: float  # (b): the Probe's first log line
    ended: float  # mesh: SUCCEEDED; direct: `wait()` returned


def probe_spec(name: str, duration_s: float = DURATION_S) -> dict[str, Any]:
    return {
        "apiVersion": "mesh/v1",
        "kind": "Probe",
        "name": name,
        "community": COMMUNITY,
        "resources": {"gpus": 1},
        "probe": {"duration_s": duration_s, "matmul_size": MATMUL_SIZE},
    }


@contextmanager
def mesh_up(settings: dict[str, Any], err: Console) -> Iterator[str]:
    """A local Ray cluster of HEAD and NODES with the mesh on it; yields the API's URL."""
    # Ray prints the cluster's messages (one when Serve shuts down) on stdout: keep it for --json
    with (
        redirect_stdout(sys.stderr),
        tempfile.TemporaryDirectory(prefix="mesh-bench-") as home,
    ):
        snapshot = cluster_from_dict(NODES, source="submit_latency")
        started = time.perf_counter()
        with local_mesh(
            HEAD,
            snapshot.nodes,
            home=Path(home),
            admin_token=ADMIN_TOKEN,
            settings=settings,
            progress=lambda m: err.print(m, highlight=False),
        ) as (_, api):
            err.print(f"mesh up at {api} in {time.perf_counter() - started:.1f} s", highlight=False)
            yield api


class MeshSide:
    def __init__(self, api: str, http: httpx.Client) -> None:
        self.api = api
        self.http = http
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def _get(self, path: str) -> dict[str, Any]:
        r = self.http.get(f"{self.api}{path}", headers=self.headers)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def wait_for(self, job_id: str, states: set[str]) -> dict[str, Any]:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        job = self._get(f"/jobs/{job_id}")
        while job["state"] not in states:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{job_id} still {job['state']} after {JOB_TIMEOUT_S:g} s")
            time.sleep(POLL_S)
            job = self._get(f"/jobs/{job_id}")
        return job

    @contextmanager
    def busy(self, on: bool, err: Console) -> Iterator[None]:
        """With `on`: one long Probe RUNNING on the mesh meanwhile, cancelled afterwards."""
        if not on:
            yield
            return
        name = "busy-background"
        r = self.http.post(f"{self.api}/jobs", json=probe_spec(name, BUSY_S), headers=self.headers)
        if r.status_code != 201:
            raise RuntimeError(f"submitting {name}: {r.status_code} {r.text}")
        job = self.wait_for(f"{COMMUNITY}/{name}", {"RUNNING"})
        err.print(f"{name} RUNNING on {job['placement'][0]['node']}", highlight=False)
        try:
            yield
        finally:
            self.http.delete(f"{self.api}/jobs/{COMMUNITY}/{name}", headers=self.headers)

    def run(self, run: int, name: str) -> Sample:
        start = time.time()
        r = self.http.post(f"{self.api}/jobs", json=probe_spec(name), headers=self.headers)
        if r.status_code != 201:
            raise RuntimeError(f"submitting {name}: {r.status_code} {r.text}")
        job_id = f"{COMMUNITY}/{name}"
        try:
            job = self.wait_for(job_id, {"SUCCEEDED", "FAILED", "CANCELLED"})
        except RuntimeError:
            self.http.delete(f"{self.api}/jobs/{job_id}", headers=self.headers)
            raise
        if job["state"] != "SUCCEEDED":
            raise RuntimeError(f"{job_id} ended {job['state']}: {job['reason']}")
        at = {t["to"]: t["ts"] - start for t in job["transitions"]}
        lines = self._get(f"/jobs/{job_id}/logs")["lines"]
        return Sample(
            side="mesh",
            run=run,
            node=job["placement"][0]["node"],
            accepted=at["QUEUED"],
            placed=at["PLACED"],
            group_ready=None,
            created=None,
            running=at["RUNNING"],
            first_log=lines[0]["ts"] - start,
            ended=at["SUCCEEDED"],
        )


def direct_run(run: int, name: str, node: str) -> Sample:
    """What the actuator does for a 1-GPU job, with Ray's API, timed step by step."""
    spec = probe_spec(name)
    start = time.time()
    pg = placement_group(
        [{"CPU": 1.0, "GPU": 1.0}],
        strategy="PACK",
        name=f"bench:{name}",
        lifetime="detached",
        bundle_label_selector=[{NODE: node}],
    )
    placed = time.time()
    worker: Any = None  # an ActorHandle of WorkloadActor, as in the actuator
    try:
        ray.get(pg.ready(), timeout=JOB_TIMEOUT_S)
        group_ready = time.time()
        worker = _Workload.options(
            name=f"bench:{name}:0",
            namespace=actuator.NAMESPACE,
            lifetime="detached",
            num_cpus=1.0,
            num_gpus=1.0,
            max_restarts=0,
            max_concurrency=4,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=0
            ),
        ).remote(f"{COMMUNITY}/{name}", "Probe", spec, 0, node)
        created = time.time()
        ray.get(worker.ping.remote(), timeout=JOB_TIMEOUT_S)
        running = time.time()
        ray.get(worker.wait.remote(), timeout=JOB_TIMEOUT_S)
        ended = time.time()
        lines = ray.get(worker.logs.remote(0), timeout=JOB_TIMEOUT_S)
    finally:
        if worker is not None:
            ray.kill(worker, no_restart=True)
        remove_placement_group(pg)
    return Sample(
        side="direct",
        run=run,
        node=node,
        accepted=None,
        placed=placed - start,
        group_ready=group_ready - start,
        created=created - start,
        running=running - start,
        first_log=lines[0][0] - start,
        ended=ended - start,
    )


def measure(api: str, runs: int, warmup: int, busy: bool, err: Console) -> list[Sample]:
    """`warmup` + `runs` pairs, alternating which side goes first; warm-ups have run < 0."""
    samples: list[Sample] = []
    node = ""
    with httpx.Client(timeout=30) as http:
        mesh = MeshSide(api, http)
        with mesh.busy(busy, err):
            for i in range(warmup + runs):
                run = i - warmup if i < warmup else i - warmup + 1
                label = f"warm-up {i + 1}" if run < 0 else f"run {run}"
                order = ("mesh", "direct") if i % 2 == 0 else ("direct", "mesh")
                for side in order:
                    if side == "mesh":
                        s = mesh.run(run, f"lat-{i:03d}")
                        node = s.node
                    else:
                        s = direct_run(run, f"lat-{i:03d}", node)
                    samples.append(s)
                    err.print(
                        f"{label} {side:6} on {s.node}: RUNNING {s.running * 1000:5.0f} ms,"
                        f" first log line {s.first_log * 1000:5.0f} ms",
                        highlight=False,
                    )
                    time.sleep(PAUSE_S)
    return samples


# --- the report --------------------------------------------------------------------------------


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def stats_of(values: Sequence[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p90": p90(values), "mean": statistics.mean(values)}


DEFINITIONS: dict[str, tuple[str, Callable[[Sample], float]]] = {
    "running": ("(a) submit -> RUNNING", lambda s: s.running),
    "first_log": ("(b) submit -> first log line", lambda s: s.first_log),
}


def summarise(samples: Sequence[Sample]) -> dict[str, Any]:
    timed = [s for s in samples if s.run > 0]
    out: dict[str, Any] = {}
    for key, (_, value) in DEFINITIONS.items():
        mesh = stats_of([value(s) for s in timed if s.side == "mesh"])
        direct = stats_of([value(s) for s in timed if s.side == "direct"])
        out[key] = {
            "mesh": mesh,
            "direct": direct,
            "ratio": {k: mesh[k] / direct[k] for k in mesh},
        }
    return out


def milestones(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Per side, the median time from a run's start to each of its milestones."""

    def med(side: str, f: Callable[[Sample], float | None]) -> float:
        got = (f(s) for s in samples if s.run > 0 and s.side == side)
        values = [v for v in got if v is not None]
        return statistics.median(values) if values else float("nan")

    return {
        "mesh": {
            "QUEUED: the POST reached the store (HTTP, Serve, controller)": med(
                "mesh", lambda s: s.accepted
            ),
            "PLACED: a loop round planned it, group requested": med("mesh", lambda s: s.placed),
            "RUNNING: group ready, worker started and answered, a round saw it": med(
                "mesh", lambda s: s.running
            ),
            "the Probe's first log line": med("mesh", lambda s: s.first_log),
            "SUCCEEDED": med("mesh", lambda s: s.ended),
        },
        "direct": {
            "placement_group() returned": med("direct", lambda s: s.placed),
            "ready() returned": med("direct", lambda s: s.group_ready),
            "actor creation submitted (.remote() returned)": med("direct", lambda s: s.created),
            "ping() answered": med("direct", lambda s: s.running),
            "the Probe's first log line": med("direct", lambda s: s.first_log),
            "wait() returned": med("direct", lambda s: s.ended),
        },
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def latency_table(summary: dict[str, Any], runs: int, settings: str, busy: bool) -> Table:
    mesh = "one more Probe running meanwhile" if busy else "nothing else running"
    table = Table(
        title=f"Submit to running, one 1-GPU Probe at a time ({mesh}): {runs} runs a side,"
        f" controller settings: {settings}",
        caption=f"ratio: mesh / direct (floor <= {FLOOR:g}x, goal <= {GOAL:g}x)",
    )
    for column in ("definition", "side", "p50", "p90", "mean"):
        table.add_column(column, justify="left" if column in ("definition", "side") else "right")
    for key, (title, _) in DEFINITIONS.items():
        s = summary[key]
        for side in ("mesh", "direct"):
            table.add_row(title if side == "mesh" else "", side, *(ms(s[side][k]) for k in s[side]))
        table.add_row("", "ratio", *(f"{s['ratio'][k]:.2f}x" for k in s["ratio"]))
        table.add_section()
    return table


def milestone_table(steps: dict[str, dict[str, float]]) -> Table:
    table = Table(
        title="Where the time goes: median time from the run's start to each milestone",
        caption="mesh times are the controller's transition times (the start of the round)",
    )
    for column in ("side", "milestone", "median"):
        table.add_column(column, justify="right" if column == "median" else "left")
    for side, rows in steps.items():
        for i, (step, seconds) in enumerate(rows.items()):
            table.add_row(side if i == 0 else "", step, ms(seconds))
        table.add_section()
    return table


def verdicts(summary: dict[str, Any]) -> list[str]:
    lines = []
    for key, (title, _) in DEFINITIONS.items():
        ratio = summary[key]["ratio"]["p50"]
        verdict = (
            "meets the goal"
            if ratio <= GOAL
            else "within the floor"
            if ratio <= FLOOR
            else ("above the floor")
        )
        lines.append(f"{title}: mesh/direct at p50 = {ratio:.2f}x: {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None, help="timed runs a side (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first (default 2)")
    parser.add_argument("--quick", action="store_true", help="3 runs a side, 1 warm-up pair")
    parser.add_argument(
        "--settings",
        choices=sorted(SETTINGS),
        default="defaults",
        help="the controller's settings: as shipped (defaults) or the integration tests' loop",
    )
    parser.add_argument(
        "--busy", action="store_true", help="keep one more Probe running on the mesh meanwhile"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else 3 if args.quick else 10
    warmup = 1 if args.quick and args.warmup == 2 else args.warmup
    if runs < 1 or warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")

    err = Console(stderr=True)
    settings = SETTINGS[args.settings]
    err.print(f"controller settings: {Settings(**settings).model_dump()}", highlight=False)
    with mesh_up(settings, err) as api:
        samples = measure(api, runs, warmup, args.busy, err)
    summary = summarise(samples)
    steps = milestones(samples)

    if args.json:
        document = {
            "runs": runs,
            "warmup": warmup,
            "settings": Settings(**settings).model_dump(),
            "busy": args.busy,
            "samples": [asdict(s) for s in samples],
            "summary": summary,
            "milestones": steps,
        }
        print(json.dumps(document, indent=2))
        return 0
    out = Console(width=max(Console().width, 110))  # a pipe would otherwise get 80 columns
    named = f"{args.settings} {Settings(**settings).model_dump()}"
    out.print(latency_table(summary, runs, named, args.busy))
    out.print(milestone_table(steps))
    for line in verdicts(summary):
        out.print(line, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
