"""Trace adapters: public GPU-cluster traces as `Trace`s of `SimJob`s, and their fleets as clusters.

Each reader returns the jobs sorted by arrival, then id; a job's id is `community/name`. What a
reader cannot use it drops and counts (`Trace.dropped`, `Trace.dropped_why`); a malformed file
raises `ValueError` naming the file, the line and the column.

- `read_gavel`: Gavel's Philly-derived traces (OSDI'20), one `.trace` file per virtual cluster,
  with a duration per GPU model from Gavel's measured throughputs.
- `read_openb`: the Alibaba openb pod list (FGD, ATC'23) replayed in creation order.
- `read_csv`: a plain `arrival_s,duration_s,gpus,gpu_memory_gb,community` file.
- `cluster_from_openb_nodes`, `cluster_from_spot`, `load_any_cluster`: fleets as `ClusterSnapshot`s.

The traces themselves are read in place from `traces_root()` (../shared/traces or $MESH_TRACES).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from scheduler import gpus
from scheduler.cluster import ClusterSnapshot, Gpu, Node, load_cluster
from scheduler.policy.model import BundleDemand, JobDemand
from scheduler.sim.fill import LISTS, Pod, read_nodes, read_pods, trace_dir
from scheduler.sim.model import SimJob, Trace
from scheduler.sim.packers import fleet_node

FORMATS = ("gavel", "openb", "csv")
GAVEL_THROUGHPUTS = "simulation_throughputs.json"
GAVEL_GPU_TYPES = ("k80", "p100", "v100")  # consolidated only: *_unconsolidated is spread jobs
SPOT_MEMORY_GB_PER_CPU = 8.0
# CPU and memory of each one-GPU bundle of a Gavel or plain-CSV job, which give neither. Gavel's
# gavel-108 cluster has 32 CPUs and 256 GB per 4-GPU node, so neither binds there.
BUNDLE_CPU_MILLI = 1000
BUNDLE_MEMORY_MIB = 4096

Throughputs = Mapping[str, Mapping[tuple[str, int], float]]
"""Steps/s by catalogue GPU name, then by (job type, scale factor)."""


def traces_root() -> Path:
    """The folder of public traces (`../shared/traces`, or `$MESH_TRACES`).

    Raises `fill.TraceNotFoundError` (a FileNotFoundError) saying how to fix it when absent.
    """
    return trace_dir().parent


# --- shared helpers -------------------------------------------------------------------------------


def _slug(text: str) -> str:
    """Lower-case letters, digits and single '-': "Best Effort" -> "best-effort"."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.strip().lower()).strip("-")
    return slug[:63].rstrip("-")


def _label(text: str, fallback: str = "default") -> str:
    """`text` made a community name (a DNS label starting with a letter); "" -> `fallback`."""
    label = _slug(text)
    if label and not label[0].isalpha():
        label = _slug(f"c-{label}")
    return label or fallback


def _trace(jobs: Iterable[SimJob], source: str, dropped: Counter[str]) -> Trace:
    ordered = tuple(sorted(jobs, key=lambda j: (j.arrival_s, j.id)))
    ids = Counter(j.id for j in ordered)
    twice = [i for i, n in ids.items() if n > 1]
    if twice:
        raise ValueError(f"{source}: job id {twice[0]!r} occurs {ids[twice[0]]} times")
    why = "; ".join(f"{n:,} {reason}" for reason, n in dropped.most_common())
    return Trace(jobs=ordered, source=source, dropped=sum(dropped.values()), dropped_why=why)


def _job(
    job_id: str,
    bundles: tuple[BundleDemand, ...],
    arrival_s: float,
    duration_s: float,
    *,
    kind: str,
    exclusive: bool,
    preemptible: bool,
    speed_sensitive: bool,
    gpu_models: frozenset[str] | None = None,
    durations: Mapping[str, float] | None = None,
) -> SimJob:
    """A job `community/name` of priority 1 that the policy is told runs `duration_s`."""
    demand = JobDemand(
        job=job_id,
        community=job_id.split("/")[0],
        priority=1,
        bundles=bundles,
        exclusive=exclusive,
        preemptible=preemptible,
        gpu_models=gpu_models,
        runtime_s=duration_s,
        submitted_at=arrival_s,
        speed_sensitive=speed_sensitive,
        kind=kind,
    )
    return SimJob(demand, arrival_s=arrival_s, duration_s=duration_s, durations=durations)


def _check_scale(time_scale: float) -> None:
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be a number > 0, got {time_scale!r}")


