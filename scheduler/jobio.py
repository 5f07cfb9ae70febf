"""What a job reads and what it leaves: inputs pinned at submission, results kept at the end.

At submission every model a job names is pinned to the version the registry holds then, and every
file or folder to its SHA-256 in the artifact store (uploaded by `meshctl submit`), so the job
reads exactly what was checked, wherever it is placed and however often it is re-placed. At the
end, a FineTune's adapter is registered with its provenance and a job's outputs become readable
by its community. The artifact store is asked whether blobs exist through `missing`, a callable
the controller passes in (the actuator's), so this module makes no Ray call itself.
"""

from __future__ import annotations

import difflib
import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from scheduler.registry import PUBLIC
from scheduler.spec import JobSpec, artifact_digest, is_local_path
from scheduler.store import JobRow, Principal, Store
from scheduler.views import ApiError

ADMIN_ONLY = "@admin"  # the readers of what an admin uploads without naming a community
WEIGHT_SUFFIXES = (".safetensors",)
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack")

Missing = Callable[[Sequence[str]], list[str]]


def may_read(store: Store, p: Principal, digest: str) -> bool:
    if p.admin:
        return True
    readers = store.readers(digest)
    return PUBLIC in readers or (p.community is not None and p.community in readers)


def upload_community(p: Principal, community: str | None) -> str:
    """Whose an upload is: the member's community, or the one an admin names."""
    if p.admin:
        return community or ADMIN_ONLY
    if community is not None and community != p.community:
        raise ApiError(
            403,
            "forbidden",
            f"this token belongs to community {p.community}, not {community}",
            "upload into your own community",
        )
    assert p.community is not None
    return p.community


def _model_ref(store: Store, ref: str, kind: str, where: str) -> dict[str, Any]:
    row = store.model(ref)
    if row is None:
        close = difflib.get_close_matches(ref, list(store.model_names()), n=3)
        raise ApiError(
            422,
            "model_not_found",
            f"{where}: no model {ref} in the registry",
            (f"did you mean {', '.join(close)}? " if close else "")
            + "meshctl models list shows the models; meshctl models import PATH adds one",
        )
    if row["kind"] != kind:
        raise ApiError(
            422,
            "wrong_model_kind",
            f"{where}: {ref} is a {row['kind']}, not a {kind}",
            "a base model goes in base_model/model, a LoRA adapter in adapter",
        )
    return {
        "ref": ref,
        "name": ref,
        "version": row["version"],
        "sha256": row["sha256"],
        "tree": True,
        "kind": row["kind"],
        "base_sha256": (row["provenance"].get("base_model") or {}).get("sha256"),
    }


def _upload_ref(
    ref: str, files: Mapping[str, Mapping[str, Any]], where: str, tree: bool
) -> dict[str, Any]:
    digest = artifact_digest(ref)
    if digest is not None:
        return {"ref": ref, "sha256": digest, "tree": tree, "label": ref}
    uploaded = files.get(ref)
    if uploaded is None:
        raise ApiError(
            400,
            "not_uploaded",
            f"{where}: {ref!r} is a path on your machine, which the mesh cannot read",
            "meshctl submit uploads the files a job names; through the API, upload it to "
            "/api/v1/artifacts and pass its hash in the request's files map",
        )
    label = posixpath.basename(ref.rstrip("/")) or ref
    return {
        "ref": ref,
        "sha256": str(uploaded["sha256"]),
        "tree": bool(uploaded.get("tree", tree)),
        "label": label,
    }


def _model_input(
    store: Store, ref: str, files: Mapping[str, Mapping[str, Any]], where: str
) -> dict[str, Any]:
    if is_local_path(ref) or artifact_digest(ref):
        found = _upload_ref(ref, files, where, tree=True)
        if not found["tree"]:
            raise ApiError(400, "bad_request", f"{where}: a model is a folder, not a file")
        return found
    return _model_ref(store, ref, "base", where)


