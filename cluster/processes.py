"""Processes named by PID and start time (`/proc/PID/stat`), so that a recorded process is never
confused with a later one that reuses its PID. Linux only, like Ray's local clusters."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, session id, start time in clock ticks since boot) of a process, from
    /proc/PID/stat; None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) is in parentheses and may hold spaces or ')'
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[3]), int(fields[19])


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if it is not there."""
    stat = _proc_stat(pid)
    return stat[2] if stat else None


def is_alive(pid: int, start: int | None = None) -> bool:
    """Whether process `pid` runs (a zombie has finished) and, if `start` is given, is the process
    that started then, not a later one that reuses the PID."""
    if pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X", "x"):
        return False
    return start is None or stat[2] == start


def session_members(supervisor: MeshProcess) -> list[MeshProcess]:
    """The live processes of the session the supervisor leads (it was started with its own
    session): every Ray process it started, workers and actors included, and nothing else.
    Empty when the supervisor's start time is unknown or its PID now names another process."""
    if supervisor.start is None:
        return []
    now = _proc_stat(supervisor.pid)
    if now is not None and now[2] != supervisor.start:
        return []  # the PID (and with it the session id) belongs to someone else now
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), supervisor.pid):
            continue
        stat = _proc_stat(int(entry.name))
        if (
            stat is not None
            and stat[1] == supervisor.pid
            and stat[2] >= supervisor.start
            and stat[0] not in ("Z", "X", "x")
        ):
            found.append(MeshProcess(int(entry.name), stat[2], "session"))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


@dataclass(frozen=True)
class MeshProcess:
    """A process the supervisor started (or the supervisor itself)."""

    pid: int
    start: int | None
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "kind": self.kind}

    @classmethod
    def from_json(cls, data: Any) -> MeshProcess | None:
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        start = data.get("start")
        return cls(data["pid"], start if isinstance(start, int) else None, str(data.get("kind")))
