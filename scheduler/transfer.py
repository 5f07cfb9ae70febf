"""Files and folders to and from the mesh's artifact store over HTTP (`/api/v1/artifacts`).

What `meshctl` uses to upload the files a job names and to download results and models. Both
directions resume: an upload asks the API how much of it is already stored (POST /uploads) and
sends the rest, and a download continues from `dest`.part with a Range request. Every download
is verified against its SHA-256 before it is renamed into place; a mismatch is an error and
leaves nothing at `dest`. Folders travel as trees (workloads/artifacts.py): their files, then the
manifest that names them. Failures are `ClientError` (an error response: `ApiError`), whose
text a user can act on; `progress(done_bytes, total_bytes)` is called as bytes move.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from scheduler.client import ApiError, ClientError
from workloads.artifacts import (
    MAX_MANIFEST_BYTES,
    ArtifactError,
    Progress,
    Upload,
    check_digest,
    file_reader,
    parse_manifest,
    receive_file,
    send,
    sha256_bytes,
    sha256_file,
    tree_manifest,
    tree_target,
)

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def _request(
    http: httpx.Client,
    api: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    **kwargs: Any,
) -> httpx.Response:
    try:
        response = http.request(method, f"{api}{path}", headers=dict(headers), **kwargs)
    except httpx.HTTPError as e:
        raise _transport_error(api, e) from None
    if response.is_error:
        raise ApiError.from_response(response)
    return response


def _transport_error(api: str, error: Exception) -> ClientError:
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return ClientError(
            f"cannot reach the mesh API at {api}: {error or 'connection refused'}\n"
            "hint: is the mesh running (`meshctl up`)? run the command again to resume"
        )
    if isinstance(error, httpx.TimeoutException):
        return ClientError(f"the mesh API at {api} stopped answering; run the command again")
    return ClientError(f"talking to the mesh API at {api}: {error}; run the command again")


def _artifact_error(error: ArtifactError) -> ClientError:
    return ClientError(f"{error}\nhint: {error.hint}" if error.hint else str(error))


# --- upload ---------------------------------------------------------------------------------


def _upload(
    http: httpx.Client,
    api: str,
    headers: Mapping[str, str],
    digest: str,
    size: int,
    read: Callable[[int, int], bytes],
    community: str | None,
    progress: Progress | None,
) -> str:
    """Send blob `digest` (`size` bytes, `read(offset, length)`), resuming where the store is."""

    def begin() -> dict[str, Any]:
        body: dict[str, Any] = {"sha256": digest, "size": size}
        if community is not None:
            body["community"] = community
        began: dict[str, Any] = _request(
            http, api, "POST", "/artifacts/uploads", headers, json=body
        ).json()
        return began

    def write(offset: int, data: bytes) -> int | None:
        try:
            reply = _request(
                http,
                api,
                "PUT",
                f"/artifacts/uploads/{digest}",
                {**headers, "Content-Type": "application/octet-stream"},
                params={"offset": offset},
                content=data,
            )
        except ApiError as e:
            if e.code == "offset_mismatch":
                return None
            raise
        return int(reply.json()["offset"])

    def finish() -> None:
        _request(http, api, "POST", f"/artifacts/uploads/{digest}/finish", headers)

    try:
        send(Upload(begin, write, finish), size, read, progress)
    except ArtifactError as e:
        raise _artifact_error(e) from None
    except OSError as e:
        raise ClientError(f"{e.filename or digest}: cannot read: {e.strerror or e}") from None
    return digest


def upload_file(
    http: httpx.Client,
    api: str,
    headers: Mapping[str, str],
    path: str | Path,
    community: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Upload one file (resuming a partial upload); its SHA-256."""
    path = Path(path)
    try:
        size, digest = path.stat().st_size, sha256_file(path)
    except OSError as e:
        raise ClientError(f"{path}: cannot read: {e.strerror or e}") from None
    return _upload(http, api, headers, digest, size, file_reader(path), community, progress)


