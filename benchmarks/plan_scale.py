"""How long one planning round takes as the cluster grows, beside a naive first-fit baseline.

    python benchmarks/plan_scale.py [--quick] [--profile]

One round is one call of `scheduler.policy.plan` with 2,000 queued jobs, on 100, 1,000 and 5,000
nodes of 4 GPUs each (RTX-3090, RTX-4090, A100-80GB and L40S nodes in the proportion 4:3:2:1). The
queue is drawn from `random.Random(0)`: 1-GPU fine-tunes (some limited to consumer cards), 2-GPU
pack and 4-GPU strict_pack fine-tunes (the latter on A100-80GB or L40S only), shared GPUs for
services and batch inference (gpu_memory_gb below a card's), 2-shard spread batch jobs and a few
CPU-only ones; three priorities, four communities with fair-share weights, runtimes from 10
minutes to 12 hours. Three scenarios, each timing a round of the same 2,000 jobs:

- empty: nothing runs yet.
- half full: a first queue, from `random.Random(1)`, asking for half the cluster's GPUs, is
  planned once, untimed, and its placements become the running jobs.
- contended: running jobs hold about 90% of the cluster's GPUs (GPU-equivalents: a shared GPU
  counts for its share), at every size, so a large share of the queue waits even at 5,000 nodes.
  They come from queues drawn from `random.Random(2)` and planned untimed, batch after batch
  around the jobs already placed, until 90% is held; every one has a finite runtime (services
  get one drawn like the others) and started a random part of it ago, so the timed round has
  expected ends to reserve against and backfill around, and low-priority jobs to preempt.

The baseline, `first_fit`, plans the same round with the same accounting (per-GPU thousandths, CPU
milli, memory MiB, the same share of a GPU for a shared bundle, the same model and memory rules):
jobs in submission order (FIFO), each on the first node by name where its bundles fit, the
lowest-index GPUs that fit; no fragmentation scoring, fair share, preemption, reservations or
reasons for waiting jobs.

Per size: the median wall time of N rounds (5 at 100 and 1,000 nodes, 3 at 5,000), jobs placed and
waiting, and growth from the previous size: the time ratio, the node ratio and the exponent k of
t ~ n^k. The last line compares t(5000)/t(1000) with (5000 log 5000)/(1000 log 1000).
`--quick` runs 100 and 1,000 nodes only. `--profile` prints the hottest functions of one round at
1,000 nodes (cProfile), on the empty cluster or, named, on another scenario
(`--profile contended`).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rich.console import Console
from rich.table import Table

from scheduler import gpus
from scheduler.cluster import ClusterSnapshot, Gpu, Node
from scheduler.policy import (
    BundleAssignment,
    BundleDemand,
    JobDemand,
    Placement,
    Plan,
    QueuedJob,
    RunningJob,
    Waiting,
    plan,
)
from scheduler.policy.model import GPU_MILLI, cpu_milli, mib

SIZES = (100, 1_000, 5_000)
QUICK_SIZES = (100, 1_000)
RUNS = {100: 5, 1_000: 5, 5_000: 3}
QUEUED_JOBS = 2_000
GPUS_PER_NODE = 4
HALF_FULL = 0.5  # share of the cluster's GPUs the running jobs ask for in the second scenario
CONTENDED = 0.9  # share of the cluster's GPUs the running jobs hold in the third scenario
TOP_UP_MIN = 0.01  # a contended top-up batch asks for at least this share of the GPUs
TOP_UP_BATCHES = 100  # ... and the filling stops after this many batches even if short
PROFILE_NODES = 1_000
PROFILE_LINES = 20

# (GPU model, nodes out of every 10, CPUs, host memory in GB): realistic 4-GPU servers
NODE_KINDS = (
    ("RTX-3090", 4, 32, 128),
    ("RTX-4090", 3, 48, 192),
    ("A100-80GB", 2, 128, 1024),
    ("L40S", 1, 64, 512),
)
COMMUNITIES = {"swahili-nlp": 2.0, "quechua-lm": 1.0, "bio-ml": 1.0, "yoruba-asr": 1.0}
PRIORITIES = ((2, 0.15), (1, 0.6), (0, 0.25))  # high, normal, low
RUNTIMES_S = (600.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0)
CONSUMER = frozenset({"RTX-3090", "RTX-4090"})
DATACENTER = frozenset({"A100-80GB", "L40S"})

Planner = Callable[[ClusterSnapshot, Sequence[QueuedJob], Sequence[RunningJob], float], Plan]


# --- inputs ------------------------------------------------------------------------------------


def cluster(nodes: int) -> ClusterSnapshot:
    """`nodes` 4-GPU nodes; node i is of the kind at position i in a fixed cycle of ten."""
    cycle = [kind for kind in NODE_KINDS for _ in range(kind[1])]
    out = []
    for i in range(nodes):
        model, _, cpus, memory_gb = cycle[i % len(cycle)]
        g = gpus.resolve(model)
        devices = tuple(
            Gpu(j, g.name, g.memory_gb, g.compute_capability) for j in range(GPUS_PER_NODE)
        )
        out.append(Node(f"node-{i:05d}", cpus, memory_gb, devices))
    return ClusterSnapshot(tuple(out), community_weights=dict(COMMUNITIES))


def _demand(
    name: str,
    community: str,
    priority: int,
    kind: str,
    gpus_: int,
    *,
    placement: str = "pack",
    gpu_memory_gb: float | None = None,
    cpus: float = 4,
    memory_gb: float = 16,
    exclusive: bool = False,
    models: frozenset[str] | None = None,
    runtime_s: float | None = None,
    submitted_at: float = 0.0,
) -> JobDemand:
    bundle = BundleDemand(
        gpus=1 if gpus_ else 0,
        cpu_milli=cpu_milli(cpus),
        memory_mib=mib(memory_gb),
        gpu_memory_mib=mib(gpu_memory_gb) if gpu_memory_gb is not None else None,
    )
    return JobDemand(
        job=f"{community}/{name}",
        community=community,
        priority=priority,
        bundles=(bundle,) * max(gpus_, 1),
        placement=placement,
        exclusive=exclusive,
        preemptible=kind in ("FineTune", "BatchInference"),
        gpu_models=models,
        runtime_s=runtime_s,
        submitted_at=submitted_at,
        speed_sensitive=kind in ("FineTune", "BatchInference"),
        kind=kind,
    )


def random_job(rng: random.Random, name: str, submitted_at: float) -> JobDemand:
    """One job of the mix: 1-GPU, 2-GPU pack, 4-GPU strict_pack, shared, spread or CPU-only."""
    community = rng.choice(list(COMMUNITIES))
    priority = rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]
    runtime: float | None = rng.choice(RUNTIMES_S)
    draw = rng.random()
    kind, count, placement, exclusive = "FineTune", 1, "pack", True
    gpu_memory_gb: float | None = 20
    cpus, memory_gb = 4.0, 16.0
    models: frozenset[str] | None = None
    if draw < 0.38:  # one whole GPU: a small fine-tune, some on consumer cards only
        models = CONSUMER if rng.random() < 0.2 else None
    elif draw < 0.58:  # two GPUs packed: a DDP fine-tune
        count, cpus, memory_gb = 2, 8, 32
    elif draw < 0.68:  # four large GPUs on one node
        count, placement, gpu_memory_gb, cpus, memory_gb = 4, "strict_pack", 40, 16, 128
        models = DATACENTER
    elif draw < 0.80:  # a service replica sharing a GPU; runs until stopped
        kind, exclusive, runtime = "Service", False, None
        gpu_memory_gb, cpus, memory_gb = rng.choice([8, 12, 16]), 2, 12
    elif draw < 0.92:  # batch inference sharing a GPU
        kind, exclusive = "BatchInference", False
        gpu_memory_gb, cpus, memory_gb = rng.choice([6, 10, 12]), 2, 8
    elif draw < 0.96:  # two shards on different nodes
        kind, exclusive, count, placement = "BatchInference", False, 2, "spread"
        gpu_memory_gb, cpus, memory_gb = 12, 2, 8
    else:  # CPU only
        kind, exclusive, count, gpu_memory_gb, cpus = "BatchInference", False, 0, None, 8
    return _demand(
        name,
        community,
        priority,
        kind,
        count,
        placement=placement,
        gpu_memory_gb=gpu_memory_gb,
        cpus=cpus,
        memory_gb=memory_gb,
        exclusive=exclusive,
        models=models,
        runtime_s=runtime,
        submitted_at=submitted_at,
    )


def queue(seed: int, count: int, prefix: str = "job") -> list[QueuedJob]:
    rng = random.Random(seed)
    return [QueuedJob(random_job(rng, f"{prefix}-{i:05d}", float(i))) for i in range(count)]


def half_full(snapshot: ClusterSnapshot) -> list[RunningJob]:
    """Running jobs that hold about half the GPUs: a first queue planned once, started earlier."""
    rng = random.Random(1)
    first: list[QueuedJob] = []
    asked = 0
    while asked < HALF_FULL * snapshot.total_gpus:
        d = random_job(rng, f"run-{len(first):05d}", float(len(first)))
        first.append(QueuedJob(d))
        asked += d.gpus
    demands = {q.demand.job: q.demand for q in first}
    placed = plan(snapshot, first, (), 0.0).placements
    out = []
    for p in placed:
        d = demands[p.job]
        started = -rng.uniform(0.0, d.runtime_s or 3600.0)
        out.append(RunningJob(d, p.bundles, started_at=started, checkpointed_at=started / 2))
    return out


def contended(snapshot: ClusterSnapshot) -> list[RunningJob]:
    """Running jobs that hold about 90% of the GPUs, all with finite runtimes.

    Batches drawn from one seeded stream are planned around the jobs placed so far (untimed),
    each asking for what is still missing to 90% (at least 1% of the GPUs), until that much is
    held. A job a later batch preempts is dropped from the running set.
    """
    rng = random.Random(2)
    target = CONTENDED * snapshot.total_gpus
    running: dict[str, RunningJob] = {}
    held = 0.0
    drawn = 0
    for _ in range(TOP_UP_BATCHES):
        if held >= target:
            break
        want = max(target - held, TOP_UP_MIN * snapshot.total_gpus)
        batch: list[QueuedJob] = []
        asked = 0
        while asked < want:
            d = random_job(rng, f"busy-{drawn:06d}", float(drawn))
            if d.runtime_s is None:
                d = replace(d, runtime_s=rng.choice(RUNTIMES_S))
            batch.append(QueuedJob(d))
            asked += d.gpus
            drawn += 1
        demands = {q.demand.job: q.demand for q in batch}
        result = plan(snapshot, batch, list(running.values()), 0.0)
        for p in result.preemptions:
            held -= running.pop(p.job).gpus_held()
        for placed in result.placements:
            d = demands[placed.job]
            started = -rng.uniform(0.0, d.runtime_s or 3600.0)
            r = RunningJob(d, placed.bundles, started_at=started, checkpointed_at=started / 2)
            running[d.job] = r
            held += r.gpus_held()
        if not result.placements:
            break  # nothing more fits
    return list(running.values())


def share_held(snapshot: ClusterSnapshot, running: Sequence[RunningJob]) -> tuple[float, float]:
    """GPU-equivalents held, and GPUs with any job on them, each as a share of all GPUs."""
    touched = {(a.node, g) for r in running for a in r.bundles for g in a.gpus}
    total = snapshot.total_gpus
    return sum(r.gpus_held() for r in running) / total, len(touched) / total


# --- the baseline ------------------------------------------------------------------------------


class _FreeNode:
    __slots__ = ("name", "gpus", "free", "cpu", "mem")

    def __init__(self, node: Node, gpus: tuple[tuple[str, int, tuple[int, int]], ...]) -> None:
        self.name = node.name
        self.gpus = gpus  # per GPU: model, memory in MiB, compute capability (interned)
        self.free = [GPU_MILLI] * len(node.gpus)
        self.cpu = cpu_milli(node.cpus)
        self.mem = mib(node.memory_gb)


class _FirstFit:
    """Free capacity in the policy's units, and first-fit placement of whole jobs onto it."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        kinds: dict[object, tuple[tuple[str, int, tuple[int, int]], ...]] = {}
        self.nodes = []
        for node in sorted(snapshot.nodes, key=lambda n: n.name):
            key = tuple((g.model, mib(g.memory_gb), g.compute_capability) for g in node.gpus)
            self.nodes.append(_FreeNode(node, kinds.setdefault(key, key)))
        self.by_name = {n.name: n for n in self.nodes}
        # (node's GPUs, job's constraints, bundle) -> per GPU the share taken, None: not allowed
        self._shares: dict[tuple[object, ...], tuple[int | None, ...]] = {}

    def shares(self, n: _FreeNode, d: JobDemand, b: BundleDemand) -> tuple[int | None, ...]:
        key = (n.gpus, d.exclusive, d.gpu_models, d.min_cc, b)
        found = self._shares.get(key)
        if found is None:
            found = self._shares[key] = tuple(
                b.share_on(memory, d.exclusive)
                if (d.gpu_models is None or model in d.gpu_models)
                and (d.min_cc is None or cc >= d.min_cc)
                and (b.gpu_memory_mib is None or memory >= b.gpu_memory_mib)
                else None
                for model, memory, cc in n.gpus
            )
        return found

    def account(self, bundles: Sequence[BundleAssignment], d: JobDemand, sign: int = 1) -> None:
        """Take (sign 1) or give back (sign -1) what a job's bundles hold."""
        for a, b in zip(bundles, d.bundles, strict=False):
            n = self.by_name[a.node]
            for g in a.gpus:
                n.free[g] -= sign * a.gpu_milli
            n.cpu -= sign * b.cpu_milli
            n.mem -= sign * b.memory_mib

    def take(
        self, n: _FreeNode, d: JobDemand, b: BundleDemand, taken: set[int]
    ) -> BundleAssignment | None:
        """One bundle on node n: the lowest-index GPUs that fit and the job does not hold yet."""
        if n.cpu < b.cpu_milli or n.mem < b.memory_mib:
            return None
        picks: list[int] = []
        share = GPU_MILLI
        if b.gpus:
            for g, s in enumerate(self.shares(n, d, b)):
                if s is not None and n.free[g] >= s and g not in taken:
                    picks.append(g)
                    share = s
                    if len(picks) == b.gpus:
                        break
            if len(picks) < b.gpus:
                return None
        for g in picks:
            n.free[g] -= share
        n.cpu -= b.cpu_milli
        n.mem -= b.memory_mib
        taken.update(picks)
        return BundleAssignment(n.name, tuple(picks), share)

    def place(self, d: JobDemand) -> tuple[BundleAssignment, ...] | None:
        """Every bundle of the job, or none."""
        if len(d.bundles) == 1 or d.placement in ("strict_pack", "pack"):
            for n in self.nodes:  # the first node that takes every bundle
                got: list[BundleAssignment] = []
                taken: set[int] = set()
                for b in d.bundles:
                    a = self.take(n, d, b, taken)
                    if a is None:
                        break
                    got.append(a)
                if len(got) == len(d.bundles):
                    return tuple(got)
                self.account(got, d, sign=-1)
            if d.placement != "pack" or len(d.bundles) == 1:
                return None
        # pack over several nodes, or spread: bundle by bundle, each on the first node that
        # fits (spread: a node the job does not use yet, else any)
        got = []
        used: dict[str, set[int]] = {}
        for b in d.bundles:
            a = None
            for fresh_only in (True, False) if d.placement == "spread" else (False,):
                for n in self.nodes:
                    if fresh_only and n.name in used:
                        continue
                    taken = used.get(n.name, set())
                    a = self.take(n, d, b, taken)
                    if a is not None:
                        used[n.name] = taken
                        break
                if a is not None:
                    break
            if a is None:
                self.account(got, d, sign=-1)
                return None
            got.append(a)
        return tuple(got)


