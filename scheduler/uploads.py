"""The files on the submitter's machine that a job names, found and uploaded by `meshctl submit`.

The mesh never reads a path on the submitter's machine: volunteer machines share no filesystem.
`meshctl submit` finds the local files and folders a job names (datasets, a base model folder,
an input file), checks that they all exist before anything is sent, uploads them to the artifact
store (resumable, by SHA-256: a file already there is not sent again), and submits the job with
the hash of each. A changed file is a new hash, so a job always reads what was submitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.client import ClientError, MeshClient
from scheduler.spec import artifact_digest, is_local_path


@dataclass(frozen=True)
class LocalRef:
    """A path as the job file writes it, where it is, and what it must be."""

    field: str  # such as finetune.datasets[0].path
    ref: str  # as written in the job
    path: Path  # resolved against the job file's folder
    folder: bool  # a model: must be a folder; data: a file or a folder


def local_refs(document: dict[str, Any], base_dir: Path) -> list[LocalRef]:
    """Every local path a job document names; ClientError when one is missing."""
    found: list[tuple[str, str, bool]] = []
    ft = document.get("finetune") or {}
    if isinstance(ft.get("base_model"), str) and is_local_path(ft["base_model"]):
        found.append(("finetune.base_model", ft["base_model"], True))
    for i, d in enumerate(ft.get("datasets") or []):
        if (
            isinstance(d, dict)
            and isinstance(d.get("path"), str)
            and not artifact_digest(d["path"])
        ):
            found.append((f"finetune.datasets[{i}].path", d["path"], False))
    batch = document.get("batch") or {}
    if isinstance(batch.get("model"), str) and is_local_path(batch["model"]):
        found.append(("batch.model", batch["model"], True))
    service = document.get("service") or {}
    if isinstance(service.get("model"), str) and is_local_path(service["model"]):
        found.append(("service.model", service["model"], True))
    if isinstance(batch.get("input"), str) and not artifact_digest(batch["input"]):
        found.append(("batch.input", batch["input"], False))
    refs = []
    for field, ref, folder in found:
        path = Path(ref).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.exists():
            raise ClientError(f"{field}: {ref} does not exist (looked for {path})")
        if folder and not path.is_dir():
            raise ClientError(f"{field}: {ref} is a file; a model is a Hugging Face folder")
        refs.append(LocalRef(field, ref, path, folder))
    return refs


def upload_refs(
    client: MeshClient,
    refs: list[LocalRef],
    community: str,
    say: Callable[[str], None],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Upload each local path once; {path as written: {"sha256", "tree"}}."""
    from scheduler import transfer

    uploaded: dict[str, dict[str, Any]] = {}
    for r in refs:
        if r.ref in uploaded:
            continue
        tree = r.path.is_dir()
        headers = client.auth_headers
        if tree:
            digest = transfer.upload_tree(
                client.http, client.config.api, headers, r.path, community, progress
            )
        else:
            digest = transfer.upload_file(
                client.http, client.config.api, headers, r.path, community, progress
            )
        say(f"uploaded {r.ref} ({'folder' if tree else 'file'}) sha256:{digest[:12]}")
        uploaded[r.ref] = {"sha256": digest, "tree": tree}
    return uploaded
