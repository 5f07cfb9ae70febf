"""Trust but verify: what a joined node claims, the Probe that checks it, and the verdict.

A node with declared GPUs (`mesh/simulated=true`) is SIMULATED: schedulable, never probed. A
real node with GPUs is VERIFYING until a Probe job on each of its GPUs (`mesh/verify-<node>`)
has measured them; it is then READY when every GPU is the claimed model, has the claimed memory
and multiplies matrices at least MIN_SPEED of the catalogue's speed for that model, and SUSPECT
(no work) otherwise. A real node without GPUs is READY at once: there is nothing to probe.

Pure: no Ray, no clock, no I/O. The controller (`scheduler/node_keeping.py`) acts on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scheduler import gpus
from scheduler.cluster import Node

SIMULATED = "SIMULATED"
VERIFYING = "VERIFYING"
READY = "READY"
SUSPECT = "SUSPECT"
SCHEDULABLE = frozenset({SIMULATED, READY})

# A real GPU's dense half-precision matmul of 4096 reaches 0.6-0.9 of its catalogue figure; a
# card of a lower class sold as a higher one (an RTX 3060 as a 4090) reaches about 0.3.
MIN_SPEED = 0.4
MIN_MEMORY = 0.9  # of the memory the node claims (both are read from the driver)
VERIFY_COMMUNITY = "mesh"
VERIFY_PREFIX = "verify-"
PROBE_SECONDS = 1
PROBE_MATMUL = 4096


def claim_of(node: Node) -> dict[str, Any]:
    """What a node claims about its GPUs: the part of its labels a verdict is about."""
    if not node.gpus:
        return {"gpus": 0}
    g = node.gpus[0]
    return {
        "gpus": len(node.gpus),
        "model": g.model,
        "memory_gb": g.memory_gb,
        "compute_capability": gpus.format_compute_capability(g.compute_capability),
    }


def needs_probe(node: Node) -> bool:
    return not node.simulated and bool(node.gpus)


def verify_job_name(node: str) -> str:
    """The Probe job's name (a DNS label) for a node: `verify-<node>`."""
    return (VERIFY_PREFIX + node)[:63].rstrip("-")


def verify_job_id(node: str) -> str:
    return f"{VERIFY_COMMUNITY}/{verify_job_name(node)}"


def is_verify_job(job_id: str) -> bool:
    return job_id.startswith(f"{VERIFY_COMMUNITY}/{VERIFY_PREFIX}")


def verify_spec(node: Node) -> dict[str, Any]:
    """The Probe job document that checks every GPU of `node` (one bundle per GPU)."""
    return {
        "apiVersion": "mesh/v1",
        "kind": "Probe",
        "name": verify_job_name(node.name),
        "community": VERIFY_COMMUNITY,
        "priority": "high",
        "max_retries": 0,
        "resources": {"gpus": len(node.gpus), "gpu_types": [node.gpus[0].model]},
        "probe": {"duration_s": PROBE_SECONDS, "matmul_size": PROBE_MATMUL},
    }


def judge(node: Node, reports: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """(READY or SUSPECT, why) from the Probe's bundle reports on `node`."""
    if not node.gpus:
        return READY, "no GPUs to verify"
    model = gpus.find(node.gpus[0].model)
    claimed = f"{len(node.gpus)} x {node.gpus[0].model}"
    if len(reports) < len(node.gpus):
        return SUSPECT, f"claims {claimed}; the probe reported {len(reports)} of them"
    speeds = []
    for r in sorted(reports, key=lambda r: int(r.get("bundle", 0))):
        where = f"GPU {r.get('bundle', '?')}"
        device = r.get("device")
        if not device:
            return SUSPECT, f"claims {claimed}; {where}: the probe found no CUDA device"
        found = gpus.find(str(device))
        if model is None or found is None or found.name != model.name:
            return SUSPECT, f"claims {claimed}; {where} is a {device}"
        memory = float(r.get("memory_gb") or 0)
        want = node.gpus[0].memory_gb
        if memory < MIN_MEMORY * want:
            return SUSPECT, f"claims {claimed} with {want:g} GB; {where} has {memory:g} GB"
        tflops = float(r.get("tflops") or 0)
        if model.tflops_16 and tflops < MIN_SPEED * model.tflops_16:
            return (
                SUSPECT,
                f"claims {claimed}; {where} multiplies at {tflops:g} TFLOP/s, below"
                f" {MIN_SPEED:g} x the {model.tflops_16:g} a {model.name} reaches",
            )
        speeds.append(tflops)
    return READY, (
        f"{claimed} verified: {min(speeds):g}-{max(speeds):g} TFLOP/s"
        f" (catalogue {model.tflops_16:g})"
        if model
        else f"{claimed} verified"
    )