def first_fit(
    snapshot: ClusterSnapshot,
    queued: Sequence[QueuedJob],
    running: Sequence[RunningJob] = (),
    now: float = 0.0,
) -> Plan:
    """FIFO; each job on the first node(s) by name where its bundles fit. `now` is unused."""
    state = _FirstFit(snapshot)
    for r in running:
        state.account(r.bundles, r.demand)
    held = {r.demand.job for r in running}
    placements, waiting = [], []
    for q in sorted(queued, key=lambda q: (q.demand.submitted_at, q.demand.job)):
        d = q.demand
        if d.job in held:
            continue
        got = state.place(d)
        if got is None:
            waiting.append(Waiting(d.job, ("no node fits",)))
        else:
            placements.append(Placement(d.job, got))
    return Plan(tuple(placements), (), tuple(waiting))


# --- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    scenario: str
    planner: str
    nodes: int
    gpus: int
    running: int
    runs: int
    median_s: float
    placed: int
    waiting: int
    preempted: int
    gpus_placed: float


def measure(
    planner: Planner,
    snapshot: ClusterSnapshot,
    queued: list[QueuedJob],
    running: list[RunningJob],
    runs: int,
) -> tuple[float, Plan]:
    times = []
    result = Plan()
    for _ in range(runs):
        started = time.perf_counter()
        result = planner(snapshot, queued, running, 0.0)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def exponent(t1: float, t2: float, n1: int, n2: int) -> float:
    """k in t ~ n^k between two sizes."""
    return math.log(t2 / t1) / math.log(n2 / n1)


