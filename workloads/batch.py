"""kind: BatchInference: generate for every row of a JSONL file, sharded over the job's bundles.

The input is cut into shards (several per bundle); bundle b takes shards b, b + N, b + 2N...
Each finished shard's results go to the artifact store at once, under the ref
`batch/<job>/<run>/shard-<k>`, so a job placed again after a preemption or a lost node redoes
only the shards that had not finished. Bundle 0 then joins every shard, in input order, into
one JSONL file: the job's `results` output, one line per input id.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any, Literal

from scheduler.spec_sections import BatchSection
from workloads.artifacts import ArtifactClient
from workloads.fetch import input_path
from workloads.runner import WorkContext, WorkloadError

SHARDS_PER_BUNDLE = 4
MIN_SHARD_ROWS = 8
JOIN_TIMEOUT_S = 24 * 3600.0


def shard_key(ctx: WorkContext, shard: int) -> str:
    return f"batch/{ctx.job}/{ctx.run}/shard-{shard}"


def _device() -> Literal["cpu", "cuda"]:
    import ray
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def run_batch(ctx: WorkContext) -> dict[str, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"  # models come from the artifact store, never a hub
    from workloads.engines import InputError, open_engine, read_prompts, shard_ranges

    section = BatchSection.model_validate(ctx.spec["batch"])
    store = ArtifactClient.on_ray()
    item = ctx.inputs["input"]
    try:
        prompts = read_prompts(input_path(store, item), item["label"])
    except InputError as e:
        raise WorkloadError(str(e)) from None
    count = len(prompts)
    shards = max(1, min(ctx.world * SHARDS_PER_BUNDLE, count // MIN_SHARD_ROWS or 1))
    ranges = shard_ranges(count, shards)
    mine = list(range(ctx.bundle, len(ranges), ctx.world))
    todo = [k for k in mine if store.get_ref(shard_key(ctx, k)) is None]
    skipped = len(mine) - len(todo)
    if skipped:
        ctx.log(f"bundle {ctx.bundle}: {skipped} shards finished before; not redone")
    rows_todo = sum(ranges[k][1] - ranges[k][0] for k in todo)
    generated = 0
    tokens = 0
    opened = time.monotonic()
    engine = None
    if todo:
        model = input_path(store, ctx.inputs["model"])
        adapter = input_path(store, ctx.inputs["adapter"]) if "adapter" in ctx.inputs else None
        device = _device()
        ctx.log(
            f"bundle {ctx.bundle} on {ctx.node}: {section.engine.value} engine on {device}, "
            f"{len(todo)} shards, {rows_todo} rows"
        )
        engine = open_engine(
            section.engine.value,
            model,
            adapter_dir=adapter,
            gpu_fraction=ctx.gpu_fraction or 1.0,
            max_model_len=section.max_model_len,
            threads=max(1, int(ctx.cpus)),
            device=device,
        )
    engine_start_s = time.monotonic() - opened
    started = time.monotonic()
    try:
        sampling = section.sampling.model_dump(mode="json")
        for k, results in _finished_shards(engine, prompts, ranges, todo, sampling):
            start, end = ranges[k]
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
            store.set_ref(shard_key(ctx, k), store.put_bytes(data.encode("utf-8")))
            generated += end - start
            tokens += sum(int(r.get("completion_tokens") or 0) for r in results)
            elapsed = time.monotonic() - started
            rate = generated / elapsed if elapsed > 0 else 0.0
            ctx.report_progress(
                rows=generated,
                total_rows=rows_todo,
                prompts_per_s=round(rate, 2),
                eta_s=round((rows_todo - generated) / rate, 1) if rate else None,
            )
            ctx.log(f"bundle {ctx.bundle}: shard {k} done ({generated}/{rows_todo} rows)")
        seconds = time.monotonic() - started  # before close(): shutting vLLM down takes ~5 s
    finally:
        if engine is not None:
            engine.close()
    report: dict[str, Any] = {
        "bundle": ctx.bundle,
        "node": ctx.node,
        "shards": len(todo),
        "shards_skipped": skipped,
        "rows": generated,
        "completion_tokens": tokens,
        "engine_start_s": round(engine_start_s, 3),
        "seconds": round(seconds, 3),  # generating, after the engine started
    }
    if ctx.bundle == 0:
        report["outputs"] = {"results": _join(ctx, store, len(ranges), count)}
    return report


def _finished_shards(
    engine: Any,
    prompts: list[Any],
    ranges: list[tuple[int, int]],
    todo: list[int],
    sampling: dict[str, Any],
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(shard, its results in row order) as each of the `todo` shards finishes.

    vLLM gets every row of the bundle at once (`generate_stream`) and keeps its batch full
    across shards; a shard is yielded once its last row is done. The transformers engine
    generates one shard at a time.
    """
    if engine is None:
        return
    if not hasattr(engine, "generate_stream"):
        for k in todo:
            start, end = ranges[k]
            yield k, engine.generate(prompts[start:end], sampling)
        return
    for k in todo:
        if ranges[k][0] == ranges[k][1]:
            yield k, []  # no rows: nothing will finish it
    rows = [i for k in todo for i in range(*ranges[k])]
    shard_of = {i: k for k in todo for i in range(*ranges[k])}
    done: dict[int, dict[int, dict[str, Any]]] = {k: {} for k in todo}
    for j, result in engine.generate_stream([prompts[i] for i in rows], sampling):
        k = shard_of[rows[j]]
        done[k][rows[j]] = result
        start, end = ranges[k]
        if len(done[k]) == end - start:
            yield k, [done[k].pop(i) for i in range(start, end)]


def _join(ctx: WorkContext, store: ArtifactClient, shards: int, count: int) -> dict[str, Any]:
    """Bundle 0: wait for every shard, then write the results in input order."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    digests: list[str] = []
    for k in range(shards):
        while (digest := store.get_ref(shard_key(ctx, k))) is None:
            if time.monotonic() > deadline:
                raise WorkloadError(f"shard {k} did not finish")
            time.sleep(0.5)
        digests.append(digest)
    data = b"".join(store.get_bytes(d) for d in digests)
    lines = data.count(b"\n")
    if lines != count:
        raise WorkloadError(f"the shards hold {lines} results for {count} input rows")
    digest = store.put_bytes(data)
    ctx.log(f"results: {count} rows, {len(data)} bytes, {digest[:12]}")
    return {
        "sha256": digest,
        "type": "file",
        "filename": "results.jsonl",
        "rows": count,
        "files": [],
    }