def scale_arrivals(trace: Trace, time_scale: float) -> Trace:
    """`trace` with every arrival (and `submitted_at`) multiplied by `time_scale`; durations kept.

    A `time_scale` of 0.5 packs the same jobs into half the time, doubling the load.
    """
    _check_scale(time_scale)
    if time_scale == 1.0:
        return trace
    jobs = tuple(
        dataclasses.replace(
            job,
            arrival_s=job.arrival_s * time_scale,
            demand=dataclasses.replace(job.demand, submitted_at=job.arrival_s * time_scale),
        )
        for job in trace.jobs
    )
    return dataclasses.replace(trace, jobs=jobs)


# --- Gavel ----------------------------------------------------------------------------------------


def read_gavel_throughputs(path: str | Path) -> dict[str, dict[tuple[str, int], float]]:
    """Gavel's `simulation_throughputs.json` as steps/s by catalogue name and (job type, scale).

    Only the consolidated types k80, p100 and v100 are read; the `*_unconsolidated` variants and
    the co-located pair entries ("('<other>', <scale>)" beside "null") are left out.
    """
    p = Path(path)
    with p.open() as f:
        raw = json.load(f)
    table: dict[str, dict[tuple[str, int], float]] = {}
    for gpu_type in GAVEL_GPU_TYPES:
        if gpu_type not in raw:
            raise ValueError(f"{p.name}: no {gpu_type!r} entry (found {sorted(raw)})")
        by_job: dict[tuple[str, int], float] = {}
        for key, entry in raw[gpu_type].items():
            try:
                job_type, scale = ast.literal_eval(key)  # "('ResNet-18 (batch size 16)', 1)"
                by_job[(str(job_type), int(scale))] = float(entry["null"])
            except (ValueError, TypeError, SyntaxError, KeyError):
                raise ValueError(
                    f"{p.name}: {gpu_type}: key {key!r} is not \"('<job type>', <scale>)\" with "
                    'a "null" throughput'
                ) from None
        table[gpus.resolve(gpu_type).name] = by_job
    return table


def _gavel_files(p: Path) -> list[Path]:
    files = sorted(p.glob("*.trace")) if p.is_dir() else [p] if p.is_file() else []
    if not files:
        raise FileNotFoundError(f"{p}: no Gavel trace here (a .trace file or a folder of them)")
    return files


def _default_throughputs(p: Path) -> Path:
    folder = p if p.is_dir() else p.parent
    for candidate in (folder / GAVEL_THROUGHPUTS, folder.parent / GAVEL_THROUGHPUTS):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {GAVEL_THROUGHPUTS} in {folder} or {folder.parent}. To fix: pass throughputs= "
        "(its path, or steps/s by GPU model and (job type, scale))"
    )


def read_gavel(
    path: str | Path,
    *,
    throughputs: str | Path | Throughputs | None = None,
    time_scale: float = 1.0,
) -> Trace:
    """A Gavel trace: one `.trace` file, or a folder of them (e.g. `gavel/seed=0`).

    Each file is one virtual cluster, community `vc-<file stem>`; a job's id is
    `vc-<stem>/<line>`, its line in that file. A job of `scale_factor` GPUs runs
    `total_steps / steps_per_s` on each GPU model measured in `throughputs` (by default Gavel's
    `simulation_throughputs.json` beside the seed folder); its `duration_s` (and the `runtime_s`
    the policy is told) is that on the fastest model, and `gpu_models` the models measured. A job
    whose (job type, scale) has no positive throughput on every model is dropped and counted.
    Arrivals are `arrival_time_s * time_scale`.
    """
    _check_scale(time_scale)
    p = Path(path)
    files = _gavel_files(p)
    if throughputs is None or isinstance(throughputs, str | Path):
        table: Throughputs = read_gavel_throughputs(
            _default_throughputs(p) if throughputs is None else throughputs
        )
    else:
        table = {gpus.resolve(name).name: by_job for name, by_job in throughputs.items()}
    if not table:
        raise ValueError("throughputs: no GPU model given")
    models = frozenset(table)
    jobs: list[SimJob] = []
    dropped: Counter[str] = Counter()
    for file in files:
        community = _slug(f"vc-{file.stem}")
        with file.open() as f:
            for line, text in enumerate(f, 1):
                fields = text.rstrip("\r\n").split("\t")
                if not text.strip():
                    continue
                key, total_steps, arrival = _gavel_row(fields, f"{file.name} line {line}")
                durations = _gavel_durations(table, key, total_steps)
                if isinstance(durations, str):
                    dropped[durations] += 1
                    continue
                bundle = BundleDemand(1, BUNDLE_CPU_MILLI, BUNDLE_MEMORY_MIB)
                jobs.append(
                    _job(
                        f"{community}/{line}",
                        (bundle,) * key[1],
                        arrival * time_scale,
                        min(durations.values()),  # on the fastest model
                        kind="FineTune",
                        exclusive=True,
                        preemptible=True,
                        speed_sensitive=True,
                        gpu_models=models,
                        durations=durations,
                    )
                )
    return _trace(jobs, f"gavel {p.name}", dropped)


