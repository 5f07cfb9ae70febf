"""The mesh's OpenAI-compatible front at /v1: one for every Service of the mesh.

`ray.serve.llm`'s `OpenAiIngress`, extended: it maps a model id to one deployment built with
it, and the mesh's Services come and go and run one Serve application per replica
(`workloads/serving.py`). This front reads the table of what serves where from the controller
(every TABLE_TTL_S), checks who may call a model, limits callers of public models, picks a
replica and streams its answer with `OpenAiIngress`'s own request handling.

- `model`: `community/name` (the Service) or `community/name:adapter`.
- Access: a `public` Service answers anyone; a `community` one needs a token of its community
  (401 without a token, 403 with another community's). Unknown models and adapters: 404.
- Callers of a public model who are not of its community get `rate_per_minute` requests with
  bursts of `burst`, per token (or per client address without one): 429 with Retry-After.
- Replicas: base-model requests go to the replica with the fewest requests in flight; an
  adapter's requests to the replica that rendezvous hashing gives it (so it stays loaded
  there), unless that replica has `ADAPTER_SPILL` more in flight than the least loaded.
  More than MAX_IN_FLIGHT per replica in flight: 503 with Retry-After.
- A replica that fails before its first byte (its node died, Serve lost it) is skipped for
  SKIP_S and the request goes to another; one that sends nothing in FIRST_BYTE_TIMEOUT_S fails
  the request (504) rather than hang.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from ray.llm._internal.serve.core.ingress.ingress import (
    OpenAiIngress,
    init,
    make_fastapi_ingress,
)
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)

from workloads.serving_replica import MAX_ONGOING_REQUESTS

FRONT_APP = "mesh-openai"
TABLE_TTL_S = 1.0
TOKEN_TTL_S = 10.0
SKIP_S = 15.0
FIRST_BYTE_TIMEOUT_S = 300.0
ADAPTER_SPILL = 8
MAX_IN_FLIGHT = 2 * MAX_ONGOING_REQUESTS
ATTEMPTS = 3
MAX_BUCKETS = 100_000  # rate-limit buckets kept before quiet callers' are dropped
GONE_CHECK_S = 0.5  # while a request waits for its first byte, how often its replica is checked
# a replica that fails with one of these before its first byte is skipped, the request retried
REPLICA_GONE = (
    RayActorError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    BackPressureError,
    RayServeException,
)
# the Service and adapter of the request being served (set by _serve, read by _get_response)
_ROUTE: contextvars.ContextVar[tuple[Served, str | None]] = contextvars.ContextVar("mesh_route")


def _error(status: int, code: str, message: str, retry_after: float | None = None) -> Response:
    kind = {
        401: "authentication_error",
        403: "permission_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status_code=status,
        headers=headers,
    )


class ReplicaLeft(Exception):
    """The replica a request waits on left the table."""


class Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass
class Bucket:
    """A token bucket: `rate` per second, up to `burst` at once."""

    tokens: float
    stamp: float

    def take(self, rate: float, burst: float, now: float) -> float:
        """0 when a request may go now, else the seconds until it may."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate


@dataclass
class Replica:
    app: str
    node: str
    in_flight: int = 0
    skip_until: float = 0.0
    gone: bool = False  # the controller no longer lists it (its node died, it was removed)


@dataclass
class Served:
    """One Service as the front sees it."""

    model: str
    community: str
    access: str
    adapters: list[str]
    replicas: list[Replica] = field(default_factory=list)
    created: float = 0.0


def pick(replicas: list[Replica], adapter: str | None, now: float) -> Replica | None:
    """The replica for a request (see the module docstring); None when none may take it."""
    live = [r for r in replicas if r.skip_until <= now and r.in_flight < MAX_IN_FLIGHT]
    if not live:
        return None
    least = min(live, key=lambda r: (r.in_flight, r.app))
    if adapter is None:
        return least
    home = max(live, key=lambda r: hashlib.sha256(f"{adapter}|{r.app}".encode()).digest())
    return home if home.in_flight - least.in_flight < ADAPTER_SPILL else least


