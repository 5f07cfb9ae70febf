"""`meshctl` commands that talk to a running mesh over its HTTP API (DESIGN.md "HTTP").

Each command parses, calls `scheduler.client.MeshClient`, and prints; none holds logic.
`scheduler.cli` adds them to the `meshctl` app.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from scheduler import terminal
from scheduler.audit import GENESIS, verify_chain
from scheduler.client import (
    ClientError,
    Finished,
    LogLine,
    MeshClient,
    Transition,
    resolve_config,
)
from scheduler.documents import SpecError, load_documents
from scheduler.spec import load_jobs

app = typer.Typer()
out, err, _fail = terminal.out, terminal.err, terminal.fail


# --- the running mesh: commands that talk to its API -------------------------------------------

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="Address of the mesh API, such as http://127.0.0.1:8000/api/v1; "
        "overrides MESH_API and $MESH_HOME/config.yaml.",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Bearer token; overrides MESH_TOKEN and $MESH_HOME/config.yaml.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print what the API answered, as JSON.")]
JobIdArgument = Annotated[str, typer.Argument(metavar="ID", help="The job, as community/name.")]

_STATE_STYLE = {
    "QUEUED": "yellow",
    "PLACED": "cyan",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "magenta",
    "PREEMPTED": "yellow",
    "INTERRUPTED": "yellow",
}


@contextmanager
def _mesh(api: str | None, token: str | None) -> Iterator[MeshClient]:
    """A client of the API that --api/--token, the environment or config.yaml name.

    Every ClientError (an error response, a mesh that does not answer) ends the command with
    its message and exit status 2.
    """
    try:
        with MeshClient(resolve_config(api, token)) as client:
            yield client
    except ClientError as e:
        raise _fail(str(e)) from None


def _say(text: str) -> None:
    """Print text as it is: no markup, no highlighting, no wrapping."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _state(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def _number(value: float) -> str:
    """1.0 as "1", 1.5 as "1.5", 0.4166 as "0.417"."""
    return f"{round(value, 3):g}"


