"""The artifact store: content-addressed (SHA-256) blobs and folders, reached from any node.

Volunteer machines share no filesystem, so the store is one actor pinned to the head
(`start_artifact_store`) over a backend: a directory under $MESH_HOME (`LocalBackend`), or an
fsspec URL (`FsspecBackend`: file://, s3://, gs://) where a cluster has shared storage. Workers
reach it through `ArtifactClient.on_ray()`; `meshctl` reaches it over HTTP (scheduler/transfer.py).

A blob is named by the SHA-256 of its bytes. Uploads are resumable: `begin` says how much of a
partial upload is already stored, `write` appends at exactly that offset, and `finish` hashes the
whole and keeps it only when the hash is the name; a blob stored once is never sent again.
A folder is a tree: a manifest blob (canonical JSON listing every file's path, hash and size)
whose hash names the folder. Everything read back is verified against its hash, and a file is
written under a temporary name and renamed only once its hash is right: a mismatch is an error,
never a half-written or wrong file. Refs are small named pointers to blobs (the latest
checkpoint of a job), replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from workloads.artifact_backends import (
    CHUNK_BYTES,
    EMPTY_SHA256,
    ArtifactError,
    Backend,
    FsspecBackend,
    LocalBackend,
    check_digest,
    check_ref_key,
    check_size,
    open_backend,
    sha256_bytes,
    sha256_file,
)

__all__ = [
    "CHUNK_BYTES",
    "EMPTY_SHA256",
    "ArtifactClient",
    "ArtifactError",
    "ArtifactStore",
    "Backend",
    "check_digest",
    "check_ref_key",
    "check_size",
    "check_tree_path",
    "file_reader",
    "FsspecBackend",
    "LocalBackend",
    "manifest_bytes",
    "ManifestFile",
    "open_backend",
    "parse_manifest",
    "receive_file",
    "send",
    "sha256_bytes",
    "sha256_file",
    "start_artifact_store",
    "store_actor",
    "tree_manifest",
    "tree_target",
    "TreeFile",
    "Upload",
]

MAX_WRITE_BYTES = 2 * CHUNK_BYTES  # one write (one HTTP PUT)
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_READ_BYTES = MAX_MANIFEST_BYTES  # one read: a whole manifest fits
MAX_BYTES = 50 * 1024**3  # one blob, by default
MAX_TREE_FILES = 100_000
MAX_PATH_CHARS = 1024
GET_BYTES_LIMIT = 256 * 1024 * 1024
LOCK_STRIPES = 64
MAX_CONFLICTS = 5  # an upload told "not at that offset" more often than this gives up
STORE_WAIT_S = 60.0

STORE_ACTOR = "mesh-artifacts"
NAMESPACE = "mesh"

Progress = Callable[[int, int], None]  # (done_bytes, total_bytes)


# --- trees ----------------------------------------------------------------------------------


class TreeFile(NamedTuple):
    """A file of a folder being stored: its relative POSIX path, where it is, hash and size."""

    path: str
    source: Path
    sha256: str
    size: int


class ManifestFile(TypedDict):
    """A file as a tree manifest lists it."""

    path: str
    sha256: str
    size: int


def check_tree_path(path: object) -> str:
    """A relative POSIX path with no '..', '.', empty part, backslash or absolute start."""
    why = None
    if not isinstance(path, str) or not path:
        why = "expected a non-empty string"
    elif len(path) > MAX_PATH_CHARS:
        why = f"longer than {MAX_PATH_CHARS} characters"
    elif path.startswith("/"):
        why = "absolute; paths in a tree are relative to its folder"
    elif "\\" in path or "\x00" in path:
        why = "holds a backslash or NUL; rename the file"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        why = "has an empty, '.' or '..' part"
    else:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            why = "is not valid UTF-8; rename the file"
    if why:
        raise ArtifactError(f"tree path {path!r:.200}: {why}")
    return str(path)


def manifest_bytes(files: Iterable[TreeFile]) -> bytes:
    entries = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files]
    entries.sort(key=lambda e: str(e["path"]))
    doc = {"mesh_tree": 1, "files": entries}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def tree_manifest(folder: str | Path) -> tuple[bytes, list[TreeFile]]:
    """The manifest of every file under `folder` (symlinks to files are read through), and the
    files in manifest order. Empty folders are not kept; a symlinked folder is an error."""
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not a folder")
    files: list[TreeFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                raise ArtifactError(
                    f"{here / name}: a symbolic link to a folder; copy the folder in instead"
                )
        for name in filenames:
            source = here / name
            if not source.is_file():
                raise ArtifactError(f"{source}: not a regular file (or a broken link)")
            rel = check_tree_path(source.relative_to(root).as_posix())
            files.append(TreeFile(rel, source, sha256_file(source), source.stat().st_size))
            if len(files) > MAX_TREE_FILES:
                raise ArtifactError(f"{root}: more than {MAX_TREE_FILES} files; pack them")
    files.sort(key=lambda f: f.path)
    return manifest_bytes(files), files


def parse_manifest(data: bytes) -> list[ManifestFile]:
    """The files of a tree manifest, each path checked as safe to write under a folder."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"a tree manifest is at most {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"not a tree manifest: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("mesh_tree") != 1 or set(doc) != {"mesh_tree", "files"}:
        raise ArtifactError('not a tree manifest: expected {"mesh_tree": 1, "files": [...]}')
    if not isinstance(doc["files"], list) or len(doc["files"]) > MAX_TREE_FILES:
        raise ArtifactError(f"tree manifest: files must be a list of at most {MAX_TREE_FILES}")
    out: list[ManifestFile] = []
    for i, entry in enumerate(doc["files"]):
        if not isinstance(entry, dict) or set(entry) != {"path", "sha256", "size"}:
            raise ArtifactError(f'tree manifest: file {i}: expected {{"path", "sha256", "size"}}')
        out.append(
            ManifestFile(
                path=check_tree_path(entry["path"]),
                sha256=check_digest(entry["sha256"]),
                size=check_size(entry["size"], MAX_BYTES),
            )
        )
    paths = {f["path"] for f in out}
    if len(paths) != len(out):
        raise ArtifactError("tree manifest: a path is listed twice")
    for f in out:
        parts = f["path"].split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in paths:
                raise ArtifactError(f"tree manifest: {f['path']!r} is under a file of the tree")
    return out


# --- receiving a file: resumable, verified, renamed only when right ------------------------


def receive_file(
    dest: str | Path,
    digest: str,
    size: int,
    chunks: Callable[[int], Iterable[bytes]],
    progress: Progress | None = None,
) -> None:
    """Write blob `digest` (`size` bytes) to `dest`; `chunks(offset)` yields its bytes from offset.

    Resumes from `dest`.part; on a hash mismatch the part is deleted and nothing is left at dest.
    """
    dest = Path(dest)
    part = Path(f"{dest}.part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if part.is_symlink():
        part.unlink()
    hasher = hashlib.sha256()
    done = 0
    if part.exists() and part.stat().st_size <= size:
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                hasher.update(chunk)
                done += len(chunk)
    with open(part, "ab" if done else "wb") as out:
        out.truncate(done)
        if progress:
            progress(done, size)
        if done < size:
            for chunk in chunks(done):
                chunk = chunk[: size - done]
                out.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, size)
                if done >= size:
                    break
        out.flush()
        os.fsync(out.fileno())
    if done < size:
        raise ArtifactError(
            f"{digest}: the transfer stopped at {done} of {size} bytes",
            "incomplete",
            f"run it again: it resumes from {part}",
        )
    got = hasher.hexdigest()
    if got != digest:
        part.unlink(missing_ok=True)
        raise ArtifactError(
            f"{digest}: the received content hashes to {got}; it was discarded and nothing "
            f"was written to {dest}",
            "hash_mismatch",
            "run it again; if it fails again, the stored copy is damaged: upload it again",
        )
    os.replace(part, dest)


class Upload(NamedTuple):
    """How an uploader reaches a store: the three steps of an upload of one blob."""

    begin: Callable[[], dict[str, Any]]  # -> {"offset", "complete"}
    write: Callable[[int, bytes], int | None]  # new offset; None: the store is elsewhere
    finish: Callable[[], object]


def send(
    upload: Upload, size: int, read: Callable[[int, int], bytes], progress: Progress | None = None
) -> None:
    """Upload `size` bytes, `read(offset, length)`, in CHUNK_BYTES pieces from wherever the store
    is; when the store answers that it is at another offset (another uploader of the same
    bytes, or a write that landed before an error), ask again and continue from there."""
    began = upload.begin()
    offset, conflicts = int(began["offset"]), 0
    while not began["complete"]:
        if progress:
            progress(offset, size)
        if offset >= size:
            upload.finish()
            break
        data = read(offset, min(CHUNK_BYTES, size - offset))
        if not data:
            raise ArtifactError(f"the file shrank to {offset} bytes while it was being sent")
        moved = upload.write(offset, data)
        if moved is None:
            conflicts += 1
            if conflicts > MAX_CONFLICTS:
                raise ArtifactError(
                    f"the upload kept conflicting ({MAX_CONFLICTS} times); run it again",
                    "offset_mismatch",
                )
            began = upload.begin()
            moved = int(began["offset"])
        offset = moved
    if progress:
        progress(size, size)


def file_reader(path: Path) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read


# --- the store (a Ray actor on the head) ------------------------------------------------------


class ArtifactStore:
    """Blobs and refs over one backend; thread-safe (the actor runs calls concurrently)."""

    def __init__(self, location: str, max_bytes: int = MAX_BYTES) -> None:
        self.location = location
        self.max_bytes = max_bytes
        self.backend = open_backend(location)
        self._sizes: dict[str, int] = {}  # declared sizes of uploads in progress
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def _lock(self, d: str) -> threading.Lock:
        """The lock of a digest's uploads (striped: a bounded set shared by all digests)."""
        return self._locks[int(d[:4], 16) % LOCK_STRIPES]

    def info(self) -> dict[str, Any]:
        return {"location": self.location, "max_bytes": self.max_bytes}

    def stat(self, d: str) -> dict[str, Any] | None:
        size = self.backend.size(check_digest(d))
        return None if size is None else {"sha256": d, "size": size}

    def begin(self, d: str, size: int) -> dict[str, Any]:
        """Start or resume an upload: {"offset": bytes already held, "complete": stored already}."""
        check_digest(d)
        check_size(size, self.max_bytes)
        with self._lock(d):
            have = self.backend.size(d)
            if have is not None:
                if have != size:
                    raise ArtifactError(f"{d} is stored with {have} bytes, not {size}")
                return {"offset": size, "complete": True}
            offset = self.backend.partial_size(d)
            if offset > size:
                self.backend.discard(d)
                offset = 0
            self._sizes[d] = size
            return {"offset": offset, "complete": False}

    def write(self, d: str, offset: int, data: bytes) -> int:
        """Append `data` at `offset` (the upload's current size); the new size."""
        check_digest(d)
        if not isinstance(data, bytes | bytearray) or len(data) > MAX_WRITE_BYTES:
            raise ArtifactError(f"a write carries bytes, at most {MAX_WRITE_BYTES}", "too_large")
        with self._lock(d):
            if self.backend.exists(d):
                raise ArtifactError(f"{d} is already stored; nothing to write", "offset_mismatch")
            limit = self._sizes.get(d, self.max_bytes)
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise ArtifactError(f"offset {offset!r} is not a byte count (an integer >= 0)")
            if offset + len(data) > limit:
                raise ArtifactError(
                    f"{d}: {len(data)} bytes at offset {offset} go past the upload's size, "
                    f"{limit} bytes",
                    "too_large",
                    "begin the upload with the file's real size",
                )
            return self.backend.append(d, offset, bytes(data))

    def finish(self, d: str) -> dict[str, Any]:
        """Verify and keep an upload: {"sha256", "size"}; a hash mismatch discards it."""
        check_digest(d)
        with self._lock(d):
            size = self.backend.size(d)
            if size is None:
                want, have = self._sizes.get(d), self.backend.partial_size(d)
                if want is not None and have < want:
                    raise ArtifactError(
                        f"{d}: {have} of {want} bytes uploaded",
                        "incomplete",
                        f"send the rest from offset {have}",
                    )
                try:
                    size = self.backend.commit(d)
                finally:
                    self._sizes.pop(d, None)
            return {"sha256": d, "size": size}

    def read(self, d: str, offset: int, length: int) -> bytes:
        check_digest(d)
        check_size(offset, self.max_bytes)
        if not isinstance(length, int) or not 0 <= length <= MAX_READ_BYTES:
            raise ArtifactError(f"a read is 0 to {MAX_READ_BYTES} bytes, not {length!r}")
        return self.backend.read(d, offset, length)

    def get_ref(self, key: str) -> str | None:
        return self.backend.get_ref(check_ref_key(key))

    def set_ref(self, key: str, d: str) -> None:
        check_ref_key(key)
        if not self.backend.exists(check_digest(d)):
            raise ArtifactError(
                f"ref {key}: no blob {d} in the store; upload it first", "not_found"
            )
        self.backend.set_ref(key, d)


def start_artifact_store(location: str, max_bytes: int = MAX_BYTES) -> Any:
    """The store actor: detached, named, pinned to the head (this driver's node), restarted.

    The location is opened here first, so a wrong one is an error now, not a crashing actor."""
    import ray

    open_backend(location)
    head = str(ray.get_runtime_context().get_node_id())
    handle: Any = (
        ray.remote(ArtifactStore)
        .options(
            name=STORE_ACTOR,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
            max_concurrency=16,
            label_selector={"ray.io/node-id": head},
        )
        .remote(location, max_bytes)
    )
    running = ray.get(handle.info.remote())["location"]
    if running != location:
        raise ArtifactError(
            f"an artifact store at {running} is already running; it cannot also serve {location}",
            hint="stop the mesh first (meshctl down), or use the running store's location",
        )
    return handle


def store_actor() -> Any:
    """The running store's actor handle; ValueError when none runs."""
    import ray

    return ray.get_actor(STORE_ACTOR, namespace=NAMESPACE)


# --- the client workers use -------------------------------------------------------------------


class ArtifactClient:
    """Puts and gets blobs, files and folders through `call(method, *args)` on an ArtifactStore."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call

    @classmethod
    def on_ray(cls, wait_s: float = STORE_WAIT_S) -> ArtifactClient:
        """Bound to the running store actor; its errors arrive as ArtifactError. A call made
        while the store restarts (or the mesh restarts it) waits up to `wait_s` for it."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        handle: list[Any] = [None]

        def call(method: str, *args: Any) -> Any:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    if handle[0] is None:
                        handle[0] = store_actor()
                    return ray.get(getattr(handle[0], method).remote(*args))
                except RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, ArtifactError):
                        raise ArtifactError(str(cause), cause.code, cause.hint) from None
                    raise
                except (RayActorError, ValueError):  # restarting, or not (yet) running
                    handle[0] = None
                    if time.monotonic() > deadline:
                        raise ArtifactError(
                            f"the artifact store (actor {STORE_ACTOR!r}) did not answer "
                            f"{method} within {wait_s:g} s",
                            "unavailable",
                            "is the mesh running? `meshctl up` starts it",
                        ) from None
                    time.sleep(1.0)

        return cls(call)

    @classmethod
    def local(cls, store: ArtifactStore) -> ArtifactClient:
        return cls(lambda method, *args: getattr(store, method)(*args))

    def _upload(self, d: str, size: int) -> Upload:
        def write(offset: int, data: bytes) -> int | None:
            try:
                moved: int = self.call("write", d, offset, data)
                return moved
            except ArtifactError as e:
                if e.code == "offset_mismatch":
                    return None
                raise

        return Upload(lambda: self.call("begin", d, size), write, lambda: self.call("finish", d))

    def put_bytes(self, data: bytes) -> str:
        d = sha256_bytes(data)
        send(self._upload(d, len(data)), len(data), lambda o, n: data[o : o + n])
        return d

    def put_file(self, path: str | Path, progress: Progress | None = None) -> str:
        path = Path(path)
        d, size = sha256_file(path), path.stat().st_size
        send(self._upload(d, size), size, file_reader(path), progress)
        return d

    def put_tree(self, folder: str | Path) -> str:
        """Every file of `folder`, then its manifest; the manifest's hash names the tree."""
        manifest, files = tree_manifest(folder)
        for f in files:
            send(self._upload(f.sha256, f.size), f.size, file_reader(f.source))
        return self.put_bytes(manifest)

    def _size(self, d: str) -> int:
        stat = self.call("stat", check_digest(d))
        if stat is None:
            raise ArtifactError(f"no blob {d} in the store", "not_found")
        return int(stat["size"])

    def _chunks(self, d: str, size: int) -> Callable[[int], Iterable[bytes]]:
        def chunks(offset: int) -> Iterable[bytes]:
            while offset < size:
                data: bytes = self.call("read", d, offset, min(CHUNK_BYTES, size - offset))
                if not data:
                    return
                offset += len(data)
                yield data

        return chunks

    def get_bytes(self, d: str, limit: int = GET_BYTES_LIMIT) -> bytes:
        size = self._size(d)
        if size > limit:
            raise ArtifactError(f"{d} is {size} bytes, over {limit} to hold in memory; get_file")
        data = b"".join(self._chunks(d, size)(0))
        got = sha256_bytes(data)
        if got != d:
            raise ArtifactError(f"read content hashes to {got}, not {d}", "hash_mismatch")
        return data

    def get_file(self, d: str, dest: str | Path, progress: Progress | None = None) -> None:
        size = self._size(d)
        receive_file(dest, d, size, self._chunks(d, size), progress)

    def get_tree(self, d: str, dest_dir: str | Path) -> list[ManifestFile]:
        """Every file of tree `d` under `dest_dir` (files already there and right are kept)."""
        files = parse_manifest(self.get_bytes(d, MAX_MANIFEST_BYTES))
        for f in files:
            target = tree_target(dest_dir, f)
            if target is not None:
                self.get_file(f["sha256"], target)
        return files

    def get_ref(self, key: str) -> str | None:
        ref: str | None = self.call("get_ref", key)
        return ref

    def set_ref(self, key: str, d: str) -> None:
        self.call("set_ref", key, d)


def tree_target(dest_dir: str | Path, f: ManifestFile) -> Path | None:
    """Where a tree's file goes under `dest_dir`, or None when it is there already with its hash.

    Refuses a path that leaves dest_dir through a symbolic link already there."""
    root = Path(dest_dir).resolve()
    target = root / check_tree_path(f["path"])
    real = Path(os.path.realpath(target.parent))
    if real != root and root not in real.parents:
        raise ArtifactError(f"{target}: its folder leads outside {root}; remove the link")
    if (
        target.is_file()
        and target.stat().st_size == f["size"]
        and sha256_file(target) == f["sha256"]
    ):
        return None
    return target
