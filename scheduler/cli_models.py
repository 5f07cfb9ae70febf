"""`meshctl models ...` and `meshctl results`: the model registry and what jobs produced.

`models import` checks a Hugging Face folder on this machine (safetensors only, no remote code),
or converts a GGUF checkpoint into one, uploads it to the artifact store and registers it;
`models pull` and `results` download verified copies. `scheduler.cli` adds these commands.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from scheduler import transfer
from scheduler.cli_mesh import (
    ApiOption,
    JobIdArgument,
    JsonOption,
    TokenOption,
    _Bytes,
    _fail,
    _mesh,
    _print_json,
    _say,
    _when,
    out,
)
from scheduler.client import ClientError, MeshClient

app = typer.Typer()
models_app = typer.Typer(no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models() -> None:
    """The model registry: list, show, import (a folder or a GGUF file), pull.

    Example: meshctl models list
    """


NameOption = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Registry name, community/name (default: your community / the folder's name).",
        show_default=False,
    ),
]


def _default_name(client: MeshClient, stem: str) -> str:
    me = client.whoami()
    community = me.get("community")
    if not community:
        raise ClientError("an admin token belongs to no community: pass --name community/name")
    short = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model"
    return f"{community}/{short[:100]}"


@models_app.command("list")
def list_models(
    community: Annotated[
        str | None, typer.Option("--community", help="Only this community's models.")
    ] = None,
    as_json: JsonOption = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """List the registered models (latest version of each).

    Example: meshctl models list
    """
    with _mesh(api, token) as client:
        models = client.models(community)
        why: str | None = None
        try:
            served = client.served()
        except ClientError as e:
            served, why = [], str(e)
    if community:
        served = [s for s in served if s.get("owned_by") == community]
    if as_json:
        _print_json({"models": models, "served": served})
        return
    if served:
        t = Table("model", "access", "replicas", "nodes", title=f"Served at {client.v1_url}")
        for card in served:
            meta = card.get("metadata") or {}
            t.add_row(
                Text(card["id"]),
                str(meta.get("access", "-")),
                str(meta.get("replicas", "-")),
                Text(", ".join(meta.get("nodes") or []) or "-"),
            )
        out.print(t)
    elif why:
        _say(f"(what serves is unknown: {why})")
    if not models:
        _say("No models. meshctl models import PATH registers one.")
        return
    t = Table("name", "version", "kind", "base", "sha256", "registered", title="Registered")
    for m in models:
        t.add_row(
            Text(m["name"]),
            str(m["version"]),
            m["kind"],
            Text(m.get("base") or "-"),
            m["sha256"][:12],
            _when(m.get("created_at")),
        )
    out.print(t)


@models_app.command("show")
def show_model(
    name: Annotated[str, typer.Argument(help="The model, as community/name.")],
    as_json: JsonOption = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """A model's latest version and its provenance: data, base model, machines, cost, loss.

    Example: meshctl models show quechua-lm/tutor
    """
    with _mesh(api, token) as client:
        model = client.model(name)
    if as_json:
        _print_json(model)
        return
    _say(f"{model['name']} version {model['version']} ({model['kind']})")
    _say(f"sha256: {model['sha256']}")
    if model.get("base"):
        _say(f"base model: {model['base']}")
    p: dict[str, Any] = model.get("provenance") or {}
    if p.get("job"):
        _say(f"trained by job {p['job']} (run {p.get('run')})")
        base = p.get("base_model") or {}
        _say(f"  base model sha256: {base.get('sha256')}")
        for d in p.get("datasets") or []:
            _say(f"  dataset {d.get('label')}: sha256 {d.get('sha256')}")
        nodes = ", ".join(
            f"{n['node']} ({n.get('gpu_model') or 'CPU'}"
            + (", simulated)" if n.get("simulated") else ")")
            for n in p.get("nodes") or []
        )
        _say(f"  on: {nodes or '-'}")
        _say(
            f"  {p.get('steps')} steps, {p.get('tokens')} tokens, final loss "
            f"{p.get('final_loss')}, {p.get('gpu_seconds')} GPU-seconds"
        )
    elif p.get("source"):
        _say(f"imported from {p['source']} by {p.get('imported_by')}")
    versions = model.get("versions") or []
    if len(versions) > 1:
        _say("versions: " + ", ".join(f"{v['version']} ({v['sha256'][:12]})" for v in versions))


@models_app.command("import")
def import_model(
    path: Annotated[
        Path | None,
        typer.Argument(help="A Hugging Face folder (config.json, tokenizer, *.safetensors)."),
    ] = None,
    gguf: Annotated[
        Path | None,
        typer.Option("--gguf", help="A GGUF checkpoint to convert to safetensors and import."),
    ] = None,
    name: NameOption = None,
    adapter_of: Annotated[
        str | None,
        typer.Option("--adapter-of", help="Import a LoRA adapter folder for this base model."),
    ] = None,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Register a model: a Hugging Face folder, a GGUF file (converted), or a LoRA adapter.

    A folder: meshctl models import ./my-model --name bio-ml/base.

    Example: meshctl models import --gguf SmolLM2-135M-Instruct.Q4_1.gguf --name bio-ml/smollm2
    """
    from workloads.models import ModelError, check_adapter_folder, check_model_folder, import_gguf

    if (path is None) == (gguf is None):
        raise _fail("give a folder (PATH) or --gguf FILE, one of the two")
    scratch: Path | None = None
    try:
        with _mesh(api, token) as client:
            if gguf is not None:
                if not gguf.is_file():
                    raise _fail(f"{gguf}: no such file")
                scratch = Path(tempfile.mkdtemp(prefix="mesh-gguf-"))
                _say(f"converting {gguf.name} to safetensors (this takes a minute)")
                folder = import_gguf(gguf, scratch / "model", progress=_say)
                stem, source = gguf.stem.split(".")[0], f"gguf:{gguf.name}"
            else:
                assert path is not None
                if not path.is_dir():
                    raise _fail(f"{path}: not a folder")
                folder, stem, source = path, path.name, f"folder:{path.resolve().name}"
            try:
                info = check_adapter_folder(folder) if adapter_of else check_model_folder(folder)
            except ModelError as e:
                raise _fail(str(e)) from None
            name = name or _default_name(client, stem)
            community = name.partition("/")[0]
            digest = transfer.upload_tree(
                client.http,
                client.config.api,
                client.auth_headers,
                folder,
                community,
                _Bytes.progress(),
            )
            model = client.register_model(
                name,
                digest,
                kind="adapter" if adapter_of else "base",
                base=adapter_of,
                source=source,
            )
            _say(
                f"registered {model['name']} version {model['version']} "
                f"({model['kind']}, sha256:{digest[:12]})"
                + (f": {info.get('architecture')}" if info.get("architecture") else "")
            )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


