"""The mesh API client and the `meshctl` commands over it, against a real local HTTP server.

`FakeApi` is an `http.server` on 127.0.0.1 answering canned JSON per route and recording every
request, so the client's HTTP (paths, query, headers, bodies, error bodies, a refused
connection) is exercised for real; httpx is never mocked. Error cases assert the exact text a
user reads (STYLE.md 4).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from typer.testing import CliRunner, Result

from scheduler.audit import GENESIS, record_hash
from scheduler.cli import app
from scheduler.client import (
    ApiError,
    ClientConfig,
    ClientError,
    Finished,
    LogLine,
    MeshClient,
    Transition,
    resolve_config,
    split_job_id,
)

NO_API = (
    "no mesh API configured: run `meshctl up` to start a mesh on this machine, "
    "or pass --api URL or set MESH_API (such as http://127.0.0.1:8000/api/v1)"
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

runner = CliRunner()


# --- a real HTTP server with canned answers ----------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeApi:
    """Canned answers per (method, path under /api/v1): given in order, the last one repeats."""

    url: str = ""
    routes: dict[tuple[str, str], list[tuple[int, bytes]]] = field(default_factory=dict)
    seen: list[Request] = field(default_factory=list)

    def answer(self, method: str, path: str, *bodies: Any, status: int = 200) -> None:
        self.routes[(method, path)] = [(status, json.dumps(b).encode()) for b in bodies]

    def answer_raw(self, method: str, path: str, status: int, body: bytes) -> None:
        self.routes[(method, path)] = [(status, body)]

    def respond(self, method: str, path: str) -> tuple[int, bytes]:
        key = (method, path.removeprefix("/api/v1"))
        queue = self.routes.get(key)
        if not queue:
            error = {"code": "not_found", "message": f"no route {method} {path}", "hint": None}
            return 404, json.dumps({"error": error}).encode()
        return queue.pop(0) if len(queue) > 1 else queue[0]


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            api.seen.append(
                Request(
                    self.command,
                    url.path,
                    dict(parse_qsl(url.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
            )
            status, answer = api.respond(self.command, url.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def client(api: FakeApi) -> Iterator[MeshClient]:
    with MeshClient(ClientConfig(api.url, "secret-token", "--api"), timeout=5.0) as c:
        yield c


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MESH_HOME, and neither MESH_API nor MESH_TOKEN set."""
    monkeypatch.setenv("MESH_HOME", str(tmp_path / "mesh-home"))
    monkeypatch.delenv("MESH_API", raising=False)
    monkeypatch.delenv("MESH_TOKEN", raising=False)
    return tmp_path / "mesh-home"


# --- factories ---------------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def write_config(home: Path, **values: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def job(
    job_id: str = "bio-ml/probe-a",
    state: str = "QUEUED",
    *transitions: tuple[str | None, str, str],
    reason: str | None = None,
) -> dict[str, Any]:
    """A job object as the API returns it; `transitions` are (from, to, reason)."""
    community, name = job_id.split("/")
    return {
        "id": job_id,
        "community": community,
        "name": name,
        "kind": "Probe",
        "state": state,
        "priority": "normal",
        "gpus": 1,
        "run": 1,
        "retries_used": 0,
        "max_retries": 0,
        "submitted_at": 1000.0,
        "updated_at": 1000.0,
        "reason": reason if reason is not None else (transitions[-1][2] if transitions else None),
        "waiting": [],
        "nodes": [],
        "spec": {},
        "placement": None,
        "report": None,
        "transitions": [
            {"ts": 1000.0 + i, "from": f, "to": t, "reason": r}
            for i, (f, t, r) in enumerate(transitions)
        ],
    }


SUBMITTED = (None, "QUEUED", "submitted")
PLACED = ("QUEUED", "PLACED", "placed on sim-a")
RUNNING = ("PLACED", "RUNNING", "started")
SUCCEEDED = ("RUNNING", "SUCCEEDED", "probe finished")
FAILED = ("RUNNING", "FAILED", "CUDA error")


def log_page(next_seq: int, state: str, *lines: str) -> dict[str, Any]:
    first = next_seq - len(lines)
    return {
        "lines": [
            {"seq": first + i, "ts": 1000.0 + i, "line": text} for i, text in enumerate(lines)
        ],
        "next": next_seq,
        "state": state,
    }


