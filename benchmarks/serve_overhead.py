"""Requests/s and latency of a Service through the mesh's /v1, beside `vllm serve` over HTTP.

    python benchmarks/serve_overhead.py [--clients 4] [--seconds 30] [--max-tokens 16]
        [--repeat 2] [--threads N] [--json]

SmolLM2-135M-Instruct (converted once by benchmarks/batch_overhead.py's `model_folder`, cached
under benchmarks/out/smollm2-135m) answers the same load on each side: `--clients` threads, each
sending one chat completion after another (distinct prompts, greedy, `--max-tokens` tokens, no
streaming) for `--seconds`, over HTTP on 127.0.0.1, after two untimed warm-up requests.

- mesh: a local mesh (a head, and one declared node with one GPU), the model registered through
  the API, a public Service (`gpus: 1`, `cpus: --threads`) submitted and waited for; the load
  goes to the mesh's /v1 front (Serve proxy -> the front's replica -> the Service's replica
  application -> vLLM).
- direct: `python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs) in a process
  of its own with the settings the Service's replica gives vLLM on the CPU (float32, eager,
  max_model_len 512, 1 GiB KV cache, the same OpenMP threads and binding).

Both engines are up during both loads (the other side idles); the loads alternate (mesh first in
odd repeats). requests/s = successful requests / the load's seconds; p50 and p99 of the latency
of successful requests. Ratios mesh/direct of the medians: throughput (floor 0.85x) and p50
(ceiling 1.2x). On the CPU only (no CUDA build of vLLM here), as the output says.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from batch_overhead import (
    ADMIN_TOKEN,
    COMMUNITY,
    MODEL_NAME,
    build_prompts,
    detect_device,
    mesh_up,
    model_folder,
    vllm_settings,
)
from rich.console import Console
from rich.table import Table

from scheduler import transfer

SERVICE = f"{COMMUNITY}/smollm2-chat"
MAX_MODEL_LEN = 512
READY_TIMEOUT_S = 900.0
THROUGHPUT_FLOOR = 0.85
P50_CEILING = 1.2
WARMUP = 2


@dataclass
class Run:
    side: str
    repeat: int
    requests: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    tokens: int

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds


def load(url: str, model: str, clients: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    """`clients` threads of back-to-back chat completions for `seconds`; what came back."""
    prompts = [row["messages"] for row in build_prompts(4096)]
    latencies: list[float] = []
    tokens: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def body(i: int) -> dict[str, Any]:
        return {
            "model": model,
            "messages": prompts[i % len(prompts)],
            "max_tokens": max_tokens,
            "temperature": 0,
        }

    with httpx.Client(timeout=120) as warm:
        for i in range(WARMUP):
            warm.post(f"{url}/chat/completions", json=body(i)).raise_for_status()
    end = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < end:
                i = next(counter)
                started = time.monotonic()
                try:
                    r = http.post(f"{url}/chat/completions", json=body(WARMUP + i))
                    ok = r.status_code == 200
                    got = r.json()["usage"]["completion_tokens"] if ok else 0
                    why = "" if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok, got, why = False, 0, f"{type(e).__name__}: {e}"
                with lock:
                    if ok:
                        latencies.append(time.monotonic() - started)
                        tokens.append(got)
                    else:
                        failures.append(why)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "seconds": time.monotonic() - started,
        "latencies": latencies,
        "tokens": sum(tokens),
        "failures": failures,
    }


def summarise_run(side: str, repeat: int, got: dict[str, Any]) -> Run:
    lat = sorted(got["latencies"]) or [float("nan")]
    return Run(
        side=side,
        repeat=repeat,
        requests=len(got["latencies"]),
        failed=len(got["failures"]),
        seconds=got["seconds"],
        p50_ms=1000 * statistics.median(lat),
        p99_ms=1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        tokens=got["tokens"],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_models(url: str, model: str, headers: dict[str, str], proc: Any = None) -> None:
    """Until GET {url}/models lists `model` (with a serving replica, on the mesh)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with status {proc.returncode}")
        try:
            r = httpx.get(f"{url}/models", headers=headers, timeout=5)
            if r.status_code == 200:
                cards = {c["id"]: c for c in r.json()["data"]}
                meta = (cards.get(model) or {}).get("metadata") or {}
                if model in cards and (proc is not None or meta.get("replicas")):
                    return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"{model} did not answer at {url} in {READY_TIMEOUT_S:g} s")


