"""The audit log's hash chain: canonical encoding, record hashes, verification.

Each record carries the SHA-256 of the previous record, so changing, inserting or deleting any
record breaks every hash after it. The store appends records; anyone holding a copy of the
records (`GET /api/v1/audit`, `meshctl audit verify`) can check them with `verify_chain`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
# The fields a record's hash covers, in the order they are written.
HASHED_FIELDS = ("seq", "ts", "kind", "job", "node", "actor", "data", "prev")


def canonical_json(value: Any) -> str:
    """One encoding for one value: sorted keys, no spaces, UTF-8 text kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of a record's hashed fields, over their canonical JSON."""
    body = {k: record.get(k) for k in HASHED_FIELDS}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Broken:
    """The first record where the chain does not hold, and why."""

    seq: int
    reason: str


def verify_chain(records: Iterable[Mapping[str, Any]], prev: str = GENESIS) -> Broken | None:
    """Recompute the chain over `records` (in order, starting after `prev`); None when it holds."""
    expected_seq: int | None = None
    for r in records:
        seq = int(r["seq"])
        if expected_seq is not None and seq != expected_seq:
            return Broken(seq, f"record {seq} follows record {expected_seq - 1}: records missing")
        if r.get("prev") != prev:
            return Broken(seq, f"record {seq} does not point to the hash of the record before it")
        actual = record_hash(r)
        if r.get("hash") != actual:
            return Broken(seq, f"record {seq} was changed: its hash is not that of its contents")
        prev = actual
        expected_seq = seq + 1
    return None