def n_log_n_ratio(n1: int, n2: int) -> float:
    return (n2 * math.log(n2)) / (n1 * math.log(n1))


PLANNERS: dict[str, Planner] = {"mesh": plan, "first-fit": first_fit}


SCENARIOS: dict[str, Callable[[ClusterSnapshot], list[RunningJob]]] = {
    "empty": lambda snapshot: [],
    "half full": half_full,
    "contended": contended,
}


def set_up(scenario: str, snapshot: ClusterSnapshot, nodes: int, err: Console) -> list[RunningJob]:
    """The scenario's running jobs, with a line on stderr about them."""
    started = time.perf_counter()
    running = SCENARIOS[scenario](snapshot)
    if running:
        held, touched = share_held(snapshot, running)
        err.print(
            f"{nodes} nodes, {scenario}: {len(running)} running jobs holding {held:.1%} of the"
            f" GPUs ({touched:.1%} with a job on them), set up in"
            f" {time.perf_counter() - started:.1f} s",
            highlight=False,
        )
    return running


def run(sizes: Sequence[int], err: Console) -> list[Row]:
    fresh = queue(0, QUEUED_JOBS)
    rows = []
    for nodes in sizes:
        snapshot = cluster(nodes)
        for scenario in SCENARIOS:
            held = set_up(scenario, snapshot, nodes, err)
            for name, planner in PLANNERS.items():
                runs = RUNS.get(nodes, 3)
                seconds, result = measure(planner, snapshot, fresh, held, runs)
                rows.append(
                    Row(
                        scenario,
                        name,
                        nodes,
                        snapshot.total_gpus,
                        len(held),
                        runs,
                        seconds,
                        len(result.placements),
                        len(result.waiting),
                        len(result.preemptions),
                        sum(
                            b.gpu_fraction * len(b.gpus)
                            for p in result.placements
                            for b in p.bundles
                        ),
                    )
                )
                err.print(
                    f"  {scenario:9} {name:9} median {seconds:.3f} s of {runs}:"
                    f" {len(result.placements)} placed, {len(result.waiting)} waiting",
                    highlight=False,
                )
    return rows