@contextmanager
def vllm_server(model: Path, threads: int, err: Console) -> Iterator[str]:
    """`vllm serve` of `model` (as the Service's replica sets vLLM up on the CPU); its /v1."""
    kwargs, env = vllm_settings("cpu", model, MAX_MODEL_LEN, threads)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        SERVICE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        kwargs["dtype"],
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--load-format",
        "safetensors",
        "--enforce-eager",
        "--disable-uvicorn-access-log",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        stdout=sys.stderr,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_models(url, SERVICE, {}, proc)
        err.print(f"vllm serve up in {time.monotonic() - started:.1f} s", highlight=False)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def mesh_service(api: str, model: Path, threads: int, err: Console) -> str:
    """Register the model and start a public Service of it; the mesh's /v1 once it answers."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(timeout=60) as http:
        digest = transfer.upload_tree(http, api, headers, model, COMMUNITY)
        body = {"name": MODEL_NAME, "sha256": digest, "kind": "base", "source": "benchmarks"}
        r = http.post(f"{api}/models", json=body, headers=headers)
        if r.status_code != 201:
            raise RuntimeError(f"registering {MODEL_NAME}: {r.status_code} {r.text}")
        doc = {
            "apiVersion": "mesh/v1",
            "kind": "Service",
            "name": SERVICE.split("/", 1)[1],
            "community": COMMUNITY,
            "resources": {"gpus": 1, "cpus": threads, "memory_gb": 4},
            "service": {"model": MODEL_NAME, "access": "public", "max_model_len": MAX_MODEL_LEN},
        }
        started = time.monotonic()
        r = http.post(f"{api}/jobs", json=doc, headers=headers)
        if r.status_code != 201:
            raise RuntimeError(f"submitting {SERVICE}: {r.status_code} {r.text}")
    url = api.rsplit("/api/v1", 1)[0] + "/v1"
    wait_models(url, SERVICE, headers)
    err.print(f"the Service serves {time.monotonic() - started:.1f} s after submit")
    return url


def ratios(runs: list[Run]) -> dict[str, float]:
    def med(side: str, f: Any) -> float:
        return float(statistics.median(f(r) for r in runs if r.side == side))

    return {
        "throughput": med("mesh", lambda r: r.per_s) / med("direct", lambda r: r.per_s),
        "p50": med("mesh", lambda r: r.p50_ms) / med("direct", lambda r: r.p50_ms),
        "p99": med("mesh", lambda r: r.p99_ms) / med("direct", lambda r: r.p99_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="each load's length (30)")
    parser.add_argument("--max-tokens", type=int, default=16, help="per request (16)")
    parser.add_argument("--repeat", type=int, default=2, help="loads of each side (2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="vLLM threads")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.clients, args.max_tokens, args.repeat, args.threads) < 1 or args.seconds <= 0:
        parser.error("--clients, --seconds, --max-tokens, --repeat, --threads must be positive")
    err = Console(stderr=True)
    device, device_name, why = detect_device()
    if device != "cpu":
        err.print("a CUDA build of vLLM: this benchmark measures the CPU build only", style="red")
        return 1
    runs: list[Run] = []
    try:
        model = model_folder(lambda m: err.print(m, highlight=False))
        with mesh_up("cpu", device_name, args.threads, err) as api:
            mesh_v1 = mesh_service(api, model, args.threads, err)
            with vllm_server(model, args.threads, err) as direct_v1:
                urls = {"mesh": mesh_v1, "direct": direct_v1}
                for k in range(1, args.repeat + 1):
                    for side in ("mesh", "direct") if k % 2 else ("direct", "mesh"):
                        got = load(urls[side], SERVICE, args.clients, args.seconds, args.max_tokens)
                        run = summarise_run(side, k, got)
                        runs.append(run)
                        err.print(
                            f"repeat {k}: {side:6} {run.per_s:.2f} requests/s, p50 "
                            f"{run.p50_ms:.0f} ms, p99 {run.p99_ms:.0f} ms, {run.failed} failed"
                            + (f" ({got['failures'][0]})" if got["failures"] else ""),
                            highlight=False,
                            markup=False,
                        )
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        err.print(traceback.format_exc(), highlight=False, markup=False)
        err.print(f"error: the benchmark failed: {e}", highlight=False, markup=False)
        return 1
    r = ratios(runs)
    if args.json:
        print(json.dumps({"device": device_name, "runs": [asdict(x) for x in runs], "ratios": r}))
        return 0
    t = Table(
        "side",
        "run",
        "requests",
        "failed",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "tokens/s",
        title=f"Service through the mesh's /v1 vs vllm serve: SmolLM2-135M on {device_name}, "
        f"{args.clients} clients, max_tokens {args.max_tokens}, {args.seconds:g} s loads",
    )
    for x in runs:
        t.add_row(
            x.side,
            str(x.repeat),
            str(x.requests),
            str(x.failed),
            f"{x.per_s:.2f}",
            f"{x.p50_ms:.0f}",
            f"{x.p99_ms:.0f}",
            f"{x.tokens / x.seconds:.1f}",
        )
    Console().print(t)
    print(
        f"mesh/direct: throughput {r['throughput']:.2f}x (floor {THROUGHPUT_FLOOR}x: "
        f"{'met' if r['throughput'] >= THROUGHPUT_FLOOR else 'NOT met'}), p50 {r['p50']:.2f}x "
        f"(ceiling {P50_CEILING}x: {'met' if r['p50'] <= P50_CEILING else 'NOT met'}), "
        f"p99 {r['p99']:.2f}x"
    )
    print(f"measured: {device_name}; {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
