"""The controller's state in SQLite (WAL) and the append-only, hash-chained audit log.

Every change of a job's state is one SQLite transaction that also appends its audit record, so
the store and the audit log never disagree. Tokens are stored as SHA-256 hashes only.
One connection, guarded by a lock: the controller is the only writer.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from scheduler.audit import GENESIS, Broken, canonical_json, record_hash, verify_chain
from scheduler.registry import REGISTRY_SCHEMA, RegistryTables


class State(StrEnum):
    QUEUED = "QUEUED"
    PLACED = "PLACED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})

# Every state and where it may go next (DESIGN.md "Job states"). A finished job leaves its
# terminal state only by being submitted again (a new run), which `submit` records.
NEXT: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.PLACED, State.CANCELLED}),
    State.PLACED: frozenset(
        {
            State.RUNNING,
            State.QUEUED,
            State.CANCELLED,
            State.PREEMPTED,
            State.INTERRUPTED,
            State.FAILED,
        }
    ),
    State.RUNNING: frozenset(
        {
            State.SUCCEEDED,
            State.FAILED,
            State.QUEUED,
            State.CANCELLED,
            State.PREEMPTED,
            State.INTERRUPTED,
        }
    ),
    State.PREEMPTED: frozenset({State.QUEUED, State.CANCELLED}),
    State.INTERRUPTED: frozenset({State.QUEUED, State.CANCELLED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}

# The audit record kind of each transition, by target state; QUEUED depends on the source.
AUDIT_KIND: dict[State, str] = {
    State.QUEUED: "requeue",
    State.PLACED: "place",
    State.RUNNING: "start",
    State.SUCCEEDED: "succeed",
    State.FAILED: "fail",
    State.CANCELLED: "cancel",
    State.PREEMPTED: "preempt",
    State.INTERRUPTED: "interrupt",
}


class StoreError(Exception):
    """A request the store refuses; `code` is the API's error code."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


class InvalidTransition(RuntimeError):
    """A state change that the lifecycle does not allow: a bug in the caller."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, community TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, priority TEXT NOT NULL, gpus INTEGER NOT NULL, spec TEXT NOT NULL,
    run INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
    retries_used INTEGER NOT NULL DEFAULT 0, max_retries INTEGER NOT NULL,
    submitted_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL,
    reason TEXT, waiting TEXT, placement TEXT, report TEXT,
    gpu_seconds REAL NOT NULL DEFAULT 0, inputs TEXT, progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY, job TEXT NOT NULL, run INTEGER NOT NULL, ts REAL NOT NULL,
    from_state TEXT, to_state TEXT NOT NULL, reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions(job);
CREATE TABLE IF NOT EXISTS allocations (
    id INTEGER PRIMARY KEY, job TEXT NOT NULL, run INTEGER NOT NULL, attempt INTEGER NOT NULL,
    bundle INTEGER NOT NULL, node TEXT NOT NULL, gpus TEXT NOT NULL, gpu_fraction REAL NOT NULL,
    placed_at REAL NOT NULL, released_at REAL
);
CREATE INDEX IF NOT EXISTS allocations_open ON allocations(released_at);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, ray_node_id TEXT, labels TEXT NOT NULL, cpus REAL NOT NULL,
    memory_gb REAL NOT NULL, gpus INTEGER NOT NULL, alive INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, up_since REAL, up_seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS node_events (
    id INTEGER PRIMARY KEY, node TEXT NOT NULL, ts REAL NOT NULL, event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS communities (
    name TEXT PRIMARY KEY, weight REAL NOT NULL DEFAULT 1.0, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, community TEXT, role TEXT NOT NULL,
    created_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS logs (
    job TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY (job, seq)
);
CREATE TABLE IF NOT EXISTS log_cursors (
    job TEXT NOT NULL, bundle INTEGER NOT NULL, next INTEGER NOT NULL, PRIMARY KEY (job, bundle)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, job TEXT, node TEXT,
    actor TEXT NOT NULL, data TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
);
"""

