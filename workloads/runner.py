"""The workload actor: one per bundle, started by the actuator inside the job's placement group.

It runs its workload in a thread so that the controller can ask for logs while it works, and
so that a restarted controller can attach again: `wait()` may be called any number of times, by
any caller, and returns the same report. Workload actors are detached: a controller restart
does not stop them.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_LOG_LINES = 10_000
NAMESPACE = "mesh"


def worker_name(group: str, bundle: int) -> str:
    """The Ray actor name of a job's worker: its placement group's name and its bundle."""
    return f"{group}:{bundle}"


class WorkloadError(RuntimeError):
    """The workload itself failed; the message is what the user sees."""


@dataclass
class WorkContext:
    """What a workload knows of itself, and how it reports."""

    job: str
    kind: str
    spec: dict[str, Any]
    bundle: int
    node: str
    run: int = 1
    world: int = 1  # bundles in the job
    group: str = ""  # the placement group's name; bundle i's actor is worker_name(group, i)
    cpus: float = 1.0
    gpu_fraction: float = 0.0
    mtbf_s: float | None = None  # expected time to failure of the placement (Young/Daly)
    inputs: dict[str, Any] = field(default_factory=dict)  # resolved by the controller
    lines: list[tuple[float, str]] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # published to the other bundles
    stop: threading.Event = field(default_factory=threading.Event)  # checkpoint and stop (drain)

    def log(self, line: str) -> None:
        if len(self.lines) < MAX_LOG_LINES:
            self.lines.append((time.time(), line))

    def report_progress(self, **fields: Any) -> None:
        """The workload's latest progress (step, loss, tokens/s, ETA...): `meshctl status`."""
        self.progress = {**fields, "bundle": self.bundle, "ts": time.time()}

    def publish(self, key: str, value: Any) -> None:
        """Make `value` readable by the job's other bundles (`peer_value`)."""
        self.shared[key] = value

    def peer_value(self, bundle: int, key: str, timeout_s: float) -> Any:
        """What bundle `bundle` of this job published under `key`; waits up to `timeout_s`."""
        import ray

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                peer = ray.get_actor(worker_name(self.group, bundle), namespace=NAMESPACE)
                value: Any = ray.get(peer.published.remote(key), timeout=max(1.0, timeout_s))
                if value is not None:
                    return value
            except ValueError:  # not started yet
                pass
            if time.monotonic() > deadline:
                raise WorkloadError(
                    f"bundle {bundle} did not publish {key!r} within {timeout_s:g} s"
                )
            time.sleep(0.2)


Workload = Callable[[WorkContext], dict[str, Any]]


def _workloads() -> dict[str, Workload]:
    from workloads.batch import run_batch
    from workloads.finetune import run_finetune
    from workloads.probe import run_probe
    from workloads.serving import run_service

    return {
        "Probe": run_probe,
        "FineTune": run_finetune,
        "BatchInference": run_batch,
        "Service": run_service,
    }


class WorkloadActor:
    """Runs one bundle of a job. Created with `ray.remote(WorkloadActor)` by the actuator."""

    def __init__(
        self,
        job: str,
        kind: str,
        spec: dict[str, Any],
        bundle: int,
        node: str,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.ctx = WorkContext(
            job=job, kind=kind, spec=spec, bundle=bundle, node=node, **(context or {})
        )
        self._done = threading.Event()
        self._report: dict[str, Any] | None = None
        self._error: str | None = None
        workload = _workloads().get(kind)
        if workload is None:
            self._error = f"kind {kind} cannot run on this mesh yet"
            self._done.set()
            return
        self._thread = threading.Thread(target=self._run, args=(workload,), daemon=True)
        self._thread.start()

    def _run(self, workload: Workload) -> None:
        try:
            self._report = workload(self.ctx)
        except WorkloadError as e:
            self._error = str(e)
        except Exception as e:  # the workload's own bug: report it whole
            self._error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        finally:
            self._done.set()

    def wait(self) -> dict[str, Any]:
        """Block until the workload ends; its report, or WorkloadError with what went wrong."""
        self._done.wait()
        if self._error is not None:
            raise WorkloadError(self._error)
        return self._report or {}

    def logs(self, since: int) -> dict[str, Any]:
        """{"lines": log lines from index `since` (0-based) on, "progress": the latest}."""
        return {"lines": self.ctx.lines[since:], "progress": self.ctx.progress}

    def published(self, key: str) -> Any:
        """What this bundle published under `key` (None until it has)."""
        return self.ctx.shared.get(key)

    def ping(self) -> bool:
        return True

    def request_stop(self) -> None:
        """Checkpoint and stop soon (the node drains); workloads that can look at `ctx.stop`."""
        self.ctx.stop.set()