def _gavel_row(fields: Sequence[str], where: str) -> tuple[tuple[str, int], int, float]:
    """(job type, scale), total steps and arrival time of one line of a Gavel trace."""
    if len(fields) != 7:
        raise ValueError(
            f"{where}: expected 7 tab-separated columns (job_type, command, num_steps_arg, "
            f"needs_data_dir, total_steps, arrival_time_s, scale_factor), got {len(fields)}"
        )
    job_type = fields[0]
    total_steps = _parse_int(fields[4], where, "total_steps", minimum=1)
    arrival = _parse_number(fields[5], where, "arrival_time_s", positive=False)
    scale = _parse_int(fields[6], where, "scale_factor", minimum=1)
    return (job_type, scale), total_steps, arrival


def _gavel_durations(
    table: Throughputs, key: tuple[str, int], total_steps: int
) -> dict[str, float] | str:
    """Seconds on each GPU model of `table`, or why the job cannot be simulated."""
    durations: dict[str, float] = {}
    for model, by_job in table.items():
        rate = by_job.get(key)
        if rate is None:
            return "no throughput entry for (job type, scale)"
        if not rate > 0:
            return f"zero throughput on {model} for (job type, scale)"
        durations[model] = total_steps / rate
    return durations


# --- openb ----------------------------------------------------------------------------------------

_OPENB_TIMES = ("creation_time", "deletion_time")
_OPENB_POPULATIONS = {file: name for name, file in LISTS.items() if name != "default"}