def chain(count: int) -> list[dict[str, Any]]:
    """`count` audit records, each pointing to the hash of the one before."""
    records: list[dict[str, Any]] = []
    prev = GENESIS
    for seq in range(1, count + 1):
        record: dict[str, Any] = {
            "seq": seq,
            "ts": 1000.0 + seq,
            "kind": "submit",
            "job": "bio-ml/probe-a",
            "node": None,
            "actor": "admin",
            "data": {"n": seq},
            "prev": prev,
        }
        record["hash"] = prev = record_hash(record)
        records.append(record)
    return records


def meshctl(api: FakeApi | str, *args: str | Path) -> Result:
    """Run `meshctl ARGS... --api URL --token T` in process, with a wide terminal."""
    url = api if isinstance(api, str) else api.url
    argv = [str(a) for a in args] + ["--api", url, "--token", "secret-token"]
    return runner.invoke(app, argv, env={"COLUMNS": "200"})


def plain(result: Result) -> str:
    return _ANSI.sub("", result.output)


def assert_exit(result: Result, code: int) -> None:
    assert result.exit_code == code, plain(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


# --- where the API is --------------------------------------------------------------------------


def test_the_api_flag_beats_the_environment_and_the_config_file(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home, api="http://file:8000/api/v1", token="file-token")
    monkeypatch.setenv("MESH_API", "http://env:8000/api/v1")
    monkeypatch.setenv("MESH_TOKEN", "env-token")
    config = resolve_config("http://flag:8000/api/v1", "flag-token")
    assert config == ClientConfig("http://flag:8000/api/v1", "flag-token", "--api")


def test_the_environment_beats_the_config_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(home, api="http://file:8000/api/v1", token="file-token")
    monkeypatch.setenv("MESH_API", "http://env:8000/api/v1")
    monkeypatch.setenv("MESH_TOKEN", "env-token")
    assert resolve_config(None, None) == ClientConfig(
        "http://env:8000/api/v1", "env-token", "MESH_API"
    )


def test_the_config_file_in_mesh_home_is_read_when_no_flag_or_variable_is_set(home: Path) -> None:
    path = write_config(home, api="http://file:8000/api/v1/", token="file-token")
    assert resolve_config(None, None) == ClientConfig(
        "http://file:8000/api/v1", "file-token", str(path)
    )


def test_the_token_is_resolved_on_its_own_flag_then_environment_then_file(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home, api="http://file:8000/api/v1", token="file-token")
    assert resolve_config("http://flag:1/api/v1", None).token == "file-token"
    monkeypatch.setenv("MESH_TOKEN", "env-token")
    assert resolve_config("http://flag:1/api/v1", None).token == "env-token"
    assert resolve_config(None, "flag-token").token == "flag-token"


def test_mesh_home_defaults_to_dot_mesh_in_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESH_HOME", raising=False)
    monkeypatch.delenv("MESH_API", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    write_config(tmp_path / ".mesh", api="http://home:8000/api/v1")
    assert resolve_config(None, None).api == "http://home:8000/api/v1"


def test_a_trailing_slash_of_the_api_address_is_dropped(home: Path) -> None:
    assert resolve_config("http://127.0.0.1:8000/api/v1/", None).api == (
        "http://127.0.0.1:8000/api/v1"
    )


def test_an_empty_variable_counts_as_unset(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_API", "")
    with pytest.raises(ClientError) as e:
        resolve_config(None, None)
    assert str(e.value) == NO_API


def test_no_api_anywhere_says_to_run_meshctl_up_or_pass_api(home: Path) -> None:
    with pytest.raises(ClientError) as e:
        resolve_config(None, "a-token")
    assert str(e.value) == NO_API


def test_an_address_that_is_not_http_is_refused_naming_where_it_came_from(home: Path) -> None:
    with pytest.raises(ClientError) as e:
        resolve_config("127.0.0.1:8000", None)
    assert str(e.value) == (
        "'127.0.0.1:8000' (from --api) is not an HTTP address; write it as http://HOST:PORT/api/v1"
    )


def test_a_config_file_that_is_not_a_mapping_is_an_error_naming_the_file(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.yaml").write_text("- api\n", encoding="utf-8")
    with pytest.raises(ClientError) as e:
        resolve_config(None, None)
    assert str(e.value) == f"{home / 'config.yaml'}: expected a mapping with 'api:' and 'token:'"


# --- job ids -----------------------------------------------------------------------------------


def test_a_job_id_splits_into_community_and_name() -> None:
    assert split_job_id("bio-ml/probe-rtx-4090") == ("bio-ml", "probe-rtx-4090")


@pytest.mark.parametrize(
    "job_id", ["probe-a", "bio-ml/", "/probe-a", "bio-ml/probe/a", "Bio-ML/probe", "bio ml/x", ""]
)
def test_anything_but_community_slash_name_is_not_a_job_id(job_id: str) -> None:
    with pytest.raises(ClientError) as e:
        split_job_id(job_id)
    assert str(e.value) == (
        f"{job_id!r} is not a job id: write community/name in lowercase letters, digits and "
        "'-', as `meshctl jobs` lists them"
    )


def test_a_bad_job_id_is_refused_before_any_request(api: FakeApi, client: MeshClient) -> None:
    with pytest.raises(ClientError, match="is not a job id"):
        client.job("../tokens")
    assert api.seen == []


# --- requests ----------------------------------------------------------------------------------


def test_submit_posts_the_document_as_json_with_the_bearer_token(
    api: FakeApi, client: MeshClient
) -> None:
    api.answer("POST", "/jobs", job(), status=201)
    document = {"apiVersion": "mesh/v1", "kind": "Probe", "name": "probe-a"}
    assert client.submit(document)["state"] == "QUEUED"
    (request,) = api.seen
    assert (request.method, request.path) == ("POST", "/api/v1/jobs")
    assert request.headers["authorization"] == "Bearer secret-token"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == document


def test_jobs_sends_only_the_filters_given(api: FakeApi, client: MeshClient) -> None:
    api.answer("GET", "/jobs", {"jobs": [job()]})
    assert [j["id"] for j in client.jobs()] == ["bio-ml/probe-a"]
    client.jobs(community="bio-ml", state="QUEUED")
    assert [r.query for r in api.seen] == [{}, {"community": "bio-ml", "state": "QUEUED"}]


def test_job_cancel_and_logs_address_the_job_by_community_and_name(
    api: FakeApi, client: MeshClient
) -> None:
    api.answer("GET", "/jobs/bio-ml/probe-a", job())
    api.answer("DELETE", "/jobs/bio-ml/probe-a", job(state="CANCELLED"))
    api.answer("GET", "/jobs/bio-ml/probe-a/logs", log_page(3, "RUNNING", "a", "b"))
    client.job("bio-ml/probe-a")
    assert client.cancel("bio-ml/probe-a")["state"] == "CANCELLED"
    assert client.logs("bio-ml/probe-a", since=1)["next"] == 3
    assert [(r.method, r.path, r.query) for r in api.seen] == [
        ("GET", "/api/v1/jobs/bio-ml/probe-a", {}),
        ("DELETE", "/api/v1/jobs/bio-ml/probe-a", {}),
        ("GET", "/api/v1/jobs/bio-ml/probe-a/logs", {"since": "1"}),
    ]


def test_audit_follows_more_until_the_whole_chain_is_read(api: FakeApi, client: MeshClient) -> None:
    records = chain(5)
    api.answer(
        "GET",
        "/audit",
        {"records": records[:2], "head": records[1]["hash"], "more": True},
        {"records": records[2:4], "head": records[3]["hash"], "more": True},
        {"records": records[4:], "head": records[4]["hash"], "more": False},
    )
    assert client.audit(limit=2) == records
    assert [r.query for r in api.seen] == [
        {"limit": "2"},
        {"since": "3", "limit": "2"},
        {"since": "5", "limit": "2"},
    ]


def test_tokens_are_created_listed_and_revoked_by_id(api: FakeApi, client: MeshClient) -> None:
    created = {"id": "t1", "token": "s3cret", "community": "bio-ml", "role": "member"}
    api.answer("POST", "/tokens", created, status=201)
    api.answer("GET", "/tokens", {"tokens": [{"id": "t1", "revoked": False}]})
    api.answer("DELETE", "/tokens/t1", {"id": "t1", "revoked": True})
    assert client.create_token("bio-ml", "member") == created
    assert client.tokens() == [{"id": "t1", "revoked": False}]
    assert client.revoke_token("t1") == {"id": "t1", "revoked": True}
    assert api.seen[0].json() == {"community": "bio-ml", "role": "member"}


def test_without_a_token_no_authorization_header_is_sent(api: FakeApi) -> None:
    api.answer("GET", "/health", {"ok": True})
    with MeshClient(ClientConfig(api.url, None, "--api")) as c:
        assert c.health() == {"ok": True}
    assert "authorization" not in api.seen[0].headers


# --- errors ------------------------------------------------------------------------------------


def test_an_error_response_becomes_an_api_error_with_its_message_and_hint(
    api: FakeApi, client: MeshClient
) -> None:
    error = {
        "code": "job_exists",
        "message": "job bio-ml/probe-a is RUNNING",
        "hint": "cancel it first: meshctl cancel bio-ml/probe-a",
    }
    api.answer("POST", "/jobs", {"error": error}, status=409)
    with pytest.raises(ApiError) as e:
        client.submit({"name": "probe-a"})
    assert (e.value.status, e.value.code) == (409, "job_exists")
    assert str(e.value) == (
        "job bio-ml/probe-a is RUNNING\nhint: cancel it first: meshctl cancel bio-ml/probe-a"
    )


def test_an_api_error_without_a_hint_is_its_message_alone(api: FakeApi, client: MeshClient) -> None:
    error = {"code": "unauthorized", "message": "unknown or revoked token", "hint": None}
    api.answer("GET", "/jobs", {"error": error}, status=401)
    with pytest.raises(ApiError) as e:
        client.jobs()
    assert (e.value.status, e.value.code, str(e.value)) == (
        401,
        "unauthorized",
        "unknown or revoked token",
    )


def test_an_error_that_is_not_the_apis_says_what_came_back(
    api: FakeApi, client: MeshClient
) -> None:
    api.answer_raw("GET", "/nodes", 502, b"<html>Bad Gateway</html>")
    with pytest.raises(ApiError) as e:
        client.nodes()
    assert str(e.value) == (
        f"HTTP 502 from {api.url}/nodes: <html>Bad Gateway</html>\n"
        "hint: is --api / MESH_API the address of a mesh API (ending in /api/v1)?"
    )


def test_a_refused_connection_names_the_address_and_says_no_mesh_runs_there() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1"
    with MeshClient(ClientConfig(url, None, "MESH_API")) as c, pytest.raises(ClientError) as e:
        c.health()
    assert str(e.value) == (
        f"cannot reach the mesh API at {url} (from MESH_API): connection refused; "
        "no mesh is running there.\n"
        "hint: `meshctl up` starts one on this machine; "
        "or pass --api / set MESH_API to the address of a running mesh"
    )


# --- watching jobs -----------------------------------------------------------------------------


def test_watch_yields_new_transitions_log_lines_and_the_end_once_each(
    api: FakeApi, client: MeshClient
) -> None:
    api.answer(
        "GET",
        "/jobs/bio-ml/probe-a",
        job("bio-ml/probe-a", "RUNNING", SUBMITTED, PLACED, RUNNING),
        job("bio-ml/probe-a", "SUCCEEDED", SUBMITTED, PLACED, RUNNING, SUCCEEDED),
    )
    api.answer(
        "GET",
        "/jobs/bio-ml/probe-a/logs",
        log_page(2, "RUNNING", "warming up", "matmul 8192"),
        log_page(3, "SUCCEEDED", "41.2 TFLOP/s"),
        log_page(3, "SUCCEEDED"),
    )
    sleeps: list[float] = []
    events = list(
        client.watch(
            ["bio-ml/probe-a"], logs=True, shown={"bio-ml/probe-a": 1}, sleep=sleeps.append
        )
    )
    assert events == [
        Transition("bio-ml/probe-a", "QUEUED", "PLACED", "placed on sim-a", 1001.0),
        Transition("bio-ml/probe-a", "PLACED", "RUNNING", "started", 1002.0),
        LogLine("bio-ml/probe-a", 0, 1000.0, "warming up"),
        LogLine("bio-ml/probe-a", 1, 1001.0, "matmul 8192"),
        Transition("bio-ml/probe-a", "RUNNING", "SUCCEEDED", "probe finished", 1003.0),
        LogLine("bio-ml/probe-a", 2, 1000.0, "41.2 TFLOP/s"),
        Finished("bio-ml/probe-a", "SUCCEEDED", "probe finished"),
    ]
    assert sleeps == [0.5]
    log_queries = [r.query for r in api.seen if r.path.endswith("/logs")]
    assert log_queries == [{}, {"since": "2"}, {"since": "3"}]


# --- meshctl over the client -------------------------------------------------------------------


def test_meshctl_without_an_api_anywhere_exits_2_saying_how_to_get_one(home: Path) -> None:
    result = runner.invoke(app, ["jobs"])
    assert_exit(result, 2)
    assert plain(result) == f"error: {NO_API}\n"


def test_meshctl_against_a_port_where_nothing_listens_exits_2_without_a_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1"
    result = meshctl(url, "jobs")
    assert_exit(result, 2)
    assert plain(result).startswith(
        f"error: cannot reach the mesh API at {url} (from --api): connection refused; "
        "no mesh is running there.\nhint: `meshctl up` starts one"
    )


def test_meshctl_status_of_a_bad_job_id_exits_2_naming_the_form(api: FakeApi) -> None:
    result = meshctl(api, "status", "probe-a")
    assert_exit(result, 2)
    assert plain(result) == (
        "error: 'probe-a' is not a job id: write community/name in lowercase letters, digits "
        "and '-', as `meshctl jobs` lists them\n"
    )


def test_meshctl_prints_the_apis_message_and_hint_and_exits_2(api: FakeApi) -> None:
    error = {"code": "not_found", "message": "no job bio-ml/nope", "hint": "see meshctl jobs"}
    api.answer("DELETE", "/jobs/bio-ml/nope", {"error": error}, status=404)
    result = meshctl(api, "cancel", "bio-ml/nope")
    assert_exit(result, 2)
    assert plain(result) == "error: no job bio-ml/nope\nhint: see meshctl jobs\n"


def probe_file(tmp_path: Path, *names: str) -> Path:
    documents = [
        {"apiVersion": "mesh/v1", "kind": "Probe", "name": n, "community": "bio-ml"} for n in names
    ]
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return path


def test_submit_wait_prints_each_job_and_its_end_and_exits_0_when_all_succeed(
    api: FakeApi, tmp_path: Path
) -> None:
    api.answer("POST", "/jobs", job("bio-ml/probe-a", "QUEUED", SUBMITTED), status=201)
    api.answer(
        "GET", "/jobs/bio-ml/probe-a", job("bio-ml/probe-a", "SUCCEEDED", SUBMITTED, SUCCEEDED)
    )
    result = meshctl(api, "submit", probe_file(tmp_path, "probe-a"), "--wait")
    assert_exit(result, 0)
    assert plain(result) == "submitted bio-ml/probe-a (QUEUED)\nbio-ml/probe-a SUCCEEDED\n"
    assert api.seen[0].json()["name"] == "probe-a"


def test_submit_wait_exits_1_and_gives_the_reason_when_a_job_fails(
    api: FakeApi, tmp_path: Path
) -> None:
    api.answer("POST", "/jobs", job("bio-ml/probe-a", "QUEUED", SUBMITTED), status=201)
    api.answer("GET", "/jobs/bio-ml/probe-a", job("bio-ml/probe-a", "FAILED", SUBMITTED, FAILED))
    result = meshctl(api, "submit", probe_file(tmp_path, "probe-a"), "--wait")
    assert_exit(result, 1)
    assert plain(result) == (
        "submitted bio-ml/probe-a (QUEUED)\nbio-ml/probe-a FAILED: CUDA error\n"
    )


def test_submit_follow_prints_state_changes_with_reasons_and_log_lines(
    api: FakeApi, tmp_path: Path
) -> None:
    api.answer("POST", "/jobs", job("bio-ml/probe-a", "QUEUED", SUBMITTED), status=201)
    api.answer(
        "GET",
        "/jobs/bio-ml/probe-a",
        job("bio-ml/probe-a", "RUNNING", SUBMITTED, PLACED, RUNNING),
        job("bio-ml/probe-a", "SUCCEEDED", SUBMITTED, PLACED, RUNNING, SUCCEEDED),
    )
    api.answer(
        "GET",
        "/jobs/bio-ml/probe-a/logs",
        log_page(1, "RUNNING", "[rank 0] matmul 8192"),
        log_page(1, "SUCCEEDED"),
    )
    result = meshctl(api, "submit", probe_file(tmp_path, "probe-a"), "--follow")
    assert_exit(result, 0)
    assert plain(result) == (
        "submitted bio-ml/probe-a (QUEUED)\n"
        "bio-ml/probe-a: QUEUED -> PLACED (placed on sim-a)\n"
        "bio-ml/probe-a: PLACED -> RUNNING (started)\n"
        "[rank 0] matmul 8192\n"
        "bio-ml/probe-a: RUNNING -> SUCCEEDED (probe finished)\n"
    )


def test_submit_of_an_invalid_file_sends_nothing(api: FakeApi, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    documents: list[dict[str, Any]] = [
        {"apiVersion": "mesh/v1", "kind": "Probe", "name": "good", "community": "bio-ml"},
        {"apiVersion": "mesh/v1", "kind": "Probe", "name": "bad", "community": "bio-ml"},
    ]
    documents[1]["resources"] = {"gpu": 1}
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    result = meshctl(api, "submit", path)
    assert_exit(result, 2)
    assert plain(result) == (
        "error: bad.yaml (document 2): resources.gpu: unknown key; did you mean 'gpus'?\n"
    )
    assert api.seen == []


def test_audit_verify_recomputes_every_page_of_the_chain(api: FakeApi) -> None:
    records = chain(3)
    api.answer(
        "GET",
        "/audit",
        {"records": records[:2], "head": records[1]["hash"], "more": True},
        {"records": records[2:], "head": records[2]["hash"], "more": False},
    )
    result = meshctl(api, "audit", "verify")
    assert_exit(result, 0)
    assert plain(result) == f"audit chain verified: 3 records, head {records[2]['hash'][:16]}\n"


def test_audit_verify_exits_1_naming_the_first_changed_record(api: FakeApi) -> None:
    records = chain(3)
    records[1]["data"] = {"n": 99}
    api.answer("GET", "/audit", {"records": records, "head": records[2]["hash"], "more": False})
    result = meshctl(api, "audit", "verify")
    assert_exit(result, 1)
    assert plain(result) == (
        "audit chain broken at record 2: record 2 was changed: its hash is not that of its "
        "contents\n"
    )


def test_nodes_marks_simulated_nodes_and_counts_allocated_gpus(api: FakeApi) -> None:
    node = {
        "name": "sim-a",
        "alive": True,
        "simulated": True,
        "owner": "bio-ml",
        "cpus": 8.0,
        "memory_gb": 32.0,
        "gpus": [
            {"index": i, "model": "RTX-4090", "memory_gb": 24.0, "used": 0.0} for i in range(4)
        ],
        "allocations": [
            {"job": "bio-ml/a", "bundle": 0, "gpus": [0], "gpu_fraction": 1.0, "cpus": 1.0},
            {"job": "bio-ml/b", "bundle": 0, "gpus": [1], "gpu_fraction": 0.5, "cpus": 1.0},
        ],
        "availability": 0.95,
        "mtbf_h": 12.5,
        "first_seen": 1000.0,
        "last_seen": 1001.0,
        "state": "SIMULATED",
        "why": "declared GPUs: never probed",
    }
    liar = {
        **node,
        "name": "liar",
        "simulated": False,
        "allocations": [],
        "mtbf_h": None,
        "state": "SUSPECT",
        "why": "claims 1 x T4; GPU 0: the probe found no CUDA device",
    }
    api.answer("GET", "/nodes", {"nodes": [node, liar]})
    result = meshctl(api, "nodes")
    assert_exit(result, 0)
    said = " ".join(plain(result).split())
    assert "liar: SUSPECT - claims 1 x T4; GPU 0: the probe found no CUDA device" in said
    assert "sim-a: SIMULATED" not in said
    row = next(line for line in plain(result).splitlines() if "sim-a" in line)
    cells = [c.strip() for c in re.split(r"[│┃]", row) if c.strip()]
    assert cells == [
        "sim-a (simulated)",
        "bio-ml",
        "4 x RTX-4090 (24 GB)",
        "1.5 of 4",
        "bio-ml/a, bio-ml/b",
        "SIMULATED",
        "95%",
        "12.5 h",
    ]


def test_token_create_prints_the_token_alone_on_stdout_and_says_it_is_shown_once(
    api: FakeApi,
) -> None:
    created = {"id": "t1", "token": "s3cret", "community": "bio-ml", "role": "member"}
    api.answer("POST", "/tokens", created, status=201)
    result = meshctl(api, "token", "create", "--community", "bio-ml")
    assert_exit(result, 0)
    assert result.stdout == "s3cret\n"
    assert "created token t1 for bio-ml (member); it is shown only this once" in result.stderr


def test_a_member_token_without_a_community_is_refused_before_any_request(api: FakeApi) -> None:
    result = meshctl(api, "token", "create")
    assert_exit(result, 2)
    assert plain(result) == "error: a member token needs --community NAME\n"
    assert api.seen == []
