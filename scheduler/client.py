"""The HTTP client of the mesh API (`/api/v1`), used by `meshctl` and by anyone scripting a mesh.

One method per route of the API contract; each returns the JSON the API answered. Every failure
is a `ClientError` whose text a user can act on: an error response becomes an `ApiError` carrying
the API's code, message and hint; a mesh that does not answer names the address tried.

Where the API is: `resolve_config` reads ``--api`` / ``--token``, then ``MESH_API`` /
``MESH_TOKEN``, then ``$MESH_HOME/config.yaml`` (``api:``, ``token:``; MESH_HOME defaults to
``~/.mesh``), a flag beating the environment, which beats the file.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
DEFAULT_HOME = "~/.mesh"
POLL_INTERVAL_S = 0.5

# A job id is community/name, both DNS labels as the job spec requires (scheduler.spec_sections).
_JOB_ID_RE = re.compile(r"([a-z]([a-z0-9-]{0,61}[a-z0-9])?)/([a-z]([a-z0-9-]{0,61}[a-z0-9])?)")
_NO_API = (
    "no mesh API configured: run `meshctl up` to start a mesh on this machine, "
    "or pass --api URL or set MESH_API (such as http://127.0.0.1:8000/api/v1)"
)


class ClientError(Exception):
    """A failure a user can act on; its text is what `meshctl` prints (no traceback)."""


class ApiError(ClientError):
    """An error response of the mesh API: ``{"error": {"code", "message", "hint"}}``."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The API's error body, or a description of a response that is not one."""
        try:
            body = response.json()
            error = body["error"]
            return cls(
                response.status_code,
                str(error["code"]),
                str(error["message"]),
                str(error["hint"]) if error.get("hint") else None,
            )
        except (ValueError, KeyError, TypeError):
            text = " ".join(response.text.split())[:200] or "(empty body)"
            return cls(
                response.status_code,
                f"http_{response.status_code}",
                f"HTTP {response.status_code} from {response.request.url}: {text}",
                "is --api / MESH_API the address of a mesh API (ending in /api/v1)?",
            )


@dataclass(frozen=True)
class ClientConfig:
    """Where the mesh API is, the bearer token to send, and where the address was found."""

    api: str
    token: str | None
    source: str  # "--api", "MESH_API" or the config file's path