def _when(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime(fmt)


def _progress_line(p: dict[str, Any]) -> str:
    if "replicas" in p:  # a Service
        where = ", ".join(f"{r['node']} {r['state']}" for r in p["replicas"])
        return f"{p.get('serving', 0)} of {len(p['replicas'])} replicas serve ({where})"
    parts = []
    if "step" in p:
        parts.append(f"step {p['step']}/{p.get('total_steps', '?')}")
    if "loss" in p:
        parts.append(f"loss {p['loss']:.4f}")
    if "tokens_per_s" in p:
        parts.append(f"{p['tokens_per_s']:.0f} tokens/s")
    if "rows" in p:
        parts.append(f"{p['rows']}/{p.get('total_rows', '?')} rows")
    if p.get("prompts_per_s"):
        parts.append(f"{p['prompts_per_s']:.2f} prompts/s")
    if p.get("eta_s") is not None:
        parts.append(f"ETA {p['eta_s']:.0f} s")
    return ", ".join(parts) or json.dumps(p)


def _transition_line(event: Transition) -> str:
    change = f"{event.from_state} -> {event.to_state}" if event.from_state else event.to_state
    return f"{event.job}: {change}" + (f" ({event.reason})" if event.reason else "")


def _wait_for(client: MeshClient, submitted: list[dict[str, Any]], follow: bool) -> bool:
    """Poll the submitted jobs until each ends; whether every one SUCCEEDED.

    With `follow`, every state change and log line is printed as it arrives; otherwise one line
    per job when it ends.
    """
    ids = [job["id"] for job in submitted]
    shown = {job["id"]: len(job.get("transitions") or []) for job in submitted}
    states = {job["id"]: str(job["state"]) for job in submitted}
    final: dict[str, str] = {}

    def waiting() -> str:
        left = [f"{i} ({s})" for i, s in states.items() if i not in final]
        return "waiting for " + ", ".join(left)

    try:
        with out.status(waiting()) as status:
            for event in client.watch(ids, logs=follow, shown=shown):
                if isinstance(event, Transition):
                    states[event.job] = event.to_state
                    if follow:
                        _say(_transition_line(event))
                elif isinstance(event, LogLine):
                    _say(f"{event.job} | {event.line}" if len(ids) > 1 else event.line)
                elif isinstance(event, Finished):
                    final[event.job] = event.state
                    if not follow:
                        why = f": {event.reason}" if event.reason else ""
                        _say(
                            f"{event.job} {event.state}"
                            + ("" if event.state == "SUCCEEDED" else why)
                        )
                status.update(waiting())
    except KeyboardInterrupt:
        raise _fail("stopped waiting; the jobs go on (`meshctl jobs` shows them)", 130) from None
    return all(state == "SUCCEEDED" for state in final.values())


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="Job file (YAML; several jobs separated by ---)")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until every job ends; exit 1 unless all succeed.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Like --wait, printing state changes and log lines."),
    ] = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Submit the jobs of a YAML file to the mesh; with --wait or --follow, until they end.

    The file is checked first, as `meshctl validate` does; nothing is sent if any job in it is
    invalid or names a local file that does not exist. Local files and folders a job names
    (datasets, a model folder, an input file) are uploaded to the mesh's artifact store first,
    resumably; a file already there is not sent again.

    Example: meshctl submit examples/jobs/probe.yaml --follow
    """
    from scheduler.uploads import local_refs, upload_refs

    try:
        specs = load_jobs(file)
        documents = load_documents(file)
        refs = [local_refs(d, file.parent) for d in documents]
    except SpecError as e:
        raise _fail(str(e)) from None
    except ClientError as e:
        raise _fail(f"{file}: {e}") from None
    with _mesh(api, token) as client:
        submitted = []
        for spec, document, local in zip(specs, documents, refs, strict=True):
            files = upload_refs(client, local, spec.community, _say, _Bytes.progress())
            job = client.submit(document, files)
            _say(f"submitted {job['id']} ({job['state']})")
            submitted.append(job)
        services = [j for j in submitted if j["kind"] == "Service"]
        for job in services:
            _wait_served(client, job["id"])
        others = [j for j in submitted if j["kind"] != "Service"]
        if (wait or follow) and others and not _wait_for(client, others, follow):
            raise typer.Exit(1)


SERVE_TIMEOUT_S = 3600.0


def _wait_served(client: MeshClient, job_id: str) -> None:
    """Until every replica of a Service serves and the model answers a request at /v1."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    try:
        with out.status(f"{job_id}: placing") as status:
            while True:
                job = client.job(job_id)
                if job["state"] in ("FAILED", "CANCELLED"):
                    raise _fail(f"{job_id} {job['state']}: {job.get('reason') or ''}")
                progress = job.get("progress") or {}
                replicas = progress.get("replicas") or []
                if replicas and progress.get("serving") == len(replicas):
                    answer = client.complete(job_id, "Hello", max_tokens=1)
                    if answer is not None:
                        break
                status.update(
                    f"{job_id}: {job['state'].lower()}"
                    + (f"; {_progress_line(progress)}" if replicas else "")
                )
                if time.monotonic() > deadline:
                    raise _fail(f"{job_id} did not serve in {SERVE_TIMEOUT_S:g} s; it goes on")
                time.sleep(1.0)
    except KeyboardInterrupt:
        raise _fail(
            "stopped waiting; the Service goes on (`meshctl status` shows it)", 130
        ) from None
    _say(f"{job_id} serves: {_progress_line(progress)}")
    _say(f"  POST {client.v1_url}/chat/completions with model {job_id!r}")


