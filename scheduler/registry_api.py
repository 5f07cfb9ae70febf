"""The controller's answers about artifacts and models (`/api/v1/artifacts`, `/api/v1/models`).

Mixed into `MeshController`. The API asks `artifact_access` before it moves any bytes to or from
the artifact store; models are listed, shown and registered here. Registering checks the folder's
manifest in the artifact store: a model is safetensors weights with its config, never pickles.
"""

from __future__ import annotations

import time
from typing import Any

from scheduler import actuator
from scheduler.jobio import check_folder, may_read, upload_community
from scheduler.spec import check_registry_name
from scheduler.store import Principal, Store
from scheduler.views import ApiError
from workloads.artifacts import ArtifactError, check_digest, parse_manifest

MAX_MANIFEST_BYTES = 16 * 2**20


def _digest(value: str) -> str:
    try:
        return check_digest(value)
    except ArtifactError as e:
        raise ApiError(400, "bad_request", str(e)) from None


class RegistryApi:
    store: Store

    def api_artifact_access(
        self,
        p: Principal,
        sha256: str,
        write: bool = False,
        community: str | None = None,
    ) -> tuple[int, Any]:
        digest = _digest(sha256)
        if write:
            owner = upload_community(p, community)
            self.store.grant([digest], owner, time.time())
            return 200, {"sha256": digest, "community": owner}
        if not may_read(self.store, p, digest):
            raise ApiError(
                404,
                "not_found",
                f"no artifact {digest[:12]} that this token may read",
                "job outputs belong to the job's community; registered models to everyone",
            )
        return 200, {"sha256": digest}

    def api_models(self, p: Principal, community: str | None = None) -> tuple[int, Any]:
        return 200, {"models": self.store.models(community)}

    def api_model(self, p: Principal, model: str) -> tuple[int, Any]:
        row = self.store.model(model)
        if row is None:
            raise ApiError(
                404, "not_found", f"no model {model}", "meshctl models list shows the models"
            )
        return 200, {**row, "versions": self.store.model_versions(model)}

    def api_register_model(
        self,
        p: Principal,
        name: str,
        sha256: str,
        kind: str = "base",
        base: str | None = None,
        source: str | None = None,
    ) -> tuple[int, Any]:
        try:
            check_registry_name(name)
        except ValueError as e:
            raise ApiError(400, "bad_request", str(e)) from None
        community = name.partition("/")[0]
        if not p.may_see(community):
            raise ApiError(
                403,
                "forbidden",
                f"this token belongs to community {p.community}, not {community}",
                "register models in your own community",
            )
        if kind not in ("base", "adapter"):
            raise ApiError(400, "bad_request", f"unknown model kind {kind!r}", "base or adapter")
        digest = _digest(sha256)
        if not may_read(self.store, p, digest):
            raise ApiError(404, "not_found", f"no artifact {digest[:12]} that this token may read")
        manifest = actuator.artifact_bytes(digest, MAX_MANIFEST_BYTES)
        if manifest is None:
            raise ApiError(
                422,
                "artifact_missing",
                f"the artifact store holds no folder {digest[:12]}",
                "upload the folder first (meshctl models import does both)",
            )
        try:
            files = parse_manifest(manifest)
        except ArtifactError as e:
            raise ApiError(422, "not_a_folder", f"artifact {digest[:12]}: {e}") from None
        check_folder(files, kind)
        provenance: dict[str, Any] = {
            "source": source,
            "imported_by": p.name,
            "files": len(files),
            "bytes": sum(int(f["size"]) for f in files),
        }
        if kind == "adapter":
            if base is None:
                raise ApiError(
                    400, "bad_request", "an adapter needs its base model", "pass base=NAME"
                )
            row = self.store.model(base)
            if row is None or row["kind"] != "base":
                raise ApiError(422, "model_not_found", f"no base model {base} in the registry")
            provenance["base_model"] = {"name": base, "sha256": row["sha256"]}
        registered = self.store.register_model(
            name=name,
            kind=kind,
            sha256=digest,
            files=[str(f["sha256"]) for f in files],
            base=base,
            provenance=provenance,
            now=time.time(),
            actor=p.name,
        )
        return 201, registered