def growth_table(rows: list[Row]) -> Table:
    sizes = sorted({r.nodes for r in rows})
    n_log_n = ", ".join(
        f"{exponent(1.0, n_log_n_ratio(a, b), a, b):.2f} from {a:,} to {b:,}"
        for a, b in zip(sizes, sizes[1:], strict=False)
    )
    table = Table(
        title=f"One planning round, {QUEUED_JOBS:,} queued jobs, {GPUS_PER_NODE} GPUs a node",
        caption="median: of `runs` rounds; k: exponent of t ~ n^k from the previous size"
        + (f" (n log n growth is k = {n_log_n} nodes)" if n_log_n else ""),
    )
    for column in (
        "scenario",
        "nodes",
        "GPUs",
        "running",
        "planner",
        "runs",
        "median",
        "placed",
        "waiting",
        "preempted",
        "GPUs placed",
        "t ratio",
        "n ratio",
        "k",
    ):
        table.add_column(column, justify="left" if column in ("scenario", "planner") else "right")
    previous: dict[tuple[str, str], Row] = {}
    for scenario in dict.fromkeys(r.scenario for r in rows):
        for r in sorted(
            (r for r in rows if r.scenario == scenario),
            key=lambda r: (r.nodes, r.planner != "mesh"),
        ):
            before = previous.get((r.scenario, r.planner))
            ratio = k = n_ratio = "-"
            if before is not None:
                ratio = f"{r.median_s / before.median_s:.2f}"
                n_ratio = f"{r.nodes / before.nodes:g}"
                k = f"{exponent(before.median_s, r.median_s, before.nodes, r.nodes):.2f}"
            table.add_row(
                r.scenario,
                f"{r.nodes:,}",
                f"{r.gpus:,}",
                f"{r.running:,}",
                r.planner,
                str(r.runs),
                f"{r.median_s * 1000:,.0f} ms",
                f"{r.placed:,}",
                f"{r.waiting:,}",
                f"{r.preempted:,}",
                f"{r.gpus_placed:,.1f}",
                ratio,
                n_ratio,
                k,
            )
            previous[(r.scenario, r.planner)] = r
        table.add_section()
    return table


