"""The model registry and artifact access, in the store's SQLite database.

Models: `community/name`, each registration a new version that points at an artifact tree (a
folder in the artifact store, by SHA-256) with its provenance: base model and dataset hashes,
hyperparameters, the nodes and GPU models that trained it, GPU-seconds, final loss. Every
registration is an audit record, so the chain says which data and base model made which model.

Artifacts: who may read which blob. A blob uploaded by a member is readable by that community;
a job's outputs by the job's community; a registered model's files by everyone (finished
community models are public). The bytes themselves live in the artifact store
(`workloads.artifacts`), not here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from scheduler.audit import canonical_json

PUBLIC = "*"

REGISTRY_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifact_access (
    sha256 TEXT NOT NULL, community TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (sha256, community)
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version INTEGER NOT NULL, community TEXT NOT NULL, kind TEXT NOT NULL,
    sha256 TEXT NOT NULL, base TEXT, job TEXT, run INTEGER, provenance TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (name, version)
);
"""


class _StoreParts(Protocol):
    _lock: Any
    _db: sqlite3.Connection

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

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
    ) -> None: ...


def _model(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "name": row["name"],
        "version": row["version"],
        "community": row["community"],
        "kind": row["kind"],
        "sha256": row["sha256"],
        "base": row["base"],
        "job": row["job"],
        "run": row["run"],
        "provenance": json.loads(row["provenance"]),
        "created_at": row["created_at"],
    }


class RegistryTables:
    """Mixed into `scheduler.store.Store`: the registry's and the artifact access's methods."""

    # --- artifact access --------------------------------------------------------------------

    def grant(self: _StoreParts, digests: Iterable[str], community: str, now: float) -> None:
        """Let `community` (or everyone: PUBLIC) read these blobs."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO artifact_access (sha256, community, created_at)"
                " VALUES (?, ?, ?)",
                [(d, community, now) for d in dict.fromkeys(digests)],
            )

    def readers(self: _StoreParts, digest: str) -> set[str]:
        """The communities that may read a blob (PUBLIC for everyone); empty when unknown."""
        with self._lock:
            rows = self._db.execute(
                "SELECT community FROM artifact_access WHERE sha256 = ?", (digest,)
            ).fetchall()
        return {r["community"] for r in rows}

    # --- models -----------------------------------------------------------------------------

    def register_model(
        self: _StoreParts,
        *,
        name: str,
        kind: str,
        sha256: str,
        files: Iterable[str],
        base: str | None,
        provenance: Mapping[str, Any],
        now: float,
        actor: str,
        job: str | None = None,
        run: int | None = None,
    ) -> dict[str, Any]:
        """Register a new version of `name`; its tree and files become public. Audited."""
        community = name.partition("/")[0]
        with self._tx() as db:
            last = db.execute("SELECT MAX(version) FROM models WHERE name = ?", (name,)).fetchone()[
                0
            ]
            version = (last or 0) + 1
            db.execute(
                "INSERT INTO models (name, version, community, kind, sha256, base, job, run,"
                " provenance, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    community,
                    kind,
                    sha256,
                    base,
                    job,
                    run,
                    canonical_json(provenance),
                    now,
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO artifact_access (sha256, community, created_at)"
                " VALUES (?, ?, ?)",
                [(d, PUBLIC, now) for d in dict.fromkeys([sha256, *files])],
            )
            self._append(
                db,
                "model_register",
                now,
                job=job,
                actor=actor,
                data={
                    "name": name,
                    "version": version,
                    "kind": kind,
                    "sha256": sha256,
                    "base": base,
                    "provenance": dict(provenance),
                },
            )
            row = db.execute(
                "SELECT * FROM models WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        return _model(row)

    def model(self: _StoreParts, name: str, version: int | None = None) -> dict[str, Any] | None:
        """A model's latest version (or the one asked for); None when there is none."""
        with self._lock:
            if version is None:
                row = self._db.execute(
                    "SELECT * FROM models WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT * FROM models WHERE name = ? AND version = ?", (name, version)
                ).fetchone()
        return _model(row) if row else None

    def model_versions(self: _StoreParts, name: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM models WHERE name = ? ORDER BY version", (name,)
            ).fetchall()
        return [_model(r) for r in rows]

    def models(self: _StoreParts, community: str | None = None) -> list[dict[str, Any]]:
        """The latest version of every model, by name; only `community`'s when given."""
        query = (
            "SELECT m.* FROM models m JOIN (SELECT name, MAX(version) AS v FROM models"
            " GROUP BY name) latest ON m.name = latest.name AND m.version = latest.v"
        )
        args: list[Any] = []
        if community is not None:
            query += " WHERE m.community = ?"
            args.append(community)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY m.name", args).fetchall()
        return [_model(r) for r in rows]

    def model_names(self: _StoreParts) -> Iterator[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT name FROM models").fetchall()
        return (r["name"] for r in rows)
