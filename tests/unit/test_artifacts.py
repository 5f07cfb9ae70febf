"""The artifact store without Ray: real files, real hashing, on a directory and on fsspec URLs.

`ArtifactClient.local(store)` calls an `ArtifactStore` object directly, which is what the actor
runs; a client's `call` is wrapped only to record which store methods it used (what was sent,
from which offset), never to change an answer.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from workloads.artifacts import (
    CHUNK_BYTES,
    MAX_WRITE_BYTES,
    ArtifactClient,
    ArtifactError,
    ArtifactStore,
    FsspecBackend,
    LocalBackend,
    ManifestFile,
    open_backend,
    parse_manifest,
    receive_file,
    sha256_bytes,
    sha256_file,
    tree_manifest,
    tree_target,
)

BAD_DIGEST = "is not a SHA-256: write it as 64 lowercase hex digits"


def blob(size: int, seed: int = 1) -> bytes:
    """`size` bytes that differ from chunk to chunk (so an offset error shows in the hash)."""
    pattern = bytes((seed * 31 + i * 7) % 251 for i in range(4093))
    return (pattern * (size // len(pattern) + 1))[:size]


@pytest.fixture(params=["local", "file-url", "memory-url"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store keeps its bytes: a path, a file:// URL, an in-memory object store."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "file-url":
        return f"file://{tmp_path}/store"
    return f"memory://mesh-test-{uuid.uuid4().hex}/store"


@pytest.fixture
def store(location: str) -> ArtifactStore:
    return ArtifactStore(location)


class Recorder:
    """Calls a store and records each call's method and arguments (bytes as their length)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, method: str, *args: Any) -> Any:
        self.calls.append((method, *(len(a) if isinstance(a, bytes) else a for a in args)))
        return getattr(self.store, method)(*args)

    def methods(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


def test_open_backend_takes_a_path_to_a_directory_and_a_url_to_fsspec(tmp_path: Path) -> None:
    assert isinstance(open_backend(str(tmp_path / "a")), LocalBackend)
    assert isinstance(open_backend(f"file://{tmp_path}/b"), FsspecBackend)
    assert (tmp_path / "a" / "blobs" / "sha256").is_dir()


def test_a_blob_round_trips_and_is_stored_under_its_hash(store: ArtifactStore) -> None:
    client = ArtifactClient.local(store)
    data = blob(CHUNK_BYTES * 2 + 17)
    digest = client.put_bytes(data)
    assert digest == sha256_bytes(data)
    assert store.stat(digest) == {"sha256": digest, "size": len(data)}
    assert client.get_bytes(digest) == data
    assert store.read(digest, len(data) - 5, 100) == data[-5:]
    assert store.stat("0" * 64) is None


def test_the_empty_blob_is_a_blob(store: ArtifactStore) -> None:
    client = ArtifactClient.local(store)
    digest = client.put_bytes(b"")
    assert store.stat(digest) == {"sha256": digest, "size": 0}
    assert client.get_bytes(digest) == b""


def test_an_upload_resumes_from_the_offset_the_store_holds(location: str) -> None:
    data = blob(3 * 1000 + 11)
    digest = sha256_bytes(data)
    first = ArtifactStore(location)
    assert first.begin(digest, len(data)) == {"offset": 0, "complete": False}
    assert first.write(digest, 0, data[:1000]) == 1000
    assert first.write(digest, 1000, data[1000:2000]) == 2000

    again = ArtifactStore(location)  # the actor restarted: only the backend remembers
    assert again.begin(digest, len(data)) == {"offset": 2000, "complete": False}
    with pytest.raises(ArtifactError, match="the upload is at offset 2000, not 1000") as e:
        again.write(digest, 1000, data[1000:2000])
    assert e.value.code == "offset_mismatch"
    assert e.value.hint == "send the bytes from offset 2000 (begin says where an upload stands)"
    assert again.write(digest, 2000, data[2000:]) == len(data)
    assert again.finish(digest) == {"sha256": digest, "size": len(data)}
    assert again.read(digest, 0, len(data)) == data
    assert again.backend.partial_size(digest) == 0


def test_a_blob_stored_once_is_not_sent_again(store: ArtifactStore) -> None:
    data = blob(CHUNK_BYTES + 1)
    ArtifactClient.local(store).put_bytes(data)
    recorder = Recorder(store)
    digest = ArtifactClient(recorder).put_bytes(data)
    assert [c[0] for c in recorder.calls] == ["begin"]
    assert store.begin(digest, len(data)) == {"offset": len(data), "complete": True}
    with pytest.raises(ArtifactError, match="is already stored; nothing to write"):
        store.write(digest, 0, data[:10])


def test_a_client_sends_only_what_the_store_lacks(store: ArtifactStore) -> None:
    data = blob(CHUNK_BYTES * 2 + 100)
    digest = sha256_bytes(data)
    store.begin(digest, len(data))
    store.write(digest, 0, data[:CHUNK_BYTES])
    recorder = Recorder(store)
    assert ArtifactClient(recorder).put_bytes(data) == digest
    writes = recorder.methods("write")
    assert [(c[2], c[3]) for c in writes] == [(CHUNK_BYTES, CHUNK_BYTES), (2 * CHUNK_BYTES, 100)]
    assert store.read(digest, 0, len(data)) == data


def test_a_hash_mismatch_discards_the_upload(store: ArtifactStore) -> None:
    claimed = sha256_bytes(b"what the client meant to send")
    sent = b"what actually arrived"
    store.begin(claimed, len(sent))
    store.write(claimed, 0, sent)
    with pytest.raises(ArtifactError) as e:
        store.finish(claimed)
    assert str(e.value) == (
        f"content hash is {sha256_bytes(sent)}, not {claimed}; the upload was discarded"
    )
    assert e.value.code == "hash_mismatch"
    assert store.stat(claimed) is None
    assert store.backend.partial_size(claimed) == 0
    assert store.begin(claimed, len(sent)) == {"offset": 0, "complete": False}


def test_finishing_an_upload_before_all_its_bytes_arrived_says_what_is_missing(
    store: ArtifactStore,
) -> None:
    data = blob(500)
    digest = sha256_bytes(data)
    store.begin(digest, 500)
    store.write(digest, 0, data[:200])
    with pytest.raises(ArtifactError, match="200 of 500 bytes uploaded") as e:
        store.finish(digest)
    assert (e.value.code, e.value.hint) == ("incomplete", "send the rest from offset 200")
    assert store.begin(digest, 500)["offset"] == 200


def test_a_shorter_restart_of_an_upload_starts_it_again(store: ArtifactStore) -> None:
    data = blob(300)
    digest = sha256_bytes(data)
    store.begin(digest, 1000)
    store.write(digest, 0, blob(600, seed=2))
    assert store.begin(digest, 300) == {"offset": 0, "complete": False}
    store.write(digest, 0, data)
    assert store.finish(digest)["size"] == 300


def test_sizes_are_bounded(location: str) -> None:
    store = ArtifactStore(location, max_bytes=1000)
    digest = sha256_bytes(blob(100))
    with pytest.raises(ArtifactError, match="1001 bytes is over the store's limit of 1000") as e:
        store.begin(digest, 1001)
    assert e.value.code == "too_large"
    for size in (-1, 1.5, True, "10"):
        with pytest.raises(ArtifactError, match="is not a byte count"):
            store.begin(digest, size)  # type: ignore[arg-type]  # what a bad request sends
    store.begin(digest, 100)
    with pytest.raises(ArtifactError, match="go past the upload's size, 100 bytes") as e:
        store.write(digest, 0, blob(101))
    assert e.value.code == "too_large"
    big = ArtifactStore(location)
    with pytest.raises(ArtifactError, match=f"at most {MAX_WRITE_BYTES}"):
        big.write(digest, 0, bytes(MAX_WRITE_BYTES + 1))
    with pytest.raises(ArtifactError, match="a read is 0 to"):
        big.read(digest, 0, 10**12)


@pytest.mark.parametrize(
    "digest", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63, None, 7]
)
def test_anything_but_64_lowercase_hex_digits_is_refused_as_a_digest(
    store: ArtifactStore, digest: Any
) -> None:
    for call in (
        lambda: store.stat(digest),
        lambda: store.begin(digest, 1),
        lambda: store.write(digest, 0, b"x"),
        lambda: store.finish(digest),
        lambda: store.read(digest, 0, 1),
        lambda: store.set_ref("a/b", digest),
    ):
        with pytest.raises(ArtifactError, match=BAD_DIGEST):
            call()


