"""Uploads and downloads over real HTTP (scheduler/transfer.py), resumed after real failures.

`StoreServer` is an `http.server` on 127.0.0.1 that answers the artifact routes of the API
contract from a real `ArtifactStore` (ranges by the API's own `byte_range`, errors in the API's
form). It can fail on purpose as a network or a mesh does: refuse PUTs after some, cut a download
short, or flip a byte of one. httpx is never mocked.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from scheduler.api import ARTIFACT_STATUS, byte_range
from scheduler.client import ApiError, ClientError
from scheduler.transfer import download_file, download_tree, upload_file, upload_tree
from workloads.artifacts import (
    CHUNK_BYTES,
    ArtifactClient,
    ArtifactError,
    ArtifactStore,
    sha256_bytes,
)

HEADERS = {"Authorization": "Bearer t"}


class StoreServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: ArtifactStore) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.store = store
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, range or offset
        self.puts_left: int | None = None  # then 503
        # the next GET longer than this ends after this many bytes, the connection cut
        self.cut_at: int | None = None
        self.flip: bool = False  # the next GET of more than one byte has its first byte changed

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StoreServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        self._json(status, {"error": {"code": code, "message": message, "hint": hint}})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.removeprefix("/api/v1")
        query = dict(parse_qsl(url.query))
        self.server.requests.append(
            (method, path, self.headers.get("Range") or query.get("offset"))
        )
        store = self.server.store
        try:
            if method == "POST" and path == "/artifacts/uploads":
                body = json.loads(self._body())
                began = store.begin(body["sha256"], body["size"])
                self._json(200, {"sha256": body["sha256"], "size": body["size"], **began})
            elif method == "PUT" and (m := re.fullmatch(r"/artifacts/uploads/(\w+)", path)):
                data = self._body()
                if self.server.puts_left is not None:
                    if self.server.puts_left == 0:
                        return self._error(503, "unavailable", "the mesh is restarting")
                    self.server.puts_left -= 1
                self._json(200, {"offset": store.write(m[1], int(query["offset"]), data)})
            elif method == "POST" and (m := re.fullmatch(r"/artifacts/uploads/(\w+)/finish", path)):
                self._json(201, store.finish(m[1]))
            elif method == "GET" and (m := re.fullmatch(r"/artifacts/(\w+)", path)):
                self._download(m[1])
            else:
                self._error(404, "not_found", f"{method} {path}: Not Found")
        except ArtifactError as e:
            self._error(ARTIFACT_STATUS[e.code], e.code, str(e), e.hint)

    def _download(self, digest: str) -> None:
        stat = self.server.store.stat(digest)
        if stat is None:
            return self._error(404, "not_found", f"no artifact {digest} on this mesh")
        span = byte_range(self.headers.get("Range"), stat["size"])
        if span is None:
            return self._error(416, "bad_range", "not within the blob")
        start, end, partial = span
        data = self.server.store.read(digest, start, end - start)
        self.send_response(206 if partial else 200)
        self.send_header("Content-Length", str(len(data)))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{stat['size']}")
        self.end_headers()
        if self.server.flip and len(data) > 1:
            data = bytes([data[0] ^ 1]) + data[1:]
            self.server.flip = False
        if self.server.cut_at is not None and len(data) > self.server.cut_at:
            data, self.server.cut_at = data[: self.server.cut_at], None
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StoreServer]:
    srv = StoreServer(ArtifactStore(str(tmp_path / "store")))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def blob(size: int, seed: int = 1) -> bytes:
    pattern = bytes((seed * 31 + i * 7) % 251 for i in range(4093))
    return (pattern * (size // len(pattern) + 1))[:size]


def sent(server: StoreServer, method: str) -> list[str | None]:
    return [r[2] for r in server.requests if r[0] == method]


def test_a_file_goes_up_and_comes_back_with_progress(
    server: StoreServer, http: httpx.Client, tmp_path: Path
) -> None:
    data = blob(2 * CHUNK_BYTES + 10)
    (tmp_path / "in.bin").write_bytes(data)
    ups: list[tuple[int, int]] = []
    digest = upload_file(
        http, server.api, HEADERS, tmp_path / "in.bin", "bio-ml", lambda *p: ups.append(p)
    )
    assert sent(server, "PUT") == ["0", str(CHUNK_BYTES), str(2 * CHUNK_BYTES)]
    assert ups[-1] == (len(data), len(data))
    downs: list[tuple[int, int]] = []
    download_file(
        http, server.api, HEADERS, digest, tmp_path / "out.bin", lambda *p: downs.append(p)
    )
    assert (tmp_path / "out.bin").read_bytes() == data
    assert downs[-1] == (len(data), len(data))
    assert upload_file(http, server.api, HEADERS, tmp_path / "in.bin") == digest
    assert len(sent(server, "PUT")) == 3  # stored already: nothing sent again


def test_an_interrupted_upload_resumes_where_the_store_stands(
    server: StoreServer, http: httpx.Client, tmp_path: Path
) -> None:
    data = blob(3 * CHUNK_BYTES + 1)
    (tmp_path / "in.bin").write_bytes(data)
    server.puts_left = 2
    with pytest.raises(ApiError, match="the mesh is restarting") as e:
        upload_file(http, server.api, HEADERS, tmp_path / "in.bin")
    assert e.value.status == 503
    server.puts_left = None
    server.requests.clear()
    digest = upload_file(http, server.api, HEADERS, tmp_path / "in.bin")
    assert sent(server, "PUT") == [str(2 * CHUNK_BYTES), str(3 * CHUNK_BYTES)]
    assert ArtifactClient.local(server.store).get_bytes(digest) == data


def test_a_file_that_changes_while_it_is_uploaded_is_refused_and_discarded(
    server: StoreServer, http: httpx.Client, tmp_path: Path
) -> None:
    data = blob(CHUNK_BYTES + 100)
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    digest = sha256_bytes(data)

    def edit_midway(done: int, total: int) -> None:
        if done == CHUNK_BYTES:
            path.write_bytes(data[:CHUNK_BYTES] + b"Z" * 100)

    with pytest.raises(ApiError, match=f"content hash is .*, not {digest}; the upload was") as e:
        upload_file(http, server.api, HEADERS, path, None, edit_midway)
    assert (e.value.status, e.value.code) == (422, "hash_mismatch")
    assert "the file changed while it was sent" in str(e.value.hint)
    assert server.store.stat(digest) is None
    assert server.store.begin(digest, len(data))["offset"] == 0


def test_an_interrupted_download_resumes_with_a_range_request(
    server: StoreServer, http: httpx.Client, tmp_path: Path
) -> None:
    data = blob(2 * CHUNK_BYTES + 7)
    digest = ArtifactClient.local(server.store).put_bytes(data)
    dest = tmp_path / "out.bin"
    server.cut_at = CHUNK_BYTES + 3
    with pytest.raises(ClientError, match="run the command again"):
        download_file(http, server.api, HEADERS, digest, dest)
    assert not dest.exists()
    kept = Path(f"{dest}.part").stat().st_size
    assert CHUNK_BYTES <= kept <= CHUNK_BYTES + 3
    download_file(http, server.api, HEADERS, digest, dest)
    assert dest.read_bytes() == data
    assert sent(server, "GET")[-1] == f"bytes={kept}-"
    assert not Path(f"{dest}.part").exists()


def test_a_download_that_does_not_match_its_hash_leaves_nothing(
    server: StoreServer, http: httpx.Client, tmp_path: Path
) -> None:
    data = blob(1000)
    digest = ArtifactClient.local(server.store).put_bytes(data)
    dest = tmp_path / "out.bin"
    server.flip = True
    with pytest.raises(ClientError, match="it was discarded and nothing was written to") as e:
        download_file(http, server.api, HEADERS, digest, dest)
    assert "hint: run it again" in str(e.value)
    assert not dest.exists()
    assert not Path(f"{dest}.part").exists()


def test_a_folder_goes_up_and_comes_back_and_only_what_changed_moves(
    server: StoreServer, http: httpx.Client, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    files = {"a.txt": b"a", "w/model.safetensors": blob(CHUNK_BYTES + 5), "w/e/empty": b""}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    progress: list[tuple[int, int]] = []
    digest = upload_tree(http, server.api, HEADERS, src, "bio-ml", lambda *p: progress.append(p))
    assert progress[-1][0] == progress[-1][1] > CHUNK_BYTES
    out = tmp_path / "out"
    download_tree(http, server.api, HEADERS, digest, out)
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files
    (out / "a.txt").write_bytes(b"changed")
    server.requests.clear()
    download_tree(http, server.api, HEADERS, digest, out)
    assert (out / "a.txt").read_bytes() == b"a"
    fetched = {r[1] for r in server.requests if r[0] == "GET"}
    assert len(fetched) == 2  # the manifest and a.txt; the big file was already right


def test_a_blob_that_is_not_a_tree_is_said_to_be_no_folder(
    server: StoreServer, http: httpx.Client, tmp_path: Path
) -> None:
    digest = ArtifactClient.local(server.store).put_bytes(b"just bytes")
    with pytest.raises(ClientError, match=f"{digest} is not a tree \\(folder\\)"):
        download_tree(http, server.api, HEADERS, digest, tmp_path / "out")


def test_a_missing_artifact_is_the_apis_not_found(
    server: StoreServer, http: httpx.Client, tmp_path: Path
) -> None:
    with pytest.raises(ApiError, match="no artifact 0+ on this mesh") as e:
        download_file(http, server.api, HEADERS, "0" * 64, tmp_path / "x")
    assert (e.value.status, e.value.code) == (404, "not_found")
    with pytest.raises(ClientError, match="is not a SHA-256"):
        download_file(http, server.api, HEADERS, "nope", tmp_path / "x")


def test_an_api_that_does_not_answer_is_named(http: httpx.Client, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "f").write_bytes(b"x")
    api = f"http://127.0.0.1:{port}/api/v1"
    with pytest.raises(ClientError, match=f"cannot reach the mesh API at {api}"):
        upload_file(http, api, HEADERS, tmp_path / "f")


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        (None, 10, (0, 10, False)),
        ("bytes=0-", 10, (0, 10, True)),
        ("bytes=3-", 10, (3, 10, True)),
        ("bytes=3-5", 10, (3, 6, True)),
        ("bytes=3-99", 10, (3, 10, True)),
        ("bytes=-4", 10, (6, 10, True)),
        ("bytes=-40", 10, (0, 10, True)),
        ("bytes=5-3", 10, (0, 10, False)),
        ("bytes=0-1,4-5", 10, (0, 10, False)),
        ("items=0-1", 10, (0, 10, False)),
        ("bytes=10-", 10, None),
        ("bytes=0-0", 0, None),
        ("bytes=-0", 10, None),
    ],
)
def test_range_headers_are_read_as_rfc_9110_says(
    header: str | None, size: int, span: tuple[int, int, bool] | None
) -> None:
    assert byte_range(header, size) == span
