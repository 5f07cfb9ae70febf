"""The mesh's HTTP API (DESIGN.md "HTTP"): a FastAPI app served by Ray Serve at /api/v1.

Thin: it reads the bearer token and the request, asks the controller (which owns the store and
checks the token), and returns the controller's answer. Errors have one form:
{"error": {"code", "message", "hint"}}.
"""

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler import actuator
from scheduler.documents import MAX_FILE_BYTES, SpecError, load_documents_text
from scheduler.views import ApiError

MAX_BODY_BYTES = MAX_FILE_BYTES
RETRY_AFTER_S = 2

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


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class MeshAPI:
    def __init__(self) -> None:
        self._controller: Any = None

    async def _ask(self, request: Request, method: str, **kwargs: Any) -> JSONResponse:
        try:
            if self._controller is None:
                self._controller = actuator.controller()
            reply = await self._controller.call.remote(method, _token(request), **kwargs)
        except (RayActorError, ValueError):
            self._controller = None
            return _error(
                503, "unavailable", "the mesh controller is restarting", "retry in a few seconds"
            )
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
        return await self._ask(request, "submit", document=document)

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


def api_app() -> Any:
    return MeshAPI.bind()  # type: ignore[attr-defined]  # serve.deployment made it a Deployment