def test_refs_point_at_blobs_and_are_replaced_whole(store: ArtifactStore) -> None:
    client = ArtifactClient.local(store)
    one, two = client.put_bytes(b"checkpoint 1"), client.put_bytes(b"checkpoint 2")
    assert client.get_ref("checkpoints/bio-ml/ft/1") is None
    client.set_ref("checkpoints/bio-ml/ft/1", one)
    client.set_ref("checkpoints/bio-ml/ft", two)  # a key and a key under it do not collide
    assert client.get_ref("checkpoints/bio-ml/ft/1") == one
    client.set_ref("checkpoints/bio-ml/ft/1", two)
    assert client.get_ref("checkpoints/bio-ml/ft/1") == two
    assert client.get_ref("checkpoints/bio-ml/ft") == two
    with pytest.raises(ArtifactError, match="no blob 0+ in the store; upload it first") as e:
        client.set_ref("checkpoints/bio-ml/ft/2", "0" * 64)
    assert e.value.code == "not_found"


def test_replacing_a_ref_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    digest = ArtifactClient.local(store).put_bytes(b"x")
    for _ in range(3):
        store.set_ref("jobs/a/b", digest)
    assert sorted(p.name for p in (tmp_path / "refs" / "jobs" / "a").iterdir()) == ["b.ref"]


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "/a", "a//b", ".hidden", "a/b.ref/c", "a b"])
def test_ref_keys_that_are_not_plain_names_are_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ArtifactError, match="ref key"):
        store.get_ref(key)


