"""The mesh's HTTP API (DESIGN.md "HTTP"): a FastAPI app served by Ray Serve at /api/v1.

Thin: it reads the bearer token and the request, asks the controller (which owns the store and
checks the token), and returns the controller's answer. Errors have one form:
{"error": {"code", "message", "hint"}}.

Artifacts (/artifacts) are the exception to "the controller answers": once the controller has
allowed a token a blob (`artifact_access`), bytes go between the client and the artifact store
actor (workloads/artifacts.py) directly, in pieces of at most 8 MiB, never through the controller.
"""

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler import actuator
from scheduler.documents import MAX_FILE_BYTES, SpecError, load_documents_text
from scheduler.views import ApiError
from workloads import artifacts
from workloads.artifacts import CHUNK_BYTES, MAX_WRITE_BYTES, ArtifactError, check_digest

MAX_BODY_BYTES = MAX_FILE_BYTES
RETRY_AFTER_S = 2
# The HTTP status of each ArtifactError code.
ARTIFACT_STATUS = {
    "bad_request": 400,
    "not_found": 404,
    "offset_mismatch": 409,
    "incomplete": 409,
    "too_large": 413,
    "hash_mismatch": 422,
    "unavailable": 503,
}
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")

app = FastAPI(title="Mesh API", version="v1", docs_url="/docs", redoc_url=None)


def _error(status: int, code: str, message: str, hint: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return JSONResponse(ApiError(status, code, message, hint).body(), status, headers=headers)


@app.exception_handler(RequestValidationError)
async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
    )
    return _error(400, "bad_request", problems, "see the API reference in the README")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return _error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")


