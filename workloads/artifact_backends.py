"""Where the artifact store keeps its bytes: content-addressed blobs, partial uploads and refs.

Two backends with the same methods: `LocalBackend`, a directory (the default, under $MESH_HOME on
the head), and `FsspecBackend`, an fsspec URL (file://, s3://, gs://) for clusters with shared
storage. A blob appears only whole and only under its own SHA-256: `commit` hashes what was
uploaded and discards it when the hash is not its name. Refs are small named pointers to blobs,
replaced atomically. Not thread-safe per digest: workloads/artifacts.py ArtifactStore serialises
the uploads of one digest. Errors are `ArtifactError`, whose `code` the HTTP API maps to a status.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

CHUNK_BYTES = 4 * 1024 * 1024
MAX_REF_CHARS = 512
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_REF_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ArtifactError(Exception):
    """A store request that cannot be done; `code` says which kind (the API maps it to a status).

    Codes: bad_request, not_found, too_large, offset_mismatch, incomplete, hash_mismatch,
    unavailable (the store actor is not running).
    """

    def __init__(self, message: str, code: str = "bad_request", hint: str | None = None) -> None:
        super().__init__(message)
        # instance attributes only: Ray's wrapper of a remote error finds them on the cause
        self.code = code
        self.hint = hint


# --- hashing --------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(digest: object) -> str:
    """`digest` if it is a SHA-256 in 64 lowercase hex digits; ArtifactError otherwise."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        shown = repr(digest)[:80]
        raise ArtifactError(f"{shown} is not a SHA-256: write it as 64 lowercase hex digits")
    return digest