def mesh_home() -> Path:
    """$MESH_HOME, or ~/.mesh."""
    return Path(os.environ.get("MESH_HOME") or DEFAULT_HOME).expanduser()


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ClientError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ClientError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientError(f"{path}: expected a mapping with 'api:' and 'token:'")
    for key in ("api", "token"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ClientError(f"{path}: {key}: expected a string")
    return data


def resolve_config(api: str | None, token: str | None) -> ClientConfig:
    """The API address and token: a flag beats the environment, which beats the config file."""
    path = mesh_home() / "config.yaml"
    file: dict[str, Any] | None = None

    def from_file() -> dict[str, Any]:
        nonlocal file
        if file is None:
            file = _read_config_file(path)
        return file

    if api:
        chosen, source = api, "--api"
    elif os.environ.get("MESH_API"):
        chosen, source = os.environ["MESH_API"], "MESH_API"
    elif from_file().get("api"):
        chosen, source = from_file()["api"], str(path)
    else:
        raise ClientError(_NO_API)
    chosen = chosen.strip().rstrip("/")
    if not chosen.startswith(("http://", "https://")):
        raise ClientError(
            f"{chosen!r} (from {source}) is not an HTTP address; "
            "write it as http://HOST:PORT/api/v1"
        )
    if token is None:
        token = os.environ.get("MESH_TOKEN") or from_file().get("token") or None
    return ClientConfig(api=chosen, token=token, source=source)


def split_job_id(job_id: str) -> tuple[str, str]:
    """(community, name) of ``community/name``; raises ClientError for anything else."""
    match = _JOB_ID_RE.fullmatch(job_id)
    if match is None:
        raise ClientError(
            f"{job_id!r} is not a job id: write community/name in lowercase letters, digits "
            "and '-', as `meshctl jobs` lists them"
        )
    return match.group(1), match.group(3)


# --- what watching jobs yields ------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """A job changed state."""

    job: str
    from_state: str | None
    to_state: str
    reason: str | None
    ts: float | None


@dataclass(frozen=True)
class LogLine:
    """A line a job wrote."""

    job: str
    seq: int
    ts: float | None
    line: str


@dataclass(frozen=True)
class Finished:
    """A job reached a terminal state (SUCCEEDED, FAILED or CANCELLED)."""

    job: str
    state: str
    reason: str | None


Event = Transition | LogLine | Finished


class MeshClient:
    """The mesh API over HTTP; one method per route. Use as a context manager, or call close()."""

    def __init__(self, config: ClientConfig, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        headers = {"Accept": "application/json"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        try:
            self._http = httpx.Client(base_url=config.api, timeout=timeout, headers=headers)
        except (httpx.InvalidURL, ValueError) as e:
            raise ClientError(f"{config.api!r} (from {config.source}) is not a URL: {e}") from None

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- transport -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | None] | None = None,
        body: Any = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        content = None
        headers = {}
        if body is not None:
            # default=str: YAML may hold dates; the API validates what it gets
            content = json.dumps(body, default=str).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            response = self._http.request(
                method, path, params=query, content=content, headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ClientError(self._unreachable(e)) from None
        except httpx.TimeoutException:
            raise ClientError(
                f"the mesh API at {self.config.api} did not answer within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as e:
            raise ClientError(f"talking to the mesh API at {self.config.api}: {e}") from None
        if response.is_error:
            raise ApiError.from_response(response)
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"the mesh API at {self.config.api} answered {method} {path} with something "
                "that is not JSON; is that address a mesh API (ending in /api/v1)?"
            ) from None

    def _unreachable(self, error: Exception) -> str:
        why = "connection refused" if "refused" in str(error).lower() else str(error) or "timeout"
        return (
            f"cannot reach the mesh API at {self.config.api} (from {self.config.source}): {why}; "
            "no mesh is running there.\n"
            "hint: `meshctl up` starts one on this machine; "
            "or pass --api / set MESH_API to the address of a running mesh"
        )

    @staticmethod
    def _job_path(job_id: str) -> str:
        community, name = split_job_id(job_id)
        return f"/jobs/{community}/{name}"

    # --- routes ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """GET /health (no token needed)."""
        result: dict[str, Any] = self._request("GET", "/health")
        return result

    def whoami(self) -> dict[str, Any]:
        """GET /whoami: the token's community, role and id."""
        result: dict[str, Any] = self._request("GET", "/whoami")
        return result

    def submit(
        self, document: dict[str, Any], files: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """POST /jobs with one job document as JSON; the new job (state QUEUED).

        `files`: for each local path the job names, what was uploaded for it
        ({"sha256": hex, "tree": bool}); sent as {"job": document, "files": files}.
        """
        body = {"job": document, "files": dict(files)} if files else document
        result: dict[str, Any] = self._request("POST", "/jobs", body=body)
        return result

    # --- models and artifacts ---------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        """The HTTP client (base URL and token set), for `scheduler.transfer`."""
        return self._http

    @property
    def auth_headers(self) -> dict[str, str]:
        """The Authorization header, for `scheduler.transfer`'s calls."""
        return {"Authorization": self._http.headers.get("Authorization", "")}

    def models(self, community: str | None = None) -> list[dict[str, Any]]:
        """GET /models: the latest version of every registered model."""
        result = self._request("GET", "/models", params={"community": community})
        models: list[dict[str, Any]] = result["models"]
        return models

    def model(self, name: str) -> dict[str, Any]:
        """GET /models/{community}/{name}: a model's latest version, with all its versions."""
        community, _, short = name.partition("/")
        if not community or not short or "/" in short:
            raise ClientError(f"{name!r} is not a model name: write community/name")
        result: dict[str, Any] = self._request("GET", f"/models/{community}/{short}")
        return result

    def register_model(
        self,
        name: str,
        sha256: str,
        kind: str = "base",
        base: str | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """POST /models: register an uploaded folder as a new version of `name`."""
        body = {"name": name, "sha256": sha256, "kind": kind, "base": base, "source": source}
        result: dict[str, Any] = self._request("POST", "/models", body=body)
        return result

    def jobs(self, community: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """GET /jobs: job summaries, optionally of one community or in one state."""
        result = self._request("GET", "/jobs", params={"community": community, "state": state})
        jobs: list[dict[str, Any]] = result["jobs"]
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{community}/{name}: the job object."""
        result: dict[str, Any] = self._request("GET", self._job_path(job_id))
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        """DELETE /jobs/{community}/{name}: the job object, state CANCELLED."""
        result: dict[str, Any] = self._request("DELETE", self._job_path(job_id))
        return result

    def logs(self, job_id: str, since: int | None = None) -> dict[str, Any]:
        """GET .../logs: {"lines": [{"seq", "ts", "line"}], "next", "state"} from seq `since`."""
        result: dict[str, Any] = self._request(
            "GET", self._job_path(job_id) + "/logs", params={"since": since}
        )
        return result

    def nodes(self) -> list[dict[str, Any]]:
        """GET /nodes."""
        nodes: list[dict[str, Any]] = self._request("GET", "/nodes")["nodes"]
        return nodes

    def audit(
        self, job: str | None = None, since: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """GET /audit: every record from seq `since`, following `more` page by page (`limit`)."""
        if job is not None:
            split_job_id(job)
        records: list[dict[str, Any]] = []
        while True:
            page = self._request(
                "GET", "/audit", params={"job": job, "since": since, "limit": limit}
            )
            got: list[dict[str, Any]] = page["records"]
            records += got
            if not page.get("more") or not got:
                return records
            since = int(got[-1]["seq"]) + 1

    def tokens(self) -> list[dict[str, Any]]:
        """GET /tokens (admin)."""
        tokens: list[dict[str, Any]] = self._request("GET", "/tokens")["tokens"]
        return tokens

    def create_token(self, community: str | None, role: str = "member") -> dict[str, Any]:
        """POST /tokens (admin): {"id", "token", "community", "role"}; the token is shown once."""
        result: dict[str, Any] = self._request(
            "POST", "/tokens", body={"community": community, "role": role}
        )
        return result

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """DELETE /tokens/{id} (admin)."""
        if not token_id or "/" in token_id:
            raise ClientError(f"{token_id!r} is not a token id; `meshctl token list` shows them")
        result: dict[str, Any] = self._request("DELETE", f"/tokens/{token_id}")
        return result

    # --- the OpenAI-compatible front (/v1) -------------------------------------------------

    @property
    def v1_url(self) -> str:
        """The /v1 front beside the API (the API is at <server>/api/v1)."""
        base = str(self._http.base_url).rstrip("/")
        return (base[: -len("/api/v1")] if base.endswith("/api/v1") else base) + "/v1"

    def served(self) -> list[dict[str, Any]]:
        """GET /v1/models: the models this token may call, with where their replicas run."""
        r = self._v1("GET", "/models")
        if r.status_code != 200:
            raise ClientError(f"GET {self.v1_url}/models: HTTP {r.status_code}: {r.text[:200]}")
        data: list[dict[str, Any]] = r.json().get("data", [])
        return data

    def complete(self, model: str, prompt: str, max_tokens: int = 1) -> dict[str, Any] | None:
        """POST /v1/completions; the answer, or None while the model does not answer (503)."""
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
        r = self._v1("POST", "/completions", body)
        if r.status_code in (502, 503, 504):
            return None
        if r.status_code != 200:
            raise ClientError(f"{model}: HTTP {r.status_code}: {r.text[:300]}")
        answer: dict[str, Any] = r.json()
        return answer

    def _v1(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            return self._http.request(method, self.v1_url + path, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ClientError(self._unreachable(e)) from None

    # --- waiting ---------------------------------------------------------------------------

    def watch(
        self,
        job_ids: list[str],
        *,
        logs: bool = False,
        shown: Mapping[str, int] | None = None,
        interval: float = POLL_INTERVAL_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[Event]:
        """Poll jobs until each is terminal: their new transitions, log lines and ends.

        `shown` counts, per job, the transitions already seen (those of the job object that
        `submit` returned); they are not yielded again. With `logs`, every line the job writes
        is yielded, and a finished job is followed until a poll brings no new line.
        """
        pending = list(dict.fromkeys(job_ids))
        seen = {job_id: (shown or {}).get(job_id, 0) for job_id in pending}
        since: dict[str, int | None] = {job_id: None for job_id in pending}
        while pending:
            for job_id in list(pending):
                job = self.job(job_id)
                transitions = job.get("transitions") or []
                for t in transitions[seen[job_id] :]:
                    yield Transition(job_id, t.get("from"), t["to"], t.get("reason"), t.get("ts"))
                seen[job_id] = len(transitions)
                done = job["state"] in TERMINAL_STATES
                while logs:
                    page = self.logs(job_id, since[job_id])
                    for line in page["lines"]:
                        yield LogLine(job_id, int(line["seq"]), line.get("ts"), line["line"])
                    since[job_id] = int(page["next"])
                    # a running job: one page a poll; a finished one: until nothing is new
                    if not done or not page["lines"]:
                        break
                if done:
                    pending.remove(job_id)
                    yield Finished(job_id, job["state"], job.get("reason"))
            if pending:
                sleep(interval)

    def all_logs(self, job_id: str) -> Iterator[LogLine]:
        """Every line a job has written so far, page by page."""
        since: int | None = None
        while True:
            page = self.logs(job_id, since)
            for line in page["lines"]:
                yield LogLine(job_id, int(line["seq"]), line.get("ts"), line["line"])
            if not page["lines"]:
                return
            since = int(page["next"])
