"""The controller's API answers that read the store or manage tokens, and its one entry point.

Mixed into `MeshController`; the answers that act on the loop (submit, cancel, nodes) stay there.
`call` authenticates the bearer token and dispatches to `api_<method>`; errors come back in the
API's form, {"error": {"code", "message", "hint"}}, with their HTTP status.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from scheduler.registry_api import RegistryApi
from scheduler.store import JobRow, Principal, State, Store, StoreError
from scheduler.views import STORE_STATUS, ApiError, job_view

LOCKED = frozenset({"cancel"})  # API methods that change what the loop works on


class ControllerApi(RegistryApi):
    store: Store
    _lock: threading.RLock

    def _auth(self, token: str | None) -> Principal:
        p = self.store.authenticate(token) if token else None
        if p is None:
            raise ApiError(
                401,
                "unauthorized",
                "a valid bearer token is required" if token else "no bearer token",
                "pass --token or set MESH_TOKEN; meshctl up prints the admin token",
            )
        return p

    def _own(self, p: Principal, job_id: str) -> JobRow:
        row = self.store.job(job_id)
        if row is None:
            raise ApiError(404, "not_found", f"no job {job_id}", "meshctl jobs lists the jobs")
        if not p.may_see(row.community):
            raise ApiError(
                403,
                "forbidden",
                f"job {job_id} belongs to community {row.community}",
                "a member token sees only its own community's jobs",
            )
        return row

    def call(self, method: str, token: str | None, **kwargs: Any) -> dict[str, Any]:
        """The API's one entry point: {"status": N, "body": ...}; errors in the API's form."""
        try:
            if method == "health":
                return {"status": 200, "body": {"ok": True}}
            p = self._auth(token)
            handler = getattr(self, f"api_{method}")
            if method in LOCKED:  # it changes what the loop works on
                with self._lock:
                    status, body = handler(p, **kwargs)
            else:  # the store serialises its own writes; these wait for no round
                status, body = handler(p, **kwargs)
            return {"status": status, "body": body}
        except ApiError as e:
            return {"status": e.status, "body": e.body()}
        except StoreError as e:
            error = ApiError(STORE_STATUS.get(e.code, 400), e.code, e.message, e.hint)
            return {"status": error.status, "body": error.body()}

    def api_whoami(self, p: Principal) -> tuple[int, Any]:
        return 200, {"community": p.community, "role": p.role, "token_id": p.token_id}

    def api_jobs(
        self, p: Principal, community: str | None = None, state: str | None = None
    ) -> tuple[int, Any]:
        if not p.admin:
            if community is not None and community != p.community:
                raise ApiError(403, "forbidden", f"a member of {p.community} sees only its jobs")
            community = p.community
        states = None
        if state is not None:
            try:
                states = [State(state.upper())]
            except ValueError:
                raise ApiError(
                    400,
                    "bad_request",
                    f"unknown state {state!r}",
                    "one of " + ", ".join(s.value for s in State),
                ) from None
        rows = self.store.jobs(states=states, community=community)
        return 200, {"jobs": [r.summary() for r in rows]}

    def api_job(self, p: Principal, job_id: str) -> tuple[int, Any]:
        return 200, job_view(self._own(p, job_id), self.store)

    def api_logs(self, p: Principal, job_id: str, since: int = 1) -> tuple[int, Any]:
        row = self._own(p, job_id)
        lines = self.store.logs(job_id, since=max(1, since))
        nxt = lines[-1]["seq"] + 1 if lines else max(1, since)
        return 200, {"lines": lines, "next": nxt, "state": row.state.value}

    def api_audit(
        self, p: Principal, job: str | None = None, since: int = 1, limit: int = 10_000
    ) -> tuple[int, Any]:
        limit = max(1, min(limit, 100_000))
        records = self.store.audit(job=job, since=max(1, since), limit=limit + 1)
        more = len(records) > limit
        return 200, {"records": records[:limit], "more": more, "head": self.store.audit_head()}

    def _admin(self, p: Principal) -> None:
        if not p.admin:
            raise ApiError(403, "forbidden", "only an admin token manages tokens")

    def api_tokens(self, p: Principal) -> tuple[int, Any]:
        self._admin(p)
        return 200, {"tokens": self.store.tokens()}

    def api_create_token(
        self, p: Principal, community: str | None = None, role: str = "member"
    ) -> tuple[int, Any]:
        self._admin(p)
        if role not in ("member", "admin"):
            raise ApiError(400, "bad_request", f"unknown role {role!r}", "member or admin")
        if role == "member" and not community:
            raise ApiError(400, "bad_request", "a member token needs a community")
        token = "mesh_" + secrets.token_urlsafe(32)
        token_id = self.store.add_token(
            token, community=community, role=role, now=time.time(), actor=p.name
        )
        return 201, {"id": token_id, "token": token, "community": community, "role": role}

    def api_revoke_token(self, p: Principal, token_id: str) -> tuple[int, Any]:
        self._admin(p)
        self.store.revoke_token(token_id, time.time(), p.name)
        return 200, {"id": token_id, "revoked": True}