def upload_tree(
    http: httpx.Client,
    api: str,
    headers: Mapping[str, str],
    folder: str | Path,
    community: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Upload every file of `folder`, then its manifest; the manifest's SHA-256 names the tree."""
    try:
        manifest, files = tree_manifest(folder)
    except ArtifactError as e:
        raise _artifact_error(e) from None
    except OSError as e:
        raise ClientError(f"{e.filename or folder}: cannot read: {e.strerror or e}") from None
    total = sum(f.size for f in files) + len(manifest)
    base = 0

    def step(done: int, _: int) -> None:
        if progress:
            progress(base + done, total)

    for f in files:
        _upload(http, api, headers, f.sha256, f.size, file_reader(f.source), community, step)
        base += f.size
    digest = sha256_bytes(manifest)

    def read_manifest(offset: int, length: int) -> bytes:
        return manifest[offset : offset + length]

    return _upload(http, api, headers, digest, len(manifest), read_manifest, community, step)


# --- download -------------------------------------------------------------------------------


def _chunks(
    http: httpx.Client, api: str, headers: Mapping[str, str], digest: str, offset: int
) -> Iterator[bytes]:
    """The blob's bytes from `offset` on (a Range request when offset > 0)."""
    extra = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with http.stream(
            "GET", f"{api}/artifacts/{digest}", headers={**headers, **extra}
        ) as response:
            if response.is_error:
                response.read()
                raise ApiError.from_response(response)
            if offset and response.status_code != 206:
                raise ClientError(
                    f"{api}/artifacts/{digest}: the server ignored the range request; "
                    "delete the .part file of the download and run the command again"
                )
            yield from response.iter_bytes()  # as it arrives: a cut keeps all that came
    except httpx.HTTPError as e:
        raise _transport_error(api, e) from None


def _blob_size(http: httpx.Client, api: str, headers: Mapping[str, str], digest: str) -> int:
    """The blob's size from a one-byte GET (its errors carry a body, unlike HEAD's)."""
    extra = {"Range": "bytes=0-0"}
    try:
        with http.stream(
            "GET", f"{api}/artifacts/{digest}", headers={**headers, **extra}
        ) as response:
            if response.status_code == 416:  # the empty blob has no byte 0
                return 0
            if response.is_error:
                response.read()
                raise ApiError.from_response(response)
            match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("content-range", ""))
            if match:
                return int(match.group(3))
            return int(response.headers.get("content-length", "-1"))
    except httpx.HTTPError as e:
        raise _transport_error(api, e) from None


def _download(
    http: httpx.Client,
    api: str,
    headers: Mapping[str, str],
    digest: str,
    size: int,
    dest: Path,
    progress: Progress | None,
) -> None:
    try:
        receive_file(dest, digest, size, lambda o: _chunks(http, api, headers, digest, o), progress)
    except ArtifactError as e:
        raise _artifact_error(e) from None
    except OSError as e:
        raise ClientError(f"{e.filename or dest}: cannot write: {e.strerror or e}") from None


def download_file(
    http: httpx.Client,
    api: str,
    headers: Mapping[str, str],
    digest: str,
    dest: str | Path,
    progress: Progress | None = None,
) -> None:
    """Download blob `digest` to `dest`, resuming `dest`.part; verified before it is renamed."""
    try:
        check_digest(digest)
    except ArtifactError as e:
        raise _artifact_error(e) from None
    size = _blob_size(http, api, headers, digest)
    if size < 0:
        raise ClientError(f"{api}/artifacts/{digest}: the answer gave no size; is it a mesh API?")
    _download(http, api, headers, digest, size, Path(dest), progress)


def download_tree(
    http: httpx.Client,
    api: str,
    headers: Mapping[str, str],
    digest: str,
    dest_dir: str | Path,
    progress: Progress | None = None,
) -> None:
    """Download tree `digest` into `dest_dir`; files already there with their hash are kept."""
    try:
        check_digest(digest)
        size = _blob_size(http, api, headers, digest)
        if size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{digest} is not a tree (folder): {size} bytes is no manifest")
        manifest = b"".join(_chunks(http, api, headers, digest, 0))
        got = sha256_bytes(manifest)
        if got != digest:
            raise ArtifactError(
                f"{digest}: the received manifest hashes to {got}; run the command again"
            )
        try:
            files = parse_manifest(manifest)
        except ArtifactError as e:
            raise ArtifactError(f"{digest} is not a tree (folder): {e}") from None
        total = sum(f["size"] for f in files)
        base = 0

        def step(done: int, _: int) -> None:
            if progress:
                progress(base + done, total)

        for f in files:
            target = tree_target(dest_dir, f)
            if target is not None:
                _download(http, api, headers, f["sha256"], f["size"], target, step)
            base += f["size"]
            step(0, total)
    except ArtifactError as e:
        raise _artifact_error(e) from None