def verdicts(rows: list[Row]) -> list[str]:
    """Per scenario and planner: the growth over the two largest sizes against n log n."""
    lines: list[str] = []
    sizes = sorted({r.nodes for r in rows})
    if len(sizes) < 2:
        return lines
    n1, n2 = sizes[-2], sizes[-1]
    bound = n_log_n_ratio(n1, n2)
    by = {(r.scenario, r.planner, r.nodes): r for r in rows}
    for scenario in dict.fromkeys(r.scenario for r in rows):
        for name in PLANNERS:
            t1, t2 = by[(scenario, name, n1)].median_s, by[(scenario, name, n2)].median_s
            ratio = t2 / t1
            within = "within" if ratio <= bound else "above"
            lines.append(
                f"{scenario}, {name}: t({n2})/t({n1}) = {ratio:.2f};"
                f" ({n2} log {n2})/({n1} log {n1}) = {bound:.2f}: {within} n log n growth"
                f" (k = {exponent(t1, t2, n1, n2):.2f})"
            )
    return lines


def profile(out: Console, err: Console, scenario: str = "empty") -> None:
    snapshot = cluster(PROFILE_NODES)
    fresh = queue(0, QUEUED_JOBS)
    running = set_up(scenario, snapshot, PROFILE_NODES, err)
    profiler = cProfile.Profile()
    profiler.enable()
    plan(snapshot, fresh, running, 0.0)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(PROFILE_LINES)
    out.print(
        f"cProfile of one round, {scenario}, {PROFILE_NODES} nodes, {len(running)} running,"
        f" {QUEUED_JOBS} jobs queued, by own time:",
        highlight=False,
    )
    out.print(text.getvalue(), highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 nodes only")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="empty",
        choices=[s.replace(" ", "-") for s in SCENARIOS],
        help="also profile one round at 1,000 nodes, of the scenario named (default: empty)",
    )
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    out = Console(width=max(Console().width, 150))  # a pipe would otherwise get 80 columns
    rows = run(QUICK_SIZES if args.quick else SIZES, err)
    out.print(growth_table(rows))
    for line in verdicts(rows):
        out.print(line, highlight=False)
    if args.profile:
        profile(out, err, args.profile.replace("-", " "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
