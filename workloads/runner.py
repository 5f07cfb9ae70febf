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
    lines: list[tuple[float, str]] = field(default_factory=list)

    def log(self, line: str) -> None:
        if len(self.lines) < MAX_LOG_LINES:
            self.lines.append((time.time(), line))


Workload = Callable[[WorkContext], dict[str, Any]]


def _workloads() -> dict[str, Workload]:
    from workloads.probe import run_probe

    return {"Probe": run_probe}


class WorkloadActor:
    """Runs one bundle of a job. Created with `ray.remote(WorkloadActor)` by the actuator."""

    def __init__(self, job: str, kind: str, spec: dict[str, Any], bundle: int, node: str) -> None:
        self.ctx = WorkContext(job=job, kind=kind, spec=spec, bundle=bundle, node=node)
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

    def logs(self, since: int) -> list[tuple[float, str]]:
        """Log lines from index `since` (0-based) on."""
        return self.ctx.lines[since:]

    def ping(self) -> bool:
        return True