def test_concurrent_uploads_of_the_same_bytes_both_succeed(store: ArtifactStore) -> None:
    data = blob(3 * CHUNK_BYTES + 5)
    with ThreadPoolExecutor(2) as pool:
        digests = list(pool.map(lambda _: ArtifactClient.local(store).put_bytes(data), range(2)))
    assert digests == [sha256_bytes(data)] * 2
    assert store.read(digests[0], 0, len(data)) == data


# --- trees ----------------------------------------------------------------------------------


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"model_type": "llama"}',
        "weights/model.safetensors": blob(CHUNK_BYTES + 3000, seed=3),
        "weights/deep/er/notes.txt": "ünïcode\n".encode(),
        "empty": b"",
        "sub/empty-too": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_tree_round_trips_with_nested_folders_and_empty_files(
    store: ArtifactStore, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "src")
    client = ArtifactClient.local(store)
    digest = client.put_tree(tmp_path / "src")
    listed = client.get_tree(digest, tmp_path / "out")
    assert read_tree(tmp_path / "out") == files
    assert [f["path"] for f in listed] == sorted(files)
    manifest = client.get_bytes(digest)
    assert json.loads(manifest)["mesh_tree"] == 1
    assert (
        manifest == json.dumps(json.loads(manifest), sort_keys=True, separators=(",", ":")).encode()
    )
    assert [(f["path"], f["size"]) for f in parse_manifest(manifest)] == [
        (p, len(files[p])) for p in sorted(files)
    ]