def _header(p: Path) -> list[str]:
    with p.open(newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise ValueError(f"{p.name}: empty; expected a CSV header line")
    return [h.strip() for h in header]


def read_openb(path: str | Path, *, limit: int | None = None) -> Trace:
    """The openb pod list (`openb_pod_list_default.csv`) as a trace: each pod one job.

    `limit`: only the first `limit` pods of the file (which is in creation order). A job arrives
    at `creation_time` less the earliest creation time of the jobs kept, and runs until
    `deletion_time`; pods without a deletion time, or with none after creation, are dropped and
    counted. The job's id is `<qos>/<pod name>`, its community the pod's QoS class as a DNS label
    ("ls", "be", ...; "default" when empty). One bundle: `num_gpu` whole GPUs (exclusive), a
    fraction of one GPU (`gpu_milli` < 1000, may share), or none (CPU only); `gpu_models` from
    `gpu_spec`. The FGD variant lists are pod populations for `--mode fill` and raise ValueError.
    """
    p = Path(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    header = _header(p)
    variant = _OPENB_POPULATIONS.get(p.name)
    missing = [c for c in _OPENB_TIMES if c not in header]
    if variant is not None or missing:
        what = f"FGD's {variant!r} pod list" if variant else f"a pod list without {missing}"
        raise ValueError(
            f"{p.name} is {what}: a pod population to draw from at random for `--mode fill`, "
            f"not a time-ordered trace. To replay openb in time, read {LISTS['default']}"
        )
    pods = read_pods(p)  # validates cpu, memory, GPUs and gpu_spec
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if limit is not None:
        pods, rows = pods[:limit], rows[:limit]

    dropped: Counter[str] = Counter()
    kept: list[tuple[Pod, str, float, float]] = []  # pod, community, creation, duration
    for line, (pod, row) in enumerate(zip(pods, rows, strict=True), start=2):
        where = f"{p.name} line {line}"
        created = (row.get("creation_time") or "").strip()
        deleted = (row.get("deletion_time") or "").strip()
        if not created or not deleted:
            dropped[f"no {'creation' if not created else 'deletion'} time"] += 1
            continue
        start = _parse_number(created, where, "creation_time", positive=False)
        duration = _parse_number(deleted, where, "deletion_time", positive=False) - start
        if not duration > 0:
            dropped["deletion time not after creation time"] += 1
            continue
        kept.append((pod, _label(row.get("qos") or ""), start, duration))

    origin = min((start for _, _, start, _ in kept), default=0.0)
    jobs = [_openb_job(pod, community, start - origin, d) for pod, community, start, d in kept]
    return _trace(jobs, f"openb {p.name}", dropped)


def _openb_job(pod: Pod, community: str, arrival_s: float, duration_s: float) -> SimJob:
    share = pod.gpu_milli if pod.is_gpu_share else None
    return _job(
        f"{community}/{pod.name}",
        (BundleDemand(pod.num_gpu, pod.cpu_milli, pod.memory_mib, gpu_milli=share),),
        arrival_s,
        duration_s,
        kind="BatchInference" if pod.num_gpu else "Service",
        exclusive=pod.num_gpu > 0 and share is None,
        preemptible=False,
        speed_sensitive=False,
        gpu_models=pod.gpu_spec if pod.num_gpu else None,
    )


# --- plain CSV ------------------------------------------------------------------------------------

CSV_COLUMNS = ("arrival_s", "duration_s", "gpus", "gpu_memory_gb", "community")
_CSV_REQUIRED = ("arrival_s", "duration_s", "gpus")


def _parse_number(raw: str, where: str, column: str, *, positive: bool) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(
            f"{where}: {column}: expected a number {'> 0' if positive else '>= 0'}, got {raw!r}"
        )
    return value


def _parse_int(raw: str, where: str, column: str, *, minimum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{where}: {column}: expected an integer >= {minimum}, got {raw!r}")
    return value


def _csv_rows(p: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """("<file> line <n>", row) for each data row of a plain CSV trace; checks the header."""
    with p.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for column in header:
            if column not in CSV_COLUMNS:
                close = difflib.get_close_matches(column, CSV_COLUMNS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(
                    f"{p.name} line 1: unknown column {column!r}; {hint}"
                    f"expected the header {','.join(CSV_COLUMNS)}"
                )
        absent = [c for c in _CSV_REQUIRED if c not in header]
        if absent:
            raise ValueError(
                f"{p.name} line 1: no {', '.join(absent)} column; "
                f"expected the header {','.join(CSV_COLUMNS)}"
            )
        for fields in reader:
            where = f"{p.name} line {reader.line_num}"
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != len(header):
                raise ValueError(f"{where}: expected {len(header)} fields, got {len(fields)}")
            yield where, {c: v.strip() for c, v in zip(header, fields, strict=True)}


def read_csv(path: str | Path) -> Trace:
    """A plain CSV trace with the header `arrival_s,duration_s,gpus,gpu_memory_gb,community`.

    `gpu_memory_gb` (GB needed on each GPU; empty: whole GPUs) and `community` (a DNS label;
    empty: "default") may be left out. A job of `gpus` GPUs has that many bundles of one GPU (0:
    one CPU-only bundle), 1 CPU and 4 GiB each; it may share its GPUs when `gpu_memory_gb` is
    given. Its id is `<community>/<line>`. Errors name the file, the line and the column.
    """
    p = Path(path)
    jobs: list[SimJob] = []
    for where, row in _csv_rows(p):
        arrival = _parse_number(row["arrival_s"], where, "arrival_s", positive=False)
        duration = _parse_number(row["duration_s"], where, "duration_s", positive=True)
        count = _parse_int(row["gpus"], where, "gpus", minimum=0)
        memory = row.get("gpu_memory_gb", "")
        gpu_memory_mib = None
        if memory:
            gb = _parse_number(memory, where, "gpu_memory_gb", positive=True)
            if count == 0:
                raise ValueError(f"{where}: gpu_memory_gb: given for a CPU-only job (gpus 0)")
            gpu_memory_mib = math.ceil(round(gb * 1024, 6))
        community = row.get("community") or "default"
        if _label(community, "") != community:
            raise ValueError(
                f"{where}: community: {community!r} is not a DNS label (lower-case letters, "
                f"digits and '-', starting with a letter); did you mean {_label(community)!r}?"
            )
        bundle = BundleDemand(
            min(count, 1), BUNDLE_CPU_MILLI, BUNDLE_MEMORY_MIB, gpu_memory_mib=gpu_memory_mib
        )
        job = _job(
            f"{community}/{where.rsplit(' ', 1)[1]}",  # the line number
            (bundle,) * max(count, 1),
            arrival,
            duration,
            kind="FineTune",
            exclusive=count > 0 and gpu_memory_mib is None,
            preemptible=True,
            speed_sensitive=True,
        )
        jobs.append(job)
    return _trace(jobs, f"csv {p.name}", Counter())


def read_trace(path: str | Path, fmt: str, *, time_scale: float = 1.0) -> Trace:
    """The trace at `path` read as `fmt` ("gavel", "openb" or "csv"), arrivals x `time_scale`."""
    _check_scale(time_scale)
    if fmt == "gavel":
        return read_gavel(path, time_scale=time_scale)
    if fmt == "openb":
        return scale_arrivals(read_openb(path), time_scale)
    if fmt == "csv":
        return scale_arrivals(read_csv(path), time_scale)
    close = difflib.get_close_matches(fmt, FORMATS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown trace format {fmt!r}; {hint}use one of {', '.join(FORMATS)}")


# --- clusters -------------------------------------------------------------------------------------

_SPOT_COLUMNS = ("gpu_model", "gpu_capacity_num", "cpu_num", "node_name")
_OPENB_NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")


def cluster_from_openb_nodes(path: str | Path) -> ClusterSnapshot:
    """The openb fleet (`openb_node_list_gpu_node.csv` or `..._all_node.csv`) as a cluster."""
    return ClusterSnapshot(nodes=tuple(fleet_node(node) for node in read_nodes(path)))


def cluster_from_spot(path: str | Path) -> ClusterSnapshot:
    """The Alibaba spot GPU fleet (`alibaba-spot-2026/node_info_df.csv`) as a cluster.

    Columns `gpu_model,gpu_capacity_num,cpu_num,node_name`; node `<n>` becomes `spot-<n>`. The
    file gives no host memory, so each node is given 8 GB per CPU core (`SPOT_MEMORY_GB_PER_CPU`).
    GPU memory and compute capability come from the catalogue; every GPU model that the catalogue
    does not know is listed in one error.
    """
    p = Path(path)
    absent = [c for c in _SPOT_COLUMNS if c not in _header(p)]
    if absent:
        raise ValueError(f"{p.name}: no {', '.join(absent)} column; expected {_SPOT_COLUMNS}")
    nodes: list[Node] = []
    unknown: dict[str, str] = {}
    with p.open(newline="") as f:
        for line, raw in enumerate(csv.DictReader(f), start=2):
            where = f"{p.name} line {line}"
            row = {k: (v or "").strip() for k, v in raw.items() if isinstance(k, str)}
            count = _parse_int(row["gpu_capacity_num"], where, "gpu_capacity_num", minimum=0)
            cpus = _parse_number(row["cpu_num"], where, "cpu_num", positive=True)
            name = row["gpu_model"]
            model = gpus.find(name) if name else None
            if name and model is None:
                unknown.setdefault(name, where)
                continue
            devices = tuple(
                Gpu(i, model.name, model.memory_gb, model.compute_capability)
                for i in range(count)
                if model is not None
            )
            nodes.append(
                Node(
                    name=f"spot-{_slug(row['node_name']) or line - 2}",
                    cpus=cpus,
                    memory_gb=cpus * SPOT_MEMORY_GB_PER_CPU,
                    gpus=devices,
                    simulated=True,
                )
            )
    if unknown:
        listed = ", ".join(f"{n!r} (first at {w})" for n, w in unknown.items())
        raise ValueError(
            f"{p.name}: GPU models not in the catalogue: {listed}. To fix: add them to "
            "scheduler/gpus.py (`meshctl gpus` lists the catalogue)"
        )
    return ClusterSnapshot(nodes=tuple(nodes))


def load_any_cluster(path: str | Path) -> ClusterSnapshot:
    """A cluster from a cluster file (.yaml/.yml), an openb node list or the spot node list.

    CSV files are told apart by their header: `sn,cpu_milli,memory_mib,gpu,model` (openb) or
    `gpu_model,gpu_capacity_num,cpu_num,node_name` (spot).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return load_cluster(p)
    if suffix == ".csv":
        header = set(_header(p))
        if header >= set(_OPENB_NODE_COLUMNS):
            return cluster_from_openb_nodes(p)
        if header >= set(_SPOT_COLUMNS):
            return cluster_from_spot(p)
        raise ValueError(
            f"{p.name}: not a node list this reader knows; expected the header "
            f"{','.join(_OPENB_NODE_COLUMNS)} (openb) or {','.join(_SPOT_COLUMNS)} (spot)"
        )
    raise ValueError(
        f"{p.name}: cannot tell what cluster this is from its extension {suffix or '(none)'!r}; "
        "give a cluster file (.yaml), an openb node list or the spot node_info_df.csv (.csv)"
    )