class _Bytes:
    """A transfer's progress, printed at most every 10% (rich's status is for waits)."""

    @staticmethod
    def progress() -> Any:
        shown = {"step": -1}

        def report(done: int, total: int) -> None:
            if total < 8 * 2**20:
                return
            step = int(10 * done / total)
            if step != shown["step"]:
                shown["step"] = step
                _say(f"  {done / 2**20:.0f} of {total / 2**20:.0f} MiB")

        return report


@app.command("jobs")
def list_jobs(
    community: Annotated[
        str | None, typer.Option("--community", help="Only this community's jobs.")
    ] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="Only jobs in this state, such as QUEUED.")
    ] = None,
    as_json: JsonOption = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """List the jobs of the mesh: state, GPUs, nodes, and why queued ones wait.

    Example: meshctl jobs --community bio-ml --state QUEUED
    """
    with _mesh(api, token) as client:
        jobs = client.jobs(community, state.upper() if state else None)
    if as_json:
        _print_json(jobs)
        return
    if not jobs:
        _say("No jobs.")
        return
    t = Table("job", "kind", "state", "GPUs", "nodes", "run", "reason / why it waits")
    for job in jobs:
        waiting = job.get("waiting") or []
        why = waiting[0] if job["state"] == "QUEUED" and waiting else job.get("reason") or ""
        t.add_row(
            Text(job["id"]),
            job["kind"],
            _state(job["state"]),
            str(job["gpus"]),
            Text(", ".join(job.get("nodes") or []) or "-"),
            str(job["run"]),
            Text(why),
        )
    out.print(t)


def _print_job(job: dict[str, Any]) -> None:
    header = Text(f"{job['id']}  {job['kind']}  ")
    header.append_text(_state(job["state"]))
    out.print(header)
    _say(
        f"priority {job['priority']}, run {job['run']}, retries {job['retries_used']} of "
        f"{job['max_retries']}, submitted {_when(job.get('submitted_at'))}"
    )
    if job.get("reason"):
        _say(f"reason: {job['reason']}")
    if job.get("placement"):
        t = Table("bundle", "node", "GPUs", "fraction", title="Placement")
        for i, bundle in enumerate(job["placement"]):
            gpu_ids = bundle.get("gpus") or []
            t.add_row(
                str(i),
                Text(bundle["node"]),
                ",".join(str(g) for g in gpu_ids) or "-",
                _number(bundle["gpu_fraction"]) if gpu_ids else "-",
            )
        out.print(t)
    progress = job.get("progress")
    if progress and job["state"] in ("RUNNING", "SUCCEEDED", "FAILED"):
        _say("progress: " + _progress_line(progress))
    outputs = (job.get("report") or {}).get("outputs") or {}
    for name, o in outputs.items():
        _say(f"output {name}: {o['type']} sha256:{o['sha256']}")
    model = (job.get("report") or {}).get("model")
    if model:
        _say(f"registered model: {model['name']} version {model['version']}")
    if job.get("waiting"):
        _say("Why it waits:")
        for reason in job["waiting"]:
            _say(f"  - {reason}")
    if job.get("transitions"):
        t = Table("time", "from", "to", "reason", title="Transitions")
        for tr in job["transitions"]:
            t.add_row(
                _when(tr.get("ts"), "%H:%M:%S"),
                tr.get("from") or "-",
                _state(tr["to"]),
                Text(tr.get("reason") or ""),
            )
        out.print(t)
    bundles = (job.get("report") or {}).get("bundles") if job["kind"] == "Probe" else None
    if bundles:
        t = Table("bundle", "node", "GPU ids", "device", "memory", "TFLOP/s", title="Probe report")
        for b in bundles:
            t.add_row(
                str(b.get("bundle", "-")),
                Text(str(b.get("node") or "-")),
                ",".join(b.get("gpu_ids") or []) or "-",
                Text(b.get("device") or "-"),
                f"{b['memory_gb']:.1f} GB" if b.get("memory_gb") is not None else "-",
                f"{b['tflops']:.1f}" if b.get("tflops") is not None else "-",
            )
        out.print(t)