def test_storing_a_tree_again_sends_nothing_and_names_it_the_same(
    store: ArtifactStore, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src")
    digest = ArtifactClient.local(store).put_tree(tmp_path / "src")
    recorder = Recorder(store)
    assert ArtifactClient(recorder).put_tree(tmp_path / "src") == digest
    assert recorder.methods("write") == []
    (tmp_path / "src" / "empty").write_bytes(b"changed")
    assert ArtifactClient.local(store).put_tree(tmp_path / "src") != digest


def test_a_tree_download_keeps_files_already_right_and_replaces_wrong_ones(
    store: ArtifactStore, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "src")
    digest = ArtifactClient.local(store).put_tree(tmp_path / "src")
    out = tmp_path / "out"
    ArtifactClient.local(store).get_tree(digest, out)
    (out / "config.json").write_bytes(b"tampered")
    recorder = Recorder(store)
    ArtifactClient(recorder).get_tree(digest, out)
    assert read_tree(out) == files
    fetched = {c[1] for c in recorder.methods("stat")}  # the manifest and the one wrong file
    assert fetched == {digest, sha256_bytes(files["config.json"])}


def test_tree_manifest_reads_through_file_links_and_refuses_folder_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "w.bin").write_bytes(b"w")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").symlink_to(tmp_path / "real" / "w.bin")
    _, files = tree_manifest(tmp_path / "src")
    assert [(f.path, f.size) for f in files] == [("w.bin", 1)]
    (tmp_path / "src" / "linked").symlink_to(tmp_path / "real")
    with pytest.raises(ArtifactError, match="a symbolic link to a folder; copy the folder in"):
        tree_manifest(tmp_path / "src")
    with pytest.raises(ArtifactError, match="not a folder"):
        tree_manifest(tmp_path / "src" / "w.bin")


def manifest_of(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"mesh_tree": 1, "files": list(entries)}).encode()