def check_size(size: object, limit: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ArtifactError(f"size {size!r} is not a byte count (an integer >= 0)")
    if size > limit:
        raise ArtifactError(
            f"{size} bytes is over the store's limit of {limit} bytes per blob",
            "too_large",
            "split the file; the mesh operator sets the limit (start_artifact_store max_bytes)",
        )
    return size


def check_ref_key(key: object) -> str:
    """A ref key: '/'-separated parts of letters, digits, '.', '_', '-' ("checkpoints/c/n/1")."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_REF_CHARS:
        raise ArtifactError(f"ref key {key!r:.80}: expected 1 to {MAX_REF_CHARS} characters")
    for part in key.split("/"):
        if not _REF_PART_RE.fullmatch(part) or part.endswith(".ref"):
            raise ArtifactError(
                f"ref key {key!r}: part {part!r} is not allowed; each '/'-separated part starts "
                "with a letter or digit, holds only letters, digits, '.', '_', '-', and does "
                "not end in '.ref'"
            )
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _mismatch(got: str, digest: str) -> ArtifactError:
    return ArtifactError(
        f"content hash is {got}, not {digest}; the upload was discarded",
        "hash_mismatch",
        "the file changed while it was sent, or the hash was computed wrong: upload it again",
    )


# --- backends -------------------------------------------------------------------------------


class LocalBackend:
    """Blobs in a directory: root/blobs/sha256/ab/<hex>, partial uploads in root/partial/<hex>,
    refs in root/refs/<key>.ref. Completed blobs and refs appear by atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        for sub in ("blobs/sha256", "partial", "refs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _blob(self, d: str) -> Path:
        return self.root / "blobs" / "sha256" / d[:2] / d

    def _partial(self, d: str) -> Path:
        return self.root / "partial" / d

    def exists(self, d: str) -> bool:
        return self._blob(d).is_file()

    def size(self, d: str) -> int | None:
        try:
            return self._blob(d).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, d: str, offset: int, length: int) -> bytes:
        try:
            with open(self._blob(d), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise ArtifactError(f"no blob {d} in the store", "not_found") from None

    def partial_size(self, d: str) -> int:
        try:
            return self._partial(d).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, d: str, offset: int, data: bytes) -> int:
        have = self.partial_size(d)
        if offset != have:
            raise _offset_error(d, offset, have)
        with open(self._partial(d), "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return have + len(data)

    def discard(self, d: str) -> None:
        self._partial(d).unlink(missing_ok=True)

    def commit(self, d: str) -> int:
        partial = self._partial(d)
        if not partial.exists():
            if d != EMPTY_SHA256:
                raise _nothing_uploaded(d)
            partial.touch()
        got = sha256_file(partial)
        if got != d:
            partial.unlink(missing_ok=True)
            raise _mismatch(got, d)
        blob = self._blob(d)
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, blob)
        _fsync_dir(blob.parent)
        return blob.stat().st_size

    def get_ref(self, key: str) -> str | None:
        try:
            return (self.root / "refs" / f"{key}.ref").read_text().strip() or None
        except FileNotFoundError:
            return None

    def set_ref(self, key: str, d: str) -> None:
        _write_atomic(self.root / "refs" / f"{key}.ref", d.encode())


class FsspecBackend:
    """The same layout at an fsspec URL. Object stores cannot append, so a partial upload is a
    folder of parts named by their offset; `commit` joins them into a temporary object, hashes
    it on the way, and moves it into place."""

    def __init__(self, uri: str) -> None:
        import fsspec  # type: ignore[import-untyped]  # fsspec ships no type hints

        try:
            self.fs, self.root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            raise ArtifactError(
                f"artifact store {uri!r}: {e}", hint="install the fsspec driver it names"
            ) from None
        self.root = self.root.rstrip("/")
        self.uri = uri

    def _p(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _blob(self, d: str) -> str:
        return self._p("blobs", "sha256", d[:2], d)

    def _put(self, path: str, data: bytes) -> None:
        """Write an object under a temporary name, then move it into place."""
        tmp = self._p("tmp", uuid.uuid4().hex)
        self.fs.makedirs(self._p("tmp"), exist_ok=True)
        self.fs.pipe_file(tmp, data)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, path)

    def exists(self, d: str) -> bool:
        return self.size(d) is not None

    def size(self, d: str) -> int | None:
        try:
            return int(self.fs.info(self._blob(d))["size"])
        except FileNotFoundError:
            return None

    def read(self, d: str, offset: int, length: int) -> bytes:
        size = self.size(d)
        if size is None:
            raise ArtifactError(f"no blob {d} in the store", "not_found")
        end = min(size, offset + length)
        if offset >= end:
            return b""
        return bytes(self.fs.cat_file(self._blob(d), start=offset, end=end))

    def _parts(self, d: str) -> list[tuple[int, str, int]]:
        """(offset, path, size) of the contiguous parts from 0; parts after a gap are deleted."""
        try:
            listing = self.fs.ls(self._p("partial", d), detail=True)
        except FileNotFoundError:
            return []
        found = sorted(
            (int(name), str(e["name"]), int(e["size"]))
            for e in listing
            if (name := str(e["name"]).rsplit("/", 1)[-1]).isdigit()
        )
        parts: list[tuple[int, str, int]] = []
        end = 0
        for offset, path, size in found:
            if offset != end:
                self.fs.rm(path)
                continue
            parts.append((offset, path, size))
            end += size
        return parts

    def partial_size(self, d: str) -> int:
        return sum(size for _, _, size in self._parts(d))

    def append(self, d: str, offset: int, data: bytes) -> int:
        have = self.partial_size(d)
        if offset != have:
            raise _offset_error(d, offset, have)
        if data:
            self._put(self._p("partial", d, f"{offset:020d}"), data)
        return have + len(data)

    def discard(self, d: str) -> None:
        if self.fs.exists(self._p("partial", d)):
            self.fs.rm(self._p("partial", d), recursive=True)

    def commit(self, d: str) -> int:
        parts = self._parts(d)
        if not parts and d != EMPTY_SHA256:
            raise _nothing_uploaded(d)
        hasher = hashlib.sha256()
        tmp = self._p("tmp", uuid.uuid4().hex)
        self.fs.makedirs(self._p("tmp"), exist_ok=True)
        with self.fs.open(tmp, "wb") as out:
            for _, path, _ in parts:
                with self.fs.open(path, "rb") as f:
                    while chunk := f.read(CHUNK_BYTES):
                        hasher.update(chunk)
                        out.write(chunk)
        got = hasher.hexdigest()
        if got != d:
            self.fs.rm(tmp)
            self.discard(d)
            raise _mismatch(got, d)
        self.fs.makedirs(self._blob(d).rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, self._blob(d))
        self.discard(d)
        return sum(size for _, _, size in parts)

    def get_ref(self, key: str) -> str | None:
        try:
            return bytes(self.fs.cat_file(self._p("refs", f"{key}.ref"))).decode().strip() or None
        except FileNotFoundError:
            return None

    def set_ref(self, key: str, d: str) -> None:
        self._put(self._p("refs", f"{key}.ref"), d.encode())


Backend = LocalBackend | FsspecBackend


def open_backend(location: str) -> Backend:
    """A plain path: LocalBackend; a URL with a scheme (file://, s3://, gs://): FsspecBackend."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", location):
        return FsspecBackend(location)
    return LocalBackend(Path(location))


def _offset_error(d: str, offset: int, have: int) -> ArtifactError:
    return ArtifactError(
        f"{d}: the upload is at offset {have}, not {offset}",
        "offset_mismatch",
        f"send the bytes from offset {have} (begin says where an upload stands)",
    )


def _nothing_uploaded(d: str) -> ArtifactError:
    return ArtifactError(f"{d}: nothing was uploaded; begin, then write its bytes", "incomplete")
