"""The artifact routes of the session's mesh: chunked uploads, ranged downloads, who may read.

Bytes go through Ray Serve to the head-pinned artifact store actor and back; the controller decides
who may read what. Registered models are readable by everyone, uploads only by their community.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from scheduler import transfer
from scheduler.client import ApiError
from tests.integration.conftest import Mesh

pytestmark = pytest.mark.integration


def member(mesh: Mesh, community: str) -> str:
    r = mesh.http.post(f"{mesh.api}/tokens", json={"community": community}, headers=mesh.headers())
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def test_an_upload_resumes_and_a_download_serves_ranges_and_verifies(
    mesh: Mesh, tmp_path: Path
) -> None:
    data = os.urandom(9 * 2**20 + 123)  # more than one chunk of each size
    digest = hashlib.sha256(data).hexdigest()
    url = f"{mesh.api}/artifacts/uploads"
    headers = mesh.headers()
    begin = {"sha256": digest, "size": len(data), "community": "bio-ml"}
    r = mesh.http.post(url, json=begin, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["offset"] == 0
    first = 3 * 2**20
    r = mesh.http.put(
        f"{url}/{digest}", params={"offset": 0}, content=data[:first], headers=headers
    )
    assert r.json()["offset"] == first
    r = mesh.http.put(f"{url}/{digest}", params={"offset": 5}, content=b"x", headers=headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "offset_mismatch"
    r = mesh.http.post(url, json=begin, headers=headers)  # a client that lost its place asks
    assert r.json()["offset"] == first
    too_big = bytes(8 * 2**20 + 1)  # a chunk over the 8 MiB limit
    r = mesh.http.put(f"{url}/{digest}", params={"offset": first}, content=too_big, headers=headers)
    assert r.status_code == 413
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert transfer.upload_file(mesh.http, mesh.api, headers, path, "bio-ml", None) == digest

    r = mesh.http.get(
        f"{mesh.api}/artifacts/{digest}", headers={**headers, "Range": "bytes=100-199"}
    )
    assert r.status_code == 206
    assert r.content == data[100:200]
    r = mesh.http.head(f"{mesh.api}/artifacts/{digest}", headers=headers)
    assert int(r.headers["content-length"]) == len(data)
    dest = tmp_path / "copy"
    transfer.download_file(mesh.http, mesh.api, headers, digest, dest, None)
    assert dest.read_bytes() == data


def test_a_wrong_hash_is_refused_and_nothing_is_stored(mesh: Mesh) -> None:
    data = b"the bytes that arrive"
    claimed = hashlib.sha256(b"the bytes that were meant").hexdigest()
    url = f"{mesh.api}/artifacts/uploads"
    headers = mesh.headers()
    mesh.http.post(url, json={"sha256": claimed, "size": len(data)}, headers=headers)
    mesh.http.put(f"{url}/{claimed}", params={"offset": 0}, content=data, headers=headers)
    r = mesh.http.post(f"{url}/{claimed}/finish", headers=headers)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "hash_mismatch"
    assert mesh.http.head(f"{mesh.api}/artifacts/{claimed}", headers=headers).status_code == 404


def test_a_community_reads_its_uploads_and_no_other(mesh: Mesh, tmp_path: Path) -> None:
    bio, quechua = member(mesh, "bio-ml"), member(mesh, "quechua-lm")
    path = tmp_path / "private.jsonl"
    path.write_text('{"text": "only for bio-ml"}\n')
    as_bio = {"Authorization": f"Bearer {bio}"}
    digest = transfer.upload_file(mesh.http, mesh.api, as_bio, path, "bio-ml", None)
    assert mesh.http.get(f"{mesh.api}/artifacts/{digest}", headers=as_bio).status_code == 200
    as_quechua = {"Authorization": f"Bearer {quechua}"}
    with pytest.raises(ApiError) as refused:
        transfer.download_file(mesh.http, mesh.api, as_quechua, digest, tmp_path / "x", None)
    assert refused.value.status == 404
    assert not (tmp_path / "x").exists()
    r = mesh.http.post(
        f"{mesh.api}/artifacts/uploads",
        json={"sha256": digest, "size": path.stat().st_size, "community": "bio-ml"},
        headers=as_quechua,
    )
    assert r.status_code == 403  # nor may it upload into another community
    assert mesh.http.get(f"{mesh.api}/artifacts/{digest}").status_code == 401
