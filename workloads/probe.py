"""kind: Probe: occupy a bundle for `duration_s` and report what the bundle really got.

Per bundle: the node's `mesh/node` label, the GPU ids Ray assigned (`CUDA_VISIBLE_DEVICES`),
the share of a GPU, and, when torch sees a CUDA device, its name, memory and a matmul TFLOP/s
figure. Nodes with declared (simulated) GPUs are not measured: there is no GPU behind them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from cluster.labels import NODE, SIMULATED
from workloads.matmul import measure_cuda
from workloads.runner import WorkContext, WorkloadError


def run_probe(ctx: WorkContext) -> dict[str, Any]:
    section = ctx.spec.get("probe") or {}
    duration = float(section.get("duration_s", 30))
    size = int(section.get("matmul_size", 4096))
    started = time.time()
    runtime = ray.get_runtime_context()
    labels = runtime.get_node_labels()
    node = labels.get(NODE)
    if node != ctx.node:
        raise WorkloadError(f"bundle {ctx.bundle} was meant for node {ctx.node} but runs on {node}")
    assigned = runtime.get_assigned_resources()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    simulated = labels.get(SIMULATED) == "true"
    ctx.log(
        f"bundle {ctx.bundle} on {node}: GPU ids {','.join(gpu_ids) or '-'}, "
        f"share {assigned.get('GPU', 0):g}" + (" (simulated GPUs)" if simulated else "")
    )
    measured = None if simulated or not gpu_ids else measure_cuda(size)
    if measured:
        ctx.log(
            f"bundle {ctx.bundle}: {measured['device']}, {measured['memory_gb']} GB, "
            f"{measured['tflops']} TFLOP/s ({measured['dtype']} matmul {size})"
        )
    remaining = duration - (time.time() - started)
    while remaining > 0:
        time.sleep(min(remaining, 5.0))
        remaining = duration - (time.time() - started)
        if remaining > 0:
            ctx.log(f"bundle {ctx.bundle}: {duration - remaining:.0f} of {duration:g} s")
    ctx.log(f"bundle {ctx.bundle}: done")
    return {
        "bundle": ctx.bundle,
        "node": node,
        "gpu_ids": gpu_ids,
        "cuda_visible_devices": visible,
        "gpu_fraction": assigned.get("GPU", 0.0),
        "simulated": simulated,
        "device": measured["device"] if measured else None,
        "memory_gb": measured["memory_gb"] if measured else None,
        "tflops": measured["tflops"] if measured else None,
        "pid": os.getpid(),
        "started_at": started,
        "finished_at": time.time(),
    }