def entry(path: Any, data: bytes = b"x") -> dict[str, Any]:
    return {"path": path, "sha256": sha256_bytes(data), "size": len(data)}


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../escape", "'..' part"),
        ("a/../../escape", "'..' part"),
        ("/etc/passwd", "absolute"),
        ("a\\..\\b", "backslash"),
        ("a//b", "empty"),
        ("./a", "'.'"),
        ("a/", "empty"),
        ("", "non-empty string"),
        (7, "non-empty string"),
        ("a\x00b", "NUL"),
        ("x" * 2000, "longer than 1024"),
    ],
)
def test_a_manifest_path_that_could_leave_its_folder_is_refused(path: Any, why: str) -> None:
    with pytest.raises(ArtifactError, match="tree path") as e:
        parse_manifest(manifest_of(entry(path)))
    assert why in str(e.value)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"not json", "not a tree manifest: not JSON"),
        (b'{"files": []}', "not a tree manifest"),
        (b'{"mesh_tree": 2, "files": []}', "not a tree manifest"),
        (manifest_of(entry("a"), entry("a")), "a path is listed twice"),
        (manifest_of(entry("a"), entry("a/b")), "'a/b' is under a file of the tree"),
        (manifest_of({"path": "a", "sha256": "x", "size": 1}), BAD_DIGEST),
        (manifest_of({"path": "a", "sha256": "0" * 64, "size": -1}), "not a byte count"),
        (manifest_of({"path": "a", "sha256": "0" * 64}), 'expected {"path", "sha256", "size"}'),
    ],
)
def test_a_malformed_manifest_is_refused(manifest: bytes, message: str) -> None:
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(").replace("{", r"\{")):
        parse_manifest(manifest)


def test_a_tree_is_not_written_through_a_link_that_leaves_the_folder(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    with pytest.raises(ArtifactError, match="its folder leads outside"):
        tree_target(out, ManifestFile(path="sub/x", sha256="0" * 64, size=1))


# --- getting files: resumed, verified, never half-written -------------------------------------


def test_get_file_resumes_from_the_part_file(store: ArtifactStore, tmp_path: Path) -> None:
    data = blob(2 * CHUNK_BYTES + 999)
    digest = ArtifactClient.local(store).put_bytes(data)
    dest = tmp_path / "dl" / "model.bin"
    dest.parent.mkdir()
    Path(f"{dest}.part").write_bytes(data[: CHUNK_BYTES + 5])
    recorder = Recorder(store)
    seen: list[tuple[int, int]] = []
    ArtifactClient(recorder).get_file(digest, dest, lambda done, total: seen.append((done, total)))
    assert dest.read_bytes() == data
    assert not Path(f"{dest}.part").exists()
    assert [c[2] for c in recorder.methods("read")] == [CHUNK_BYTES + 5, 2 * CHUNK_BYTES + 5]
    assert seen[0] == (CHUNK_BYTES + 5, len(data))
    assert seen[-1] == (len(data), len(data))


def test_a_wrong_part_file_is_an_error_that_leaves_nothing_at_dest(
    store: ArtifactStore, tmp_path: Path
) -> None:
    data = blob(CHUNK_BYTES + 10)
    digest = ArtifactClient.local(store).put_bytes(data)
    dest = tmp_path / "x.bin"
    Path(f"{dest}.part").write_bytes(b"garbage" + data[7:100])
    with pytest.raises(ArtifactError, match="it was discarded and nothing was written") as e:
        ArtifactClient.local(store).get_file(digest, dest)
    assert e.value.code == "hash_mismatch"
    assert not dest.exists()
    assert not Path(f"{dest}.part").exists()
    ArtifactClient.local(store).get_file(digest, dest)  # a second try starts afresh
    assert dest.read_bytes() == data


def test_a_damaged_stored_blob_is_never_handed_out(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    client = ArtifactClient.local(store)
    data = blob(1000)
    digest = client.put_bytes(data)
    path = tmp_path / "store" / "blobs" / "sha256" / digest[:2] / digest
    path.write_bytes(b"X" + data[1:])
    with pytest.raises(ArtifactError, match=f"read content hashes to .*, not {digest}"):
        client.get_bytes(digest)
    with pytest.raises(ArtifactError, match="hashes to"):
        client.get_file(digest, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_a_transfer_that_stops_early_keeps_its_part_to_resume(tmp_path: Path) -> None:
    data = blob(5000)
    dest = tmp_path / "f"

    def chunks_until(stop: int) -> Callable[[int], list[bytes]]:
        return lambda offset: [data[offset:stop]]

    with pytest.raises(ArtifactError, match="the transfer stopped at 3000 of 5000 bytes") as e:
        receive_file(dest, sha256_bytes(data), len(data), chunks_until(3000))
    assert e.value.code == "incomplete"
    assert Path(f"{dest}.part").stat().st_size == 3000
    offsets: list[int] = []

    def rest(offset: int) -> list[bytes]:
        offsets.append(offset)
        return [data[offset:]]

    receive_file(dest, sha256_bytes(data), len(data), rest)
    assert offsets == [3000]
    assert sha256_file(dest) == sha256_bytes(data)


def test_a_missing_blob_is_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no blob 0+ in the store") as e:
        ArtifactClient.local(store).get_file("0" * 64, tmp_path / "x")
    assert e.value.code == "not_found"
    with pytest.raises(ArtifactError, match="no blob"):
        store.read("0" * 64, 0, 1)


def test_uploads_leave_no_partial_or_temporary_files(tmp_path: Path) -> None:
    for location in (str(tmp_path / "a"), f"file://{tmp_path}/b"):
        store = ArtifactStore(location)
        client = ArtifactClient.local(store)
        make_tree(tmp_path / "src")
        client.put_tree(tmp_path / "src")
        client.set_ref("r/1", client.put_bytes(b"r"))
    for root in (tmp_path / "a", tmp_path / "b"):
        leftovers = [
            p
            for p in root.rglob("*")
            if p.is_file() and "blobs" not in p.parts and p.suffix != ".ref"
        ]
        assert leftovers == []


def test_a_blob_written_by_one_thread_is_read_whole_by_another(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    data = blob(2 * CHUNK_BYTES)
    digest = sha256_bytes(data)
    seen: list[dict[str, Any] | None] = []
    whole: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            stat = store.stat(digest)
            seen.append(stat)
            if stat is not None:
                whole.append(store.read(digest, 0, len(data)) == data)

    watcher = threading.Thread(target=watch)
    watcher.start()
    ArtifactClient.local(store).put_bytes(data)
    done.set()
    watcher.join()
    assert all(s is None or s["size"] == len(data) for s in seen)
    assert all(whole)
    assert os.path.getsize(tmp_path / "blobs" / "sha256" / digest[:2] / digest) == len(data)
