"""What the API shows: job and node views built from the store, and the API's error type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from scheduler.store import JobRow, Store

if TYPE_CHECKING:
    from scheduler.controller import Active


class ApiError(Exception):
    """An error the API returns as {"error": {"code", "message", "hint"}} with `status`."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "hint": self.hint}}


# The HTTP status of each error code the store raises.
STORE_STATUS = {"job_exists": 409, "not_found": 404}


def job_view(row: JobRow, store: Store) -> dict[str, Any]:
    return {
        **row.summary(),
        "spec": row.spec,
        "placement": row.placement,
        "report": row.report,
        "inputs": row.inputs,
        "gpu_seconds": round(row.gpu_seconds, 3),
        "transitions": store.transitions(row.id),
    }


def node_views(store: Store, active: Iterable[Active], now: float) -> list[dict[str, Any]]:
    """Every node seen: its GPUs, what is allocated there to which job, its availability."""
    allocations: dict[str, list[dict[str, Any]]] = {}
    for a in active:
        for i, (b, d) in enumerate(zip(a.bundles, a.demand.bundles, strict=True)):
            if i in a.missing:  # a Service replica waiting for a node holds nothing
                continue
            allocations.setdefault(b.node, []).append(
                {
                    "job": a.job,
                    "bundle": i,
                    "gpus": list(b.gpus),
                    "gpu_fraction": b.gpu_fraction,
                    "cpus": d.cpu_milli / 1000,
                }
            )
    views = []
    for n in store.nodes(now):
        labels = n["labels"]
        used = [0.0] * n["gpus"]
        for alloc in allocations.get(n["name"], []):
            for g in alloc["gpus"]:
                if 0 <= g < len(used):
                    used[g] += alloc["gpu_fraction"]
        memory = float(labels.get("mesh/gpu-memory-gb", 0) or 0)
        views.append(
            {
                "name": n["name"],
                "alive": n["alive"],
                "simulated": labels.get("mesh/simulated") == "true",
                "owner": labels.get("mesh/owner"),
                "cpus": n["cpus"],
                "memory_gb": round(n["memory_gb"], 2),
                "gpus": [
                    {
                        "index": i,
                        "model": labels.get("mesh/gpu-model"),
                        "memory_gb": memory,
                        "used": round(u, 3),
                    }
                    for i, u in enumerate(used)
                ],
                "allocations": allocations.get(n["name"], []),
                "availability": n["availability"],
                "mtbf_h": n["mtbf_h"],
                "failures": n["failures"],
                "claim": n["claim"],
                "first_seen": n["first_seen"],
                "last_seen": n["last_seen"],
            }
        )
    return views