def resolve_inputs(
    store: Store,
    p: Principal,
    spec: JobSpec,
    files: Mapping[str, Mapping[str, Any]],
    missing: Missing,
) -> dict[str, Any]:
    """What `spec` reads, pinned: registry versions and artifact digests. Raises ApiError."""
    inputs: dict[str, Any] = {}
    kind = spec.kind.value
    if kind == "FineTune":
        section = spec.finetune  # type: ignore[union-attr]
        inputs["base_model"] = _model_input(store, section.base_model, files, "finetune.base_model")
        inputs["datasets"] = [
            {
                **_upload_ref(d.path, files, f"finetune.datasets[{i}].path", tree=False),
                "format": d.format.value,
            }
            for i, d in enumerate(section.datasets)
        ]
    elif kind == "BatchInference":
        section = spec.batch  # type: ignore[union-attr]
        inputs["model"] = _model_input(store, section.model, files, "batch.model")
        if section.adapter is not None:
            adapter = _model_ref(store, section.adapter, "adapter", "batch.adapter")
            if adapter["base_sha256"] not in (None, inputs["model"]["sha256"]):
                raise ApiError(
                    422,
                    "adapter_mismatch",
                    f"batch.adapter: {section.adapter} was trained on another base model than "
                    f"{section.model}",
                    "meshctl models show ADAPTER names its base model",
                )
            inputs["adapter"] = adapter
        inputs["input"] = _upload_ref(section.input, files, "batch.input", tree=False)
    elif kind == "Service":
        section = spec.service  # type: ignore[union-attr]
        inputs["model"] = _model_input(store, section.model, files, "service.model")
        inputs["adapters"] = []
        short: dict[str, str] = {}
        for i, name in enumerate(section.adapters):
            where = f"service.adapters[{i}]"
            adapter = _model_ref(store, name, "adapter", where)
            if adapter["base_sha256"] not in (None, inputs["model"]["sha256"]):
                raise ApiError(
                    422,
                    "adapter_mismatch",
                    f"{where}: {name} was trained on another base model than {section.model}",
                    "meshctl models show ADAPTER names its base model",
                )
            key = name.rsplit("/", 1)[-1]
            if key in short:
                raise ApiError(
                    422,
                    "adapter_name_taken",
                    f"{where}: {name} and {short[key]} would both be requested as "
                    f"{spec.job_id}:{key}",
                    "serve adapters whose names (after the community) differ",
                )
            short[key] = name
            inputs["adapters"].append(adapter)
    digests = _digests(inputs)
    for d in digests:
        if not may_read(store, p, d):
            raise ApiError(
                403,
                "forbidden",
                f"artifact {d[:12]} belongs to another community",
                "upload the file again with a token of your community",
            )
    gone = missing(digests)
    if gone:
        raise ApiError(
            422,
            "artifact_missing",
            f"the artifact store does not hold {', '.join(g[:12] for g in gone)}",
            "upload it again (meshctl submit uploads the files a job names)",
        )
    return inputs


def _digests(inputs: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for value in inputs.values():
        for item in value if isinstance(value, list) else [value]:
            found.append(item["sha256"])
    return list(dict.fromkeys(found))


def check_folder(files: Sequence[Mapping[str, Any]], kind: str) -> None:
    """A model folder's manifest holds what its kind needs, and no pickled weights."""
    names = {str(f["path"]) for f in files}
    bad = sorted(n for n in names if n.lower().endswith(FORBIDDEN_SUFFIXES))
    if bad:
        raise ApiError(
            422,
            "unsafe_weights",
            f"the folder holds {', '.join(bad[:5])}: weights that load by unpickling",
            "convert the weights to safetensors; the mesh loads safetensors only",
        )
    need = (
        ["adapter_config.json", "adapter_model.safetensors"]
        if kind == "adapter"
        else ["config.json"]
    )
    lacking = [n for n in need if n not in names]
    if kind == "base" and not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
        lacking.append("*.safetensors")
    if lacking:
        raise ApiError(
            422,
            "not_a_model",
            f"the folder lacks {', '.join(lacking)} for a {kind} model",
            "import a Hugging Face folder (config.json, tokenizer, *.safetensors) or a peft "
            "adapter folder",
        )


def finetune_provenance(
    row: JobRow, reports: Sequence[Mapping[str, Any]], gpu_seconds: float, nodes: Sequence[dict]
) -> dict[str, Any]:
    """Where a trained adapter came from: data, base model, settings, machines, cost, result."""
    section = row.spec.get("finetune", {})
    first = reports[0]
    return {
        "job": row.id,
        "run": row.run,
        "base_model": row.inputs.get("base_model"),
        "datasets": row.inputs.get("datasets"),
        "lora": first.get("lora"),
        "training": first.get("training"),
        "checkpoint_every": section.get("checkpoint_every", "auto"),
        "nodes": list(nodes),
        "gpu_seconds": round(gpu_seconds, 3),
        "steps": first.get("steps"),
        "tokens": first.get("tokens"),
        "final_loss": first.get("final_loss"),
        "resumed_from_step": first.get("resumed_from_step"),
    }


def queue_job(
    store: Store,
    spec: JobSpec,
    now: float,
    actor: str,
    inputs: Mapping[str, Any] | None = None,
) -> JobRow:
    """Put a checked job spec in the queue (a new run of a finished job of the same id)."""
    return store.submit(
        job_id=spec.job_id,
        community=spec.community,
        name=spec.name,
        kind=spec.kind.value,
        priority=spec.priority.value,
        gpus=spec.resources.gpus,
        max_retries=spec.max_retries,
        spec=spec.model_dump(mode="json", by_alias=True, exclude_unset=True),
        now=now,
        actor=actor,
        inputs=inputs,
    )