MAX_LOG_LINE = 4000
# Columns added after a database was first created: (table, column, type).
ADDED_COLUMNS = (
    ("jobs", "inputs", "TEXT"),
    ("jobs", "progress", "TEXT"),
    # trust (cluster/README.md "Verification"): VERIFYING, READY or SUSPECT for a real node,
    # why, and the claim (GPU model, memory, count) the verdict is about
    ("nodes", "trust", "TEXT"),
    ("nodes", "trust_reason", "TEXT"),
    ("nodes", "claim", "TEXT"),
    # a drain asked for (since when, by whom) and whether nothing of the mesh runs there now
    ("nodes", "drain_since", "REAL"),
    ("nodes", "drain_by", "TEXT"),
    ("nodes", "drained", "INTEGER"),
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to."""

    token_id: str
    role: str  # admin | member
    community: str | None

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def name(self) -> str:
        return f"{self.role}:{self.community or '*'}:{self.token_id}"

    def may_see(self, community: str) -> bool:
        return self.admin or self.community == community


@dataclass(frozen=True)
class JobRow:
    id: str
    community: str
    name: str
    kind: str
    state: State
    priority: str
    gpus: int
    spec: dict[str, Any]
    run: int
    attempt: int
    retries_used: int
    max_retries: int
    submitted_at: float
    updated_at: float
    started_at: float | None
    reason: str | None
    waiting: list[str]
    placement: list[dict[str, Any]] | None
    report: dict[str, Any] | None
    gpu_seconds: float
    inputs: dict[str, Any]  # the uploaded files and registry models the job reads, resolved
    progress: dict[str, Any] | None  # the workload's latest progress (step, loss, ETA...)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "community": self.community,
            "name": self.name,
            "kind": self.kind,
            "state": self.state.value,
            "priority": self.priority,
            "gpus": self.gpus,
            "run": self.run,
            "retries_used": self.retries_used,
            "max_retries": self.max_retries,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "waiting": self.waiting if self.state == State.QUEUED else [],
            "nodes": sorted({b["node"] for b in self.placement or []}),
            "progress": self.progress,
        }


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str | None:
    return None if value is None else canonical_json(value)


def _job(row: sqlite3.Row) -> JobRow:
    return JobRow(
        id=row["id"],
        community=row["community"],
        name=row["name"],
        kind=row["kind"],
        state=State(row["state"]),
        priority=row["priority"],
        gpus=row["gpus"],
        spec=json.loads(row["spec"]),
        run=row["run"],
        attempt=row["attempt"],
        retries_used=row["retries_used"],
        max_retries=row["max_retries"],
        submitted_at=row["submitted_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        reason=row["reason"],
        waiting=_loads(row["waiting"]) or [],
        placement=_loads(row["placement"]),
        report=_loads(row["report"]),
        gpu_seconds=row["gpu_seconds"],
        inputs=_loads(row["inputs"]) or {},
        progress=_loads(row["progress"]),
    )


_UNSET: Any = object()


class Store(RegistryTables):
    """SQLite state of one mesh. Thread-safe; every public method is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA + REGISTRY_SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self.path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- audit ------------------------------------------------------------------------------

    def _append(
        self,
        db: sqlite3.Connection,
        kind: str,
        ts: float,
        *,
        job: str | None = None,
        node: str | None = None,
        actor: str = "controller",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        record = {
            "seq": (last["seq"] + 1) if last else 1,
            "ts": float(round(ts, 6)),  # REAL in SQLite: hash what is read back
            "kind": kind,
            "job": job,
            "node": node,
            "actor": actor,
            "data": dict(data or {}),
            "prev": last["hash"] if last else GENESIS,
        }
        digest = record_hash(record)
        db.execute(
            "INSERT INTO audit (seq, ts, kind, job, node, actor, data, prev, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record["seq"],
                record["ts"],
                kind,
                job,
                node,
                actor,
                canonical_json(record["data"]),
                record["prev"],
                digest,
            ),
        )

    def audit(
        self, job: str | None = None, since: int = 1, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Audit records in order from `since`, at most `limit`; only `job`'s when given."""
        query = "SELECT * FROM audit WHERE seq >= ?"
        args: list[Any] = [since]
        if job is not None:
            query += " AND job = ?"
            args.append(job)
        query += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    def audit_head(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return row["hash"] if row else None

    def verify_audit(self) -> Broken | None:
        """Recompute the whole chain; the first broken record, or None when it holds."""
        return verify_chain(self.audit(limit=2**62))

    # --- jobs -------------------------------------------------------------------------------

    def submit(
        self,
        *,
        job_id: str,
        community: str,
        name: str,
        kind: str,
        priority: str,
        gpus: int,
        max_retries: int,
        spec: Mapping[str, Any],
        now: float,
        actor: str,
        inputs: Mapping[str, Any] | None = None,
    ) -> JobRow:
        """Queue a job; a finished job of the same id starts a new run. Raises StoreError.

        `inputs`: what the job reads (artifact digests, registry versions), fixed at submission.
        """
        with self._tx() as db:
            old = db.execute("SELECT state, run FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if old is not None and not State(old["state"]).terminal:
                raise StoreError(
                    "job_exists",
                    f"job {job_id} already exists and is {old['state']}",
                    f"wait for it to finish, cancel it (meshctl cancel {job_id}), "
                    "or choose another name",
                )
            run = old["run"] + 1 if old is not None else 1
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("DELETE FROM logs WHERE job = ?", (job_id,))
            db.execute("DELETE FROM log_cursors WHERE job = ?", (job_id,))
            db.execute(
                "INSERT INTO jobs (id, community, name, kind, state, priority, gpus, spec, run,"
                " max_retries, submitted_at, updated_at, reason, inputs)"
                " VALUES (?, ?, ?, ?, 'QUEUED', ?, ?, ?, ?, ?, ?, ?, 'submitted', ?)",
                (
                    job_id,
                    community,
                    name,
                    kind,
                    priority,
                    gpus,
                    canonical_json(spec),
                    run,
                    max_retries,
                    now,
                    now,
                    canonical_json(dict(inputs or {})),
                ),
            )
            db.execute(
                "INSERT OR IGNORE INTO communities (name, created_at) VALUES (?, ?)",
                (community, now),
            )
            db.execute(
                "INSERT INTO transitions (job, run, ts, from_state, to_state, reason)"
                " VALUES (?, ?, ?, NULL, 'QUEUED', 'submitted')",
                (job_id, run, now),
            )
            spec_hash = hashlib.sha256(canonical_json(spec).encode()).hexdigest()
            self._append(
                db,
                "submit",
                now,
                job=job_id,
                actor=actor,
                data={
                    "run": run,
                    "kind": kind,
                    "spec_sha256": spec_hash,
                    **({"inputs": dict(inputs)} if inputs else {}),
                },
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def job(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(
        self, states: Iterable[State] | None = None, community: str | None = None
    ) -> list[JobRow]:
        query = "SELECT * FROM jobs WHERE 1=1"
        args: list[Any] = []
        if states is not None:
            wanted = [s.value for s in states]
            query += f" AND state IN ({','.join('?' * len(wanted))})"
            args += wanted
        if community is not None:
            query += " AND community = ?"
            args.append(community)
        query += " ORDER BY submitted_at, id"
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_job(r) for r in rows]

    def queued(self) -> list[tuple[str, int]]:
        """(job, run) of every QUEUED job, oldest submission first; specs are not read."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, run FROM jobs WHERE state = 'QUEUED' ORDER BY submitted_at, id"
            ).fetchall()
        return [(r["id"], r["run"]) for r in rows]

    def transitions(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, from_state, to_state, reason FROM transitions"
                " WHERE job = ? AND run = (SELECT run FROM jobs WHERE id = ?) ORDER BY id",
                (job_id, job_id),
            ).fetchall()
        return [
            {"ts": r["ts"], "from": r["from_state"], "to": r["to_state"], "reason": r["reason"]}
            for r in rows
        ]

    def transition(
        self,
        job_id: str,
        to: State,
        reason: str,
        now: float,
        *,
        actor: str = "controller",
        data: Mapping[str, Any] | None = None,
        placement: list[dict[str, Any]] | None = _UNSET,
        report: dict[str, Any] | None = _UNSET,
        attempt: int | None = None,
        retry: bool = False,
        gpu_seconds: float = 0.0,
    ) -> JobRow:
        """Move a job to `to`, with its audit record, in one transaction.

        `placement` given with PLACED records the allocation; leaving PLACED/RUNNING releases it.
        `retry` counts a failure of the job itself against max_retries. `gpu_seconds` adds to
        what the job has used.
        """
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise InvalidTransition(f"no job {job_id}")
            job = _job(row)
            if to not in NEXT[job.state]:
                raise InvalidTransition(f"{job_id}: {job.state} -> {to} is not allowed")
            kind = AUDIT_KIND[to]
            if to == State.QUEUED and retry:
                kind = "retry"
            sets = ["state = ?", "reason = ?", "updated_at = ?", "gpu_seconds = gpu_seconds + ?"]
            args: list[Any] = [to.value, reason, now, gpu_seconds]
            if to == State.RUNNING:
                sets.append("started_at = ?")
                args.append(now)
            if attempt is not None:
                sets.append("attempt = ?")
                args.append(attempt)
            if retry:
                sets.append("retries_used = retries_used + 1")
            if placement is not _UNSET:
                sets.append("placement = ?")
                args.append(_dumps(placement))
            if report is not _UNSET:
                sets.append("report = ?")
                args.append(_dumps(report))
            if to in (State.QUEUED, State.PREEMPTED, State.INTERRUPTED) or to.terminal:
                sets.append("waiting = NULL")
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", [*args, job_id])
            db.execute(
                "INSERT INTO transitions (job, run, ts, from_state, to_state, reason)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, job.run, now, job.state.value, to.value, reason),
            )
            if to == State.PLACED and placement:
                for i, b in enumerate(placement):
                    db.execute(
                        "INSERT INTO allocations (job, run, attempt, bundle, node, gpus,"
                        " gpu_fraction, placed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            job_id,
                            job.run,
                            attempt if attempt is not None else job.attempt,
                            i,
                            b["node"],
                            canonical_json(b["gpus"]),
                            b["gpu_fraction"],
                            now,
                        ),
                    )
            if to not in (State.PLACED, State.RUNNING):
                db.execute(
                    "UPDATE allocations SET released_at = ? WHERE job = ? AND released_at IS NULL",
                    (now, job_id),
                )
            payload = {"run": job.run, "from": job.state.value, "reason": reason, **(data or {})}
            if to == State.PLACED and placement:
                payload["bundles"] = placement
            self._append(db, kind, now, job=job_id, actor=actor, data=payload)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def set_progress(self, job_id: str, progress: Mapping[str, Any]) -> None:
        """A running job's latest progress (not audited: it changes every few seconds)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ?", (canonical_json(progress), job_id)
            )

    def set_waiting(self, reasons: Mapping[str, list[str]]) -> None:
        """Why each queued job waits (from the last plan); not audited, it changes every round."""
        with self._tx() as db:
            db.executemany(
                "UPDATE jobs SET waiting = ? WHERE id = ? AND state = 'QUEUED'",
                [(canonical_json(r), job) for job, r in reasons.items()],
            )

    def open_allocations(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job, bundle, node, gpus, gpu_fraction FROM allocations"
                " WHERE released_at IS NULL ORDER BY job, bundle"
            ).fetchall()
        return [{**dict(r), "gpus": json.loads(r["gpus"])} for r in rows]

    def allocation_nodes(self, job_id: str) -> list[str]:
        """The nodes that held any bundle of the current run of a job, in first-use order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT node FROM allocations WHERE job = ?"
                " AND run = (SELECT run FROM jobs WHERE id = ?) ORDER BY id",
                (job_id, job_id),
            ).fetchall()
        return list(dict.fromkeys(r["node"] for r in rows))

    # --- logs -------------------------------------------------------------------------------

    def append_logs(
        self, job_id: str, lines: Iterable[tuple[float, str]], cursors: Iterable[int] = ()
    ) -> None:
        """Append log lines; `cursors`: how many lines of each bundle's worker are now stored."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO log_cursors (job, bundle, next) VALUES (?, ?, ?)",
                [(job_id, i, n) for i, n in enumerate(cursors)],
            )
            last = db.execute("SELECT MAX(seq) FROM logs WHERE job = ?", (job_id,)).fetchone()[0]
            seq = (last or 0) + 1
            rows = []
            for ts, line in lines:
                rows.append((job_id, seq, ts, line[:MAX_LOG_LINE]))
                seq += 1
            db.executemany("INSERT INTO logs (job, seq, ts, line) VALUES (?, ?, ?, ?)", rows)

    def log_cursors(self, job_id: str, bundles: int) -> list[int]:
        """How many lines of each bundle's worker are stored (where a restart resumes)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bundle, next FROM log_cursors WHERE job = ?", (job_id,)
            ).fetchall()
        found = {r["bundle"]: r["next"] for r in rows}
        return [found.get(i, 0) for i in range(bundles)]

    def logs(self, job_id: str, since: int = 1, limit: int = 5000) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, ts, line FROM logs WHERE job = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (job_id, since, limit),
            ).fetchall()
        return [dict(r) for r in rows]

    # --- nodes ------------------------------------------------------------------------------

    def node_up(
        self,
        name: str,
        *,
        ray_node_id: str,
        labels: Mapping[str, str],
        cpus: float,
        memory_gb: float,
        gpus: int,
        now: float,
    ) -> None:
        """A node is alive now: a join (audited) when it was unknown or down."""
        with self._tx() as db:
            row = db.execute("SELECT alive FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO nodes (name, ray_node_id, labels, cpus, memory_gb, gpus, alive,"
                    " first_seen, last_seen, up_since, up_seconds)"
                    " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, 0)",
                    (
                        name,
                        ray_node_id,
                        canonical_json(labels),
                        cpus,
                        memory_gb,
                        gpus,
                        now,
                        now,
                        now,
                    ),
                )
            elif row["alive"]:
                db.execute(
                    "UPDATE nodes SET last_seen = ?, ray_node_id = ?, labels = ?, cpus = ?,"
                    " memory_gb = ?, gpus = ? WHERE name = ?",
                    (now, ray_node_id, canonical_json(labels), cpus, memory_gb, gpus, name),
                )
                return
            else:
                db.execute(  # back after a leave: a drain it left under is over
                    "UPDATE nodes SET alive = 1, last_seen = ?, up_since = ?, ray_node_id = ?,"
                    " labels = ?, cpus = ?, memory_gb = ?, gpus = ?, drain_since = NULL,"
                    " drain_by = NULL, drained = NULL WHERE name = ?",
                    (now, now, ray_node_id, canonical_json(labels), cpus, memory_gb, gpus, name),
                )
            db.execute("INSERT INTO node_events (node, ts, event) VALUES (?, ?, 'up')", (name, now))
            self._append(
                db,
                "node_join",
                now,
                node=name,
                data={"ray_node_id": ray_node_id, "gpus": gpus, "labels": dict(labels)},
            )

    def node_down(self, name: str, now: float, reason: str, *, event: str = "down") -> bool:
        """A node is gone; audited once. False when it was already known to be down.

        `event`: "down" (lost: a failure, counted in its MTBF) or "leave" (it left after a
        drain: time away, but no failure)."""
        with self._tx() as db:
            row = db.execute("SELECT alive, up_since FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None or not row["alive"]:
                return False
            since = row["up_since"] if row["up_since"] is not None else now
            up = max(0.0, now - since)
            db.execute(
                "UPDATE nodes SET alive = 0, last_seen = ?, up_since = NULL,"
                " up_seconds = up_seconds + ? WHERE name = ?",
                (now, up, name),
            )
            db.execute(
                "INSERT INTO node_events (node, ts, event) VALUES (?, ?, ?)", (name, now, event)
            )
            self._append(db, "node_leave", now, node=name, data={"reason": reason, "event": event})
        return True

    def set_node_trust(
        self, name: str, trust: str, reason: str, claim: Mapping[str, Any], now: float
    ) -> None:
        """What the mesh holds of a node's claim: VERIFYING, READY or SUSPECT, and why; audited
        (`node_trust`) when it changes."""
        claim_text = canonical_json(claim)
        with self._tx() as db:
            row = db.execute(
                "SELECT trust, trust_reason, claim FROM nodes WHERE name = ?", (name,)
            ).fetchone()
            if row is None or (
                row["trust"] == trust
                and row["trust_reason"] == reason
                and row["claim"] == claim_text
            ):
                return
            db.execute(
                "UPDATE nodes SET trust = ?, trust_reason = ?, claim = ? WHERE name = ?",
                (trust, reason, claim_text, name),
            )
            self._append(
                db,
                "node_trust",
                now,
                node=name,
                data={"trust": trust, "reason": reason, "claim": dict(claim)},
            )

    def set_node_drain(self, name: str, now: float, *, by: str | None, drained: bool) -> bool:
        """Start a drain of a node (`by`: who asked), or mark it drained (`by` None): audited
        (`node_drain`, `node_drained`). False when the node is unknown or down."""
        with self._tx() as db:
            row = db.execute(
                "SELECT alive, drain_since, drained FROM nodes WHERE name = ?", (name,)
            ).fetchone()
            if row is None or not row["alive"]:
                return False
            if by is not None and row["drain_since"] is None:
                db.execute(
                    "UPDATE nodes SET drain_since = ?, drain_by = ?, drained = 0 WHERE name = ?",
                    (now, by, name),
                )
                self._append(db, "node_drain", now, node=name, actor=by, data={})
            elif drained and row["drain_since"] is not None and not row["drained"]:
                db.execute("UPDATE nodes SET drained = 1 WHERE name = ?", (name,))
                self._append(
                    db, "node_drained", now, node=name, data={"seconds": now - row["drain_since"]}
                )
        return True

    def nodes(self, now: float) -> list[dict[str, Any]]:
        """Every node seen, with its availability (fraction of time up since first seen)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM nodes ORDER BY name").fetchall()
            downs = dict(
                self._db.execute(
                    "SELECT node, COUNT(*) FROM node_events WHERE event = 'down' GROUP BY node"
                ).fetchall()
            )
        result = []
        for r in rows:
            current = now - r["up_since"] if r["alive"] and r["up_since"] is not None else 0
            up = r["up_seconds"] + current
            span = now - r["first_seen"]
            result.append(
                {
                    "name": r["name"],
                    "ray_node_id": r["ray_node_id"],
                    "labels": json.loads(r["labels"]),
                    "cpus": r["cpus"],
                    "memory_gb": r["memory_gb"],
                    "gpus": r["gpus"],
                    "alive": bool(r["alive"]),
                    "first_seen": r["first_seen"],
                    "last_seen": r["last_seen"],
                    "availability": min(1.0, up / span) if span > 0 else None,
                    # time up per failure seen; None until the node has failed once
                    "mtbf_h": up / downs[r["name"]] / 3600 if downs.get(r["name"]) else None,
                    "failures": downs.get(r["name"], 0),
                    "trust": r["trust"],
                    "trust_reason": r["trust_reason"],
                    "claim": json.loads(r["claim"]) if r["claim"] else None,
                    "drain_since": r["drain_since"],
                    "drain_by": r["drain_by"],
                    "drained": bool(r["drained"]),
                }
            )
        return result

    # --- communities and tokens -------------------------------------------------------------

    def community_weights(self) -> dict[str, float]:
        with self._lock:
            rows = self._db.execute("SELECT name, weight FROM communities").fetchall()
        return {r["name"]: r["weight"] for r in rows}

    def add_token(
        self,
        token: str,
        *,
        community: str | None,
        role: str,
        now: float,
        actor: str,
    ) -> str:
        """Store a token's hash; returns its id. Idempotent for a token already stored."""
        digest = token_hash(token)
        with self._tx() as db:
            row = db.execute("SELECT id FROM tokens WHERE hash = ?", (digest,)).fetchone()
            if row is not None:
                return str(row["id"])
            token_id = secrets.token_hex(6)
            db.execute(
                "INSERT INTO tokens (id, hash, community, role, created_at) VALUES (?, ?, ?, ?, ?)",
                (token_id, digest, community, role, now),
            )
            if community is not None:
                db.execute(
                    "INSERT OR IGNORE INTO communities (name, created_at) VALUES (?, ?)",
                    (community, now),
                )
            self._append(
                db,
                "token_create",
                now,
                actor=actor,
                data={"id": token_id, "community": community, "role": role},
            )
        return token_id

    def authenticate(self, token: str) -> Principal | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, role, community FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                (token_hash(token),),
            ).fetchone()
        return Principal(row["id"], row["role"], row["community"]) if row else None

    def tokens(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, community, role, created_at, revoked_at FROM tokens ORDER BY created_at"
            ).fetchall()
        return [
            {
                "id": r["id"],
                "community": r["community"],
                "role": r["role"],
                "created_at": r["created_at"],
                "revoked": r["revoked_at"] is not None,
            }
            for r in rows
        ]

    def revoke_token(self, token_id: str, now: float, actor: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT revoked_at FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise StoreError(
                    "not_found", f"no token {token_id}", "meshctl token list shows the tokens"
                )
            if row["revoked_at"] is not None:
                return
            db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (now, token_id))
            self._append(db, "token_revoke", now, actor=actor, data={"id": token_id})
