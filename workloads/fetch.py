"""A node's cache of the artifacts its workloads read: models, datasets, prompt files.

Artifacts are content-addressed, so a cached copy under its SHA-256 is the right one forever;
two workers of a node that fetch the same artifact at once each download into a folder of their
own and the first rename wins. Every download is verified against its hash by the artifact
client before it is renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workloads.artifacts import ArtifactClient

CACHE_ENV = "MESH_CACHE"


def cache_root() -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "mesh-cache")
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch(store: ArtifactClient, digest: str, *, tree: bool) -> Path:
    """The local path of an artifact (a folder when `tree`), downloading it once per node."""
    target = cache_root() / (f"tree-{digest}" if tree else f"blob-{digest}")
    if target.exists():
        return target
    scratch = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=cache_root()))
    try:
        if tree:
            store.get_tree(digest, scratch / "t")
            os.rename(scratch / "t", target)
        else:
            store.get_file(digest, scratch / "f")
            os.rename(scratch / "f", target)
    except OSError:
        if not target.exists():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def dataset_files(path: Path) -> list[Path]:
    """The JSONL files of a dataset: the file itself, or a folder's *.jsonl files in order."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.jsonl") if p.is_file())


def input_path(store: ArtifactClient, item: dict[str, Any]) -> Path:
    """Fetch one resolved input of a job (`inputs[...]` as the controller pinned it)."""
    return fetch(store, str(item["sha256"]), tree=bool(item.get("tree", False)))