def _api_error(e: ApiError) -> JSONResponse:
    return _error(e.status, e.code, e.message, e.hint)


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def _read_job(request: Request) -> Any:
    """The one job document of a request body: JSON, or YAML text (bounded, safe)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"the body is {length} bytes; the limit is 1 MiB")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"the body is {len(body)} bytes; the limit is 1 MiB")
    text = body.decode("utf-8", errors="replace")
    if "json" in request.headers.get("content-type", ""):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ApiError(400, "invalid_spec", f"job: not valid JSON: {e}") from None
    try:
        documents = load_documents_text(text, source="job")
    except SpecError as e:
        raise ApiError(400, "invalid_spec", str(e)) from None
    if len(documents) != 1:
        raise ApiError(
            400,
            "invalid_spec",
            f"job: the body holds {len(documents)} documents; send one job per request",
            "meshctl submit sends each document of a file on its own",
        )
    return documents[0]


async def _read_json(request: Request, limit: int = 64 * 1024) -> Any:
    body = await _read_body(request, limit)
    try:
        return json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "bad_request", f"the body is not JSON: {e}") from None


def _check_length(request: Request, limit: int) -> None:
    """Refuse with 413 a body whose Content-Length passes `limit` bytes, before reading it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> ApiError:
    shown = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 1024} KiB"
    return ApiError(
        413,
        "too_large",
        f"the body is over {shown} ({limit} bytes), the limit of this route",
        f"send at most {shown} a request (an upload: one PUT per piece)",
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    _check_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def byte_range(header: str | None, size: int) -> tuple[int, int, bool] | None:
    """(start, end (exclusive), partial) of a `Range: bytes=a-b` header: the whole blob, not
    partial, when there is no header or it is not one valid range (RFC 9110: ignored); None when
    the range cannot be satisfied (416)."""
    match = _RANGE_RE.fullmatch((header or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return 0, size, False
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        if int(last) == 0 or size == 0:
            return None
        return max(0, size - int(last)), size, True
    start = int(first)
    if last != "" and int(last) < start:
        return 0, size, False
    if start >= size:
        return None
    return start, size if last == "" else min(size, int(last) + 1), True


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class MeshAPI:
    def __init__(self) -> None:
        self._controller: Any = None
        self._artifacts: Any = None

    async def _call(self, request: Request, method: str, **kwargs: Any) -> dict[str, Any]:
        """The controller's {"status", "body"}; ApiError 503 while it restarts."""
        try:
            if self._controller is None:
                self._controller = actuator.controller()
            reply: dict[str, Any] = await self._controller.call.remote(
                method, _token(request), **kwargs
            )
        except (RayActorError, ValueError):
            self._controller = None
            raise ApiError(
                503, "unavailable", "the mesh controller is restarting", "retry in a few seconds"
            ) from None
        return reply

    async def _ask(self, request: Request, method: str, **kwargs: Any) -> JSONResponse:
        try:
            reply = await self._call(request, method, **kwargs)
        except ApiError as e:
            return _api_error(e)
        return JSONResponse(reply["body"], reply["status"])

    @app.get("/health")
    async def health(self, request: Request) -> JSONResponse:
        return await self._ask(request, "health")

    @app.get("/whoami")
    async def whoami(self, request: Request) -> JSONResponse:
        return await self._ask(request, "whoami")

    @app.post("/jobs")
    async def submit(self, request: Request) -> JSONResponse:
        try:
            document = await _read_job(request)
        except ApiError as e:
            return JSONResponse(e.body(), e.status)
        files = None
        if isinstance(document, dict) and set(document) == {"job", "files"}:
            # {"job": ..., "files": {path as written: {"sha256", "tree"}}}: meshctl uploaded them
            document, files = document["job"], document["files"]
            if not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()
            ):
                return _error(
                    400,
                    "bad_request",
                    'files: expected {"PATH": {"sha256": HEX, "tree": BOOL}, ...}',
                    "the hash of each file or folder uploaded to /api/v1/artifacts",
                )
        return await self._ask(request, "submit", document=document, files=files)

    @app.get("/jobs")
    async def jobs(
        self, request: Request, community: str | None = None, state: str | None = None
    ) -> JSONResponse:
        return await self._ask(request, "jobs", community=community, state=state)

    @app.get("/jobs/{community}/{name}")
    async def job(self, request: Request, community: str, name: str) -> JSONResponse:
        return await self._ask(request, "job", job_id=f"{community}/{name}")

    @app.delete("/jobs/{community}/{name}")
    async def cancel(self, request: Request, community: str, name: str) -> JSONResponse:
        return await self._ask(request, "cancel", job_id=f"{community}/{name}")

    @app.get("/jobs/{community}/{name}/logs")
    async def logs(
        self, request: Request, community: str, name: str, since: int = 1
    ) -> JSONResponse:
        return await self._ask(request, "logs", job_id=f"{community}/{name}", since=since)

    @app.get("/nodes")
    async def nodes(self, request: Request) -> JSONResponse:
        return await self._ask(request, "nodes")

    @app.get("/audit")
    async def audit(
        self, request: Request, job: str | None = None, since: int = 1, limit: int = 10_000
    ) -> JSONResponse:
        return await self._ask(request, "audit", job=job, since=since, limit=limit)

    @app.get("/tokens")
    async def tokens(self, request: Request) -> JSONResponse:
        return await self._ask(request, "tokens")

    @app.post("/tokens")
    async def create_token(self, request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as e:
            return _error(400, "bad_request", f"the body is not JSON: {e}")
        if not isinstance(body, dict) or set(body) - {"community", "role"}:
            return _error(400, "bad_request", 'expected {"community": ..., "role": ...}')
        return await self._ask(
            request,
            "create_token",
            community=body.get("community"),
            role=body.get("role", "member"),
        )

    @app.delete("/tokens/{token_id}")
    async def revoke_token(self, request: Request, token_id: str) -> JSONResponse:
        return await self._ask(request, "revoke_token", token_id=token_id)

    # --- models: the registry lives in the controller's store ------------------------------

    @app.get("/models")
    async def models(self, request: Request, community: str | None = None) -> JSONResponse:
        return await self._ask(request, "models", community=community)

    @app.get("/models/{community}/{name}")
    async def model(self, request: Request, community: str, name: str) -> JSONResponse:
        return await self._ask(request, "model", model=f"{community}/{name}")

    @app.post("/models")
    async def register_model(self, request: Request) -> JSONResponse:
        try:
            body = await _read_json(request)
        except ApiError as e:
            return _api_error(e)
        required, optional = {"name", "sha256", "kind"}, {"base", "source"}
        if not isinstance(body, dict) or not required <= set(body) <= required | optional:
            return _error(
                400,
                "bad_request",
                'expected {"name": ..., "sha256": ..., "kind": "base" or "adapter", '
                '"base": ... (adapters), "source": ... (optional)}',
            )
        return await self._ask(request, "register_model", **body)

    # --- artifacts: the controller allows, the store actor moves the bytes -----------------

    async def _allow(
        self, request: Request, sha256: str, *, write: bool, community: str | None = None
    ) -> None:
        """Raise ApiError unless the controller lets this token read (or write) blob `sha256`."""
        check = await self._call(
            request, "artifact_access", sha256=sha256, write=write, community=community
        )
        if check["status"] != 200:
            error = (check["body"] or {}).get("error") or {}
            raise ApiError(
                check["status"],
                str(error.get("code", "forbidden")),
                str(error.get("message", "not allowed")),
                error.get("hint"),
            )

    async def _store(self, method: str, *args: Any) -> Any:
        """A call on the artifact store actor; its ArtifactError becomes the matching ApiError."""
        try:
            if self._artifacts is None:
                self._artifacts = artifacts.store_actor()
        except ValueError:
            raise ApiError(
                503,
                "unavailable",
                "the artifact store is not running",
                "restart the mesh services (meshctl up)",
            ) from None
        try:
            return await getattr(self._artifacts, method).remote(*args)
        except RayActorError:
            self._artifacts = None
            raise ApiError(
                503, "unavailable", "the artifact store is restarting", "retry in a few seconds"
            ) from None
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if not isinstance(cause, ArtifactError):
                raise
            status = ARTIFACT_STATUS.get(cause.code, 400)
            raise ApiError(status, cause.code, str(cause), cause.hint) from None

    async def _blob(self, request: Request, sha256: str) -> int:
        """The size of a blob this token may read; ApiError otherwise."""
        try:
            check_digest(sha256)
        except ArtifactError as e:
            raise ApiError(400, "bad_request", str(e)) from None
        await self._allow(request, sha256, write=False)
        stat = await self._store("stat", sha256)
        if stat is None:
            raise ApiError(
                404,
                "not_found",
                f"no artifact {sha256} on this mesh",
                "upload it first; `meshctl submit` uploads the files a job names",
            )
        return int(stat["size"])

    @app.post("/artifacts/uploads")
    async def upload_begin(self, request: Request) -> JSONResponse:
        try:
            body = await _read_json(request)
            if (
                not isinstance(body, dict)
                or not {"sha256", "size"} <= set(body) <= {"sha256", "size", "community"}
                or not isinstance(body.get("community", ""), str)
            ):
                raise ApiError(
                    400,
                    "bad_request",
                    'expected {"sha256": 64 hex digits, "size": bytes, '
                    '"community": ... (optional)}',
                )
            try:
                sha256 = check_digest(body["sha256"])
            except ArtifactError as e:
                raise ApiError(400, "bad_request", str(e)) from None
            await self._allow(request, sha256, write=True, community=body.get("community"))
            began = await self._store("begin", sha256, body["size"])
        except ApiError as e:
            return _api_error(e)
        return JSONResponse({"sha256": sha256, "size": body["size"], **began})

    @app.put("/artifacts/uploads/{sha256}")
    async def upload_write(self, request: Request, sha256: str, offset: int) -> JSONResponse:
        try:
            try:
                check_digest(sha256)
            except ArtifactError as e:
                raise ApiError(400, "bad_request", str(e)) from None
            _check_length(request, MAX_WRITE_BYTES)
            await self._allow(request, sha256, write=True)
            data = await _read_body(request, MAX_WRITE_BYTES)
            new_offset = await self._store("write", sha256, offset, data)
        except ApiError as e:
            return _api_error(e)
        return JSONResponse({"offset": new_offset})

    @app.post("/artifacts/uploads/{sha256}/finish")
    async def upload_finish(self, request: Request, sha256: str) -> JSONResponse:
        try:
            try:
                check_digest(sha256)
            except ArtifactError as e:
                raise ApiError(400, "bad_request", str(e)) from None
            await self._allow(request, sha256, write=True)
            done = await self._store("finish", sha256)
        except ApiError as e:
            return _api_error(e)
        return JSONResponse(done, 201)

    @app.head("/artifacts/{sha256}")
    async def artifact_size(self, request: Request, sha256: str) -> Response:
        try:
            size = await self._blob(request, sha256)
        except ApiError as e:
            return _api_error(e)
        headers = {"Content-Length": str(size), "Accept-Ranges": "bytes", "ETag": f'"{sha256}"'}
        return Response(status_code=200, headers=headers)

    @app.get("/artifacts/{sha256}")
    async def download(self, request: Request, sha256: str) -> Response:
        try:
            size = await self._blob(request, sha256)
        except ApiError as e:
            return _api_error(e)
        span = byte_range(request.headers.get("range"), size)
        if span is None:
            error = ApiError(
                416,
                "bad_range",
                f"{request.headers.get('range')} is not within the blob's {size} bytes",
                "ask for bytes from 0 to size - 1",
            )
            return JSONResponse(error.body(), 416, headers={"Content-Range": f"bytes */{size}"})
        start, end, partial = span
        headers = {
            "Content-Length": str(end - start),
            "Accept-Ranges": "bytes",
            "ETag": f'"{sha256}"',
        }
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        store = self._artifacts

        async def body() -> AsyncIterator[bytes]:
            offset = start
            while offset < end:
                data = await store.read.remote(sha256, offset, min(CHUNK_BYTES, end - offset))
                if not data:
                    return  # the client sees fewer bytes than promised, and resumes
                offset += len(data)
                yield data

        return StreamingResponse(
            body(), 206 if partial else 200, headers, media_type="application/octet-stream"
        )


def api_app() -> Any:
    return MeshAPI.bind()  # type: ignore[attr-defined]  # serve.deployment made it a Deployment