@app.command()
def status(
    job_id: JobIdArgument,
    as_json: JsonOption = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Show one job: state, placement, why it waits, its transitions, and a Probe's report.

    Example: meshctl status bio-ml/probe-rtx-4090
    """
    with _mesh(api, token) as client:
        job = client.job(job_id)
    if as_json:
        _print_json(job)
    else:
        _print_job(job)


@app.command()
def logs(
    job_id: JobIdArgument,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")
    ] = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Print the lines a job has written; with -f, follow them until the job ends.

    Example: meshctl logs bio-ml/probe-rtx-4090 -f
    """
    with _mesh(api, token) as client:
        try:
            lines = client.watch([job_id], logs=True) if follow else client.all_logs(job_id)
            for event in lines:
                if isinstance(event, LogLine):
                    typer.echo(event.line)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


@app.command()
def cancel(job_id: JobIdArgument, api: ApiOption = None, token: TokenOption = None) -> None:
    """Cancel a job: stop it where it runs, or take it out of the queue.

    Example: meshctl cancel bio-ml/probe-rtx-4090
    """
    with _mesh(api, token) as client:
        job = client.cancel(job_id)
    _say(f"cancelled {job['id']} ({job['state']})")


def _gpus_text(node: dict[str, Any]) -> str:
    """ "4 x RTX-4090 (24 GB)", one entry per model and memory, or "-" for a CPU node."""
    counts: dict[tuple[str, float], int] = {}
    for g in node.get("gpus") or []:
        key = (g["model"], g["memory_gb"])
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {m} ({_number(mem)} GB)" for (m, mem), n in counts.items()) or "-"


STATE_STYLE = {
    "READY": "green",
    "SIMULATED": "cyan",
    "VERIFYING": "yellow",
    "SUSPECT": "red",
    "DRAINING": "yellow",
    "DRAINED": "dim",
    "DOWN": "red",
}


@app.command()
def nodes(as_json: JsonOption = False, api: ApiOption = None, token: TokenOption = None) -> None:
    """List the nodes of the mesh: their GPUs, what is allocated on them, their state and why,
    their availability and MTBF.

    States: SIMULATED (GPUs declared, never probed), VERIFYING (a probe checks the GPUs a new
    node claims), READY, SUSPECT (the probe contradicted the claim: no work), DRAINING, DRAINED,
    DOWN.

    Example: meshctl nodes
    """
    with _mesh(api, token) as client:
        found = client.nodes()
    if as_json:
        _print_json(found)
        return
    if not found:
        _say("No nodes.")
        return
    t = Table("node", "owner", "GPUs", "allocated", "jobs", "state", "availability", "MTBF")
    notes = []
    for node in found:
        allocations = node.get("allocations") or []
        total = len(node.get("gpus") or [])
        used = sum(len(a.get("gpus") or []) * a.get("gpu_fraction", 1.0) for a in allocations)
        jobs = sorted({a["job"] for a in allocations})
        availability = node.get("availability")
        mtbf = node.get("mtbf_h")
        state = node.get("state") or ("UP" if node.get("alive") else "DOWN")
        t.add_row(
            Text(node["name"] + (" (simulated)" if node.get("simulated") else "")),
            Text(node.get("owner") or "-"),
            Text(_gpus_text(node)),
            f"{_number(used)} of {total}" if total else "-",
            Text(", ".join(jobs) or "-"),
            Text(state, style=STATE_STYLE.get(state, "")),
            f"{availability:.0%}" if availability is not None else "-",
            f"{mtbf:.1f} h" if mtbf is not None else "-",
        )
        if node.get("why") and state not in ("READY", "SIMULATED", "DOWN"):
            notes.append(f"{node['name']}: {state} - {node['why']}")
        elif state == "READY" and node.get("claim", {}) and (node.get("claim") or {}).get("gpus"):
            notes.append(f"{node['name']}: {node.get('why')}")
    out.print(t)
    for note in notes:
        out.print(Text(note), soft_wrap=True)


# --- audit --------------------------------------------------------------------------------------

audit_app = typer.Typer(no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.callback()
def audit_main() -> None:
    """Read and verify the audit log: every submission, placement, end, node and token.

    Example: meshctl audit verify
    """


@audit_app.command("show")
def audit_show(
    job: Annotated[
        str | None, typer.Option("--job", metavar="ID", help="Only this job's records.")
    ] = None,
    as_json: JsonOption = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Print the audit records, oldest first: all of them, or one job's.

    Example: meshctl audit show --job bio-ml/probe-rtx-4090
    """
    with _mesh(api, token) as client:
        records = client.audit(job=job)
    if as_json:
        _print_json(records)
        return
    if not records:
        _say("No audit records.")
        return
    t = Table("seq", "time", "kind", "job", "node", "actor", "data")
    for r in records:
        data = r.get("data")
        t.add_row(
            str(r["seq"]),
            _when(r.get("ts")),
            Text(str(r["kind"])),
            Text(r.get("job") or "-"),
            Text(r.get("node") or "-"),
            Text(r.get("actor") or "-"),
            Text(json.dumps(data, sort_keys=True) if data else ""),
        )
    out.print(t)


@audit_app.command("verify")
def audit_verify(api: ApiOption = None, token: TokenOption = None) -> None:
    """Download the whole audit chain and recompute every hash here; exit 1 if it is broken.

    Example: meshctl audit verify
    """
    with _mesh(api, token) as client:
        records = client.audit()
    broken = verify_chain(records)
    if broken is not None:
        err.print(
            f"audit chain broken at record {broken.seq}: {broken.reason}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    head = records[-1]["hash"] if records else GENESIS
    _say(f"audit chain verified: {len(records)} records, head {head[:16]}")


# --- tokens -------------------------------------------------------------------------------------

token_app = typer.Typer(no_args_is_help=True)
app.add_typer(token_app, name="token")


class Role(StrEnum):
    """What a token may do: a member acts in its community; an admin everywhere."""

    member = "member"
    admin = "admin"


@token_app.callback()
def token_main() -> None:
    """Create, list and revoke the API tokens of the mesh (admin).

    Example: meshctl token create --community bio-ml
    """


@token_app.command("create")
def token_create(
    community: Annotated[
        str | None,
        typer.Option("--community", help="The community the token acts for (members need one)."),
    ] = None,
    role: Annotated[Role, typer.Option("--role", help="member or admin.")] = Role.member,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Create a token; it is printed (on stdout) this once and never again.

    Example: meshctl token create --community bio-ml --role member
    """
    if role is Role.member and not community:
        raise _fail("a member token needs --community NAME")
    with _mesh(api, token) as client:
        created = client.create_token(community, role.value)
    err.print(
        f"created token {created['id']} for {created.get('community') or 'every community'}"
        f" ({created['role']}); it is shown only this once, so keep it now:",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    typer.echo(created["token"])


@token_app.command("list")
def token_list(
    as_json: JsonOption = False, api: ApiOption = None, token: TokenOption = None
) -> None:
    """List the tokens: id, community, role, when created, whether revoked (never the secret).

    Example: meshctl token list
    """
    with _mesh(api, token) as client:
        tokens = client.tokens()
    if as_json:
        _print_json(tokens)
        return
    t = Table("id", "community", "role", "created", "revoked")
    for tok in tokens:
        t.add_row(
            Text(str(tok["id"])),
            Text(tok.get("community") or "-"),
            str(tok["role"]),
            _when(tok.get("created_at")),
            Text("revoked", style="red") if tok.get("revoked") else "",
        )
    out.print(t)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (not its secret).")],
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Revoke a token: every request that carries it is refused from now on.

    Example: meshctl token revoke 3f2a9c
    """
    with _mesh(api, token) as client:
        revoked = client.revoke_token(token_id)
    _say(f"revoked token {revoked['id']}")