class MeshFront(OpenAiIngress):
    """The /v1 ingress: see the module docstring."""

    def __init__(self) -> None:
        super().__init__({}, {})
        self._controller: Any = None
        self._served: dict[str, Served] = {}
        self._table_at = -math.inf
        self._limits = {"rate_per_minute": 600.0, "burst": 60.0}
        self._who: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._buckets: dict[str, Bucket] = {}
        self._handles: dict[tuple[str, str], Any] = {}  # (app, multiplexed id) -> handle
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Future[None] | None = None

    # --- what serves where -------------------------------------------------------------------

    async def _ask(self, method: str, *args: Any) -> Any:
        if self._controller is None:
            from scheduler.actuator import controller

            self._controller = controller()
        try:
            return await getattr(self._controller, method).remote(*args)
        except RayActorError:
            self._controller = None
            raise

    async def _table(self, fresh: bool = False) -> dict[str, Served]:
        """What serves where. Older than TABLE_TTL_S, it is refreshed in the background and
        requests go on with what is known; `fresh` (a model not known yet) waits for it."""
        if time.monotonic() - self._table_at >= TABLE_TTL_S:
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.ensure_future(self._refresh())
            if fresh or self._table_at == -math.inf:
                await asyncio.shield(self._refreshing)
        return self._served

    async def _refresh(self) -> None:
        async with self._lock:
            try:
                load = {m: sum(r.in_flight for r in x.replicas) for m, x in self._served.items()}
                table = await self._ask("serving_table", load)
            except (RayActorError, ValueError):
                return  # the controller restarts: serve from what was known
            self._limits = table["limits"]
            served: dict[str, Served] = {}
            for entry in table["services"]:
                old = self._served.get(entry["model"])
                known = {r.app: r for r in old.replicas} if old else {}
                served[entry["model"]] = Served(
                    model=entry["model"],
                    community=entry["community"],
                    access=entry["access"],
                    adapters=list(entry["adapters"]),
                    replicas=[
                        known.get(r["app"]) or Replica(app=r["app"], node=r["node"])
                        for r in entry["replicas"]
                    ],
                    created=entry["created"],
                )
            kept = {r.app for s in served.values() for r in s.replicas}
            for old in self._served.values():
                for r in old.replicas:
                    r.gone = r.app not in kept
            self._served = served
            self._table_at = time.monotonic()

    async def _caller(self, request: Request) -> tuple[dict[str, Any] | None, bool]:
        """(the token's principal {"name", "community", "role"}, whether a token was sent that
        is not valid). Without a valid token a caller is anonymous: public models answer it
        (clients such as openai's always send some key)."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        if not token:
            return None, False
        now = time.monotonic()
        cached = self._who.get(token)
        if cached is None or now - cached[0] > TOKEN_TTL_S:
            try:
                reply = await self._ask("call", "whoami", token)
            except (RayActorError, ValueError):
                raise Refused(
                    _error(503, "unavailable", "the mesh controller is restarting", 5)
                ) from None
            cached = (now, reply["body"] if reply["status"] == 200 else None)
            if len(self._who) > 10_000:
                self._who.clear()
            self._who[token] = cached
        return cached[1], cached[1] is None

    @staticmethod
    def _member(who: dict[str, Any] | None, community: str) -> bool:
        return who is not None and (who.get("role") == "admin" or who.get("community") == community)

    async def _admit(self, request: Request, model: str | None) -> tuple[Served, str | None]:
        """The Service and adapter a request names, once the caller may use it; else Refused."""
        if not model:
            raise Refused(_error(400, "model_required", "name a model: GET /v1/models lists them"))
        base, _, adapter = model.partition(":")
        served = (await self._table()).get(base) or (await self._table(fresh=True)).get(base)
        who, invalid = await self._caller(request)
        member = served is not None and self._member(who, served.community)
        if served is None or (served.access != "public" and not member):
            if served is not None and who is None:
                raise Refused(
                    _error(
                        401,
                        "invalid_token" if invalid else "unauthorized",
                        ("this bearer token is not valid; " if invalid else "")
                        + f"{base} serves members of {served.community} only:"
                        " send a bearer token of that community",
                    )
                )
            if served is not None:
                raise Refused(
                    _error(403, "forbidden", f"{base} serves members of {served.community} only")
                )
            raise Refused(
                _error(
                    404,
                    "model_not_found",
                    f"no model {base} is served here; GET /v1/models lists the models",
                )
            )
        if adapter and adapter not in served.adapters:
            raise Refused(
                _error(
                    404,
                    "model_not_found",
                    f"{base} serves no adapter {adapter!r}; it serves "
                    + (", ".join(f"{base}:{a}" for a in served.adapters) or "none"),
                )
            )
        if not member:
            address = request.client.host if request.client else "?"
            key = f"token:{who['name']}" if who else f"addr:{address}"
            now = time.monotonic()
            if len(self._buckets) > MAX_BUCKETS:  # forget callers quiet for a minute
                self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < 60}
            bucket = self._buckets.setdefault(key, Bucket(self._limits["burst"], now))
            wait = bucket.take(self._limits["rate_per_minute"] / 60.0, self._limits["burst"], now)
            if wait:
                raise Refused(
                    _error(
                        429,
                        "rate_limited",
                        f"more than {self._limits['rate_per_minute']:g} "
                        f"requests a minute to {base}",
                        wait,
                    )
                )
        if not served.replicas:
            raise Refused(_error(503, "starting", f"{base} has no replica serving yet", 10))
        return served, adapter or None

    # --- OpenAiIngress, extended --------------------------------------------------------------

    async def _get_model_id(self, model: str | None) -> str:
        return str(model)

    async def _get_response(  # type: ignore[override]
        self, *, body: Any, call_method: str, raw_request: Request | None = None
    ) -> AsyncIterator[Any]:
        served, adapter = _ROUTE.get()
        tried: set[str] = set()
        for _ in range(ATTEMPTS):
            now = time.monotonic()
            replica = pick([r for r in served.replicas if r.app not in tried], adapter, now)
            if replica is None:
                break
            tried.add(replica.app)
            replica.in_flight += 1
            try:
                try:
                    handle = self._handle(replica.app, body.model if adapter else "")
                except RayServeException:  # its application is gone
                    replica.skip_until = time.monotonic() + SKIP_S
                    continue
                stream = getattr(handle, call_method).remote(body, None)
                try:
                    first = await self._first(stream, replica)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    replica.skip_until = time.monotonic() + SKIP_S
                    raise Refused(
                        _error(
                            504,
                            "timeout",
                            f"no answer from {served.model} in {FIRST_BYTE_TIMEOUT_S:g} s",
                        )
                    ) from None
                except (*REPLICA_GONE, ReplicaLeft):
                    replica.skip_until = time.monotonic() + SKIP_S
                    continue
                yield first
                async for item in stream:
                    yield item
                return
            finally:
                replica.in_flight -= 1
        raise Refused(
            _error(503, "overloaded", f"every replica of {served.model} is busy or down", 1)
        )

    async def _first(self, stream: Any, replica: Replica) -> Any:
        """The stream's first item; ReplicaLeft as soon as the controller drops the replica
        (a pinned replica whose node died never answers: Serve waits for it forever)."""
        task = asyncio.ensure_future(stream.__anext__())
        deadline = time.monotonic() + FIRST_BYTE_TIMEOUT_S
        while True:
            done, _ = await asyncio.wait({task}, timeout=GONE_CHECK_S)
            if done:
                return task.result()
            await self._table()
            if replica.gone or time.monotonic() > deadline:
                task.cancel()
                stream.cancel()
                if replica.gone:
                    raise ReplicaLeft(replica.app)
                raise TimeoutError

    def _handle(self, app: str, multiplexed: str) -> Any:
        """A streaming handle to a replica's application, kept (handles are costly to make)."""
        key = (app, multiplexed)
        if key not in self._handles:
            if len(self._handles) > 1024:
                self._handles.clear()
            self._handles[key] = serve.get_app_handle(app).options(
                stream=True, multiplexed_model_id=multiplexed
            )
        return self._handles[key]

    async def _serve(self, body: Any, call_method: str, request: Request) -> Response:
        try:
            served, adapter = await self._admit(request, body.model)
            if sum(r.in_flight for r in served.replicas) >= MAX_IN_FLIGHT * len(served.replicas):
                raise Refused(_error(503, "overloaded", f"{served.model} is at capacity", 1))
            _ROUTE.set((served, adapter))
            response: Response = await self._process_llm_request(
                body, call_method=call_method, raw_request=request
            )
            return response
        except Refused as r:
            return r.response

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await self._serve(body, "completions", request)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        return await self._serve(body, "chat", request)

    async def list_models(self, request: Request) -> ModelList:
        """The models this caller may use: public ones and its community's; adapters too."""
        try:
            who, _ = await self._caller(request)
        except Refused:
            who = None
        cards = []
        for s in sorted((await self._table()).values(), key=lambda s: s.model):
            if s.access != "public" and not self._member(who, s.community):
                continue
            for model in [s.model, *(f"{s.model}:{a}" for a in s.adapters)]:
                cards.append(
                    ModelCard(
                        id=model,
                        object="model",
                        owned_by=s.community,
                        created=int(s.created),
                        permission=[],
                        metadata={
                            "access": s.access,
                            "replicas": len(s.replicas),
                            "nodes": [r.node for r in s.replicas],
                        },
                    )
                )
        return ModelList(data=cards)

    async def get_model(self, model: str, request: Request) -> Any:
        model = model.lstrip("/")
        try:
            await self._admit(request, model)
        except Refused as r:
            return r.response
        for card in (await self.list_models(request)).data:
            if card.id == model:
                return card
        return _error(404, "model_not_found", f"no model {model}")


ENDPOINTS = {
    "list_models": lambda app: app.get("/v1/models"),
    "get_model": lambda app: app.get("/v1/models/{model:path}"),
    "completions": lambda app: app.post("/v1/completions"),
    "chat": lambda app: app.post("/v1/chat/completions"),
}


async def _bad_body(request: Request, exc: RequestValidationError) -> Response:
    """A body that is not the request's schema: 400 naming the field (Ray's own handler
    echoes the raw input and fails on bodies that are not JSON)."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ("body",)))
    what = first.get("msg", "invalid request")
    return _error(400, "invalid_request", f"{where}: {what}")


def front_app() -> Any:
    """The Serve application of the front (route prefix "/": its routes are /v1/...)."""
    app = init()
    app.add_exception_handler(RequestValidationError, _bad_body)  # type: ignore[arg-type]
    ingress = make_fastapi_ingress(MeshFront, endpoint_map=ENDPOINTS, app=app)
    return serve.deployment(
        ingress,
        name="MeshFront",
        num_replicas=1,
        max_ongoing_requests=4096,
        ray_actor_options={"num_cpus": 0},
    ).bind()  # type: ignore[attr-defined]  # serve.deployment(cls, ...) is a Deployment