@models_app.command("pull")
def pull_model(
    name: Annotated[str, typer.Argument(help="The model, as community/name.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Folder to write (default: ./NAME).")
    ] = None,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Download a model or adapter folder, verified against its SHA-256.

    Example: meshctl models pull quechua-lm/tutor -o ./tutor
    """
    with _mesh(api, token) as client:
        model = client.model(name)
        dest = output or Path(name.partition("/")[2])
        transfer.download_tree(
            client.http,
            client.config.api,
            client.auth_headers,
            model["sha256"],
            dest,
            _Bytes.progress(),
        )
    _say(f"{model['name']} version {model['version']} -> {dest}")


@app.command()
def results(
    job_id: JobIdArgument,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Folder to write (default: ./COMMUNITY-NAME)."),
    ] = None,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Download what a finished job produced (an adapter, a results file), verified.

    Example: meshctl results quechua-lm/answers -o ./answers
    """
    with _mesh(api, token) as client:
        job = client.job(job_id)
        outputs = (job.get("report") or {}).get("outputs") or {}
        if not outputs:
            raise _fail(
                f"{job_id} has no outputs ({job['state']})"
                + ("" if job["state"] == "SUCCEEDED" else "; outputs come when it succeeds")
            )
        dest = output or Path(job_id.replace("/", "-"))
        dest.mkdir(parents=True, exist_ok=True)
        for name, o in outputs.items():
            if o["type"] == "tree":
                target = dest / name
                transfer.download_tree(
                    client.http, client.config.api, client.auth_headers, o["sha256"], target, None
                )
            else:
                target = dest / o.get("filename", name)
                transfer.download_file(
                    client.http, client.config.api, client.auth_headers, o["sha256"], target, None
                )
            _say(f"{name} -> {target}")
