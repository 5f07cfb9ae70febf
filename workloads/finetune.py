"""kind: FineTune: LoRA fine-tuning, data-parallel over the job's bundles, resumable.

Each bundle runs one worker; the N workers form one torch.distributed group (gloo on the CPU,
NCCL on GPUs) whose rendezvous address bundle 0 publishes to the others. Every worker reads the
base model and the datasets from the artifact store (verified, cached per node), trains its part
of each global batch, and the gradients are averaged across workers.

Bundle 0 checkpoints to the artifact store (adapter, optimizer, scheduler, step, RNG states, data
position, loss history) every `checkpoint_every` steps, or with `auto` at the Young/Daly interval
from the measured cost of a checkpoint and the placement's expected time to failure, and points
the ref `checkpoints/<job>/<run>` at the latest one. A job placed again after a preemption or a
lost node starts from that checkpoint: its step count and loss curve continue. At the end bundle
0 uploads the adapter; the controller registers it with its provenance.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from scheduler.policy.checkpoint import DEFAULT_MTBF_H, young_daly_interval_s
from scheduler.spec_sections import FineTuneSection
from workloads.artifacts import ArtifactClient, parse_manifest
from workloads.fetch import dataset_files, input_path
from workloads.runner import WorkContext, WorkloadError

RENDEZVOUS_TIMEOUT_S = 300.0
PROGRESS_EVERY_S = 2.0


def checkpoint_key(ctx: WorkContext) -> str:
    return f"checkpoints/{ctx.job}/{ctx.run}"


def _device() -> Literal["cpu", "cuda"]:
    import ray
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _load_examples(ctx: WorkContext, store: ArtifactClient, base: Path, seq_len: int) -> list[Any]:
    from workloads.training import DatasetError, load_examples, load_tokenizer

    tokenizer = load_tokenizer(base)
    section = FineTuneSection.model_validate(ctx.spec["finetune"])
    examples: list[Any] = []
    for spec, item in zip(section.datasets, ctx.inputs["datasets"], strict=True):
        root = input_path(store, item)
        files = dataset_files(root)
        if not files:
            raise WorkloadError(f"dataset {item['label']} holds no .jsonl file")
        for f in files:
            label = item["label"] if f == root else f"{item['label']}/{f.relative_to(root)}"
            try:
                examples += load_examples(
                    f,
                    label,
                    spec.format.value,
                    spec.text_field,
                    spec.messages_field,
                    tokenizer,
                    seq_len,
                )
            except DatasetError as e:
                raise WorkloadError(str(e)) from None
    return examples


class _Checkpoints:
    """When to checkpoint: every N steps, or at the Young/Daly interval (`auto`)."""

    def __init__(self, every: int | str, mtbf_s: float | None) -> None:
        self.every = every
        self.mtbf_s = mtbf_s if mtbf_s and math.isfinite(mtbf_s) else DEFAULT_MTBF_H * 3600
        self.cost_s: float | None = None
        self.last_step = 0
        self.last_time = time.monotonic()

    def due(self, step: int) -> bool:
        if isinstance(self.every, int):
            return step - self.last_step >= self.every
        if self.cost_s is None:  # measure what a checkpoint costs, once, early
            return True
        return time.monotonic() - self.last_time >= young_daly_interval_s(self.cost_s, self.mtbf_s)

    def taken(self, step: int, cost_s: float) -> str | None:
        first = self.cost_s is None
        self.cost_s = cost_s
        self.last_step = step
        self.last_time = time.monotonic()
        if self.every == "auto" and first:
            interval = young_daly_interval_s(cost_s, self.mtbf_s)
            return (
                f"checkpoints every {interval:.0f} s (Young/Daly: a checkpoint costs "
                f"{cost_s:.2f} s, the placement's expected time to failure is "
                f"{self.mtbf_s / 3600:.0f} h)"
            )
        return None


def run_finetune(ctx: WorkContext) -> dict[str, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"  # models come from the artifact store, never a hub
    import torch

    from workloads.training import Trainer, init_distributed, pick_master_address

    section = FineTuneSection.model_validate(ctx.spec["finetune"])
    store = ArtifactClient.on_ray()
    rank, world = ctx.bundle, ctx.world
    device = _device()
    threads = max(1, int(ctx.cpus))
    ctx.log(f"worker {rank + 1} of {world} on {ctx.node}: {device}, {threads} threads")
    base = input_path(store, ctx.inputs["base_model"])
    examples = _load_examples(ctx, store, base, section.training.seq_len)
    ctx.log(f"worker {rank + 1}: {len(examples)} training rows")
    if world > 1:
        import ray

        node_ip = ray.util.get_node_ip_address()  # the address the other nodes reach
        if rank == 0:
            address = pick_master_address(node_ip)
            ctx.publish("master", address)
        else:
            address = str(ctx.peer_value(0, "master", RENDEZVOUS_TIMEOUT_S))
        backend = "nccl" if device == "cuda" else "gloo"
        init_distributed(address, rank, world, backend, RENDEZVOUS_TIMEOUT_S, local_ip=node_ip)
        ctx.log(f"worker {rank + 1}: joined the {backend} group of {world} at {address}")
    scratch = Path(tempfile.mkdtemp(prefix="mesh-finetune-"))
    try:
        trainer = Trainer(
            base,
            examples,
            ctx.spec["finetune"],
            rank=rank,
            world_size=world,
            device=device,
            threads=threads,
        )
        key = checkpoint_key(ctx)
        resumed_from = None
        latest = store.get_ref(key)
        if latest:
            store.get_tree(latest, scratch / "resume")
            trainer.load_checkpoint(scratch / "resume")
            resumed_from = trainer.step
            ctx.log(f"worker {rank + 1}: resuming from the checkpoint at step {trainer.step}")
        total = trainer.total_steps
        policy = _Checkpoints(section.checkpoint_every, ctx.mtbf_s)
        policy.last_step = trainer.step
        tokens = 0
        started = time.monotonic()
        last_said = 0.0
        step_s = 0.0
        while trainer.step < total:
            stats = trainer.train_step()
            tokens += stats.tokens
            step_s = stats.seconds if step_s == 0 else 0.8 * step_s + 0.2 * stats.seconds
            elapsed = time.monotonic() - started
            tokens_s = tokens / elapsed if elapsed > 0 else 0.0
            eta_s = (total - stats.step) * step_s
            ctx.report_progress(
                step=stats.step,
                total_steps=total,
                loss=round(stats.loss, 5),
                tokens_per_s=round(tokens_s, 1),
                eta_s=round(eta_s, 1),
            )
            if rank == 0 and (time.monotonic() - last_said >= PROGRESS_EVERY_S or stats.step == 1):
                last_said = time.monotonic()
                ctx.log(
                    f"step {stats.step}/{total} loss {stats.loss:.4f} "
                    f"{tokens_s:.0f} tokens/s, ETA {eta_s:.0f} s"
                )
            stopping = ctx.stop.is_set() and stats.step < total
            if rank == 0 and stats.step < total and (stopping or policy.due(stats.step)):
                began = time.monotonic()
                folder = scratch / f"ckpt-{stats.step}"
                trainer.save_checkpoint(folder)
                digest = store.put_tree(folder)
                store.set_ref(key, digest)
                shutil.rmtree(folder, ignore_errors=True)
                cost = time.monotonic() - began
                ctx.log(f"checkpoint at step {stats.step} ({cost:.2f} s) {digest[:12]}")
                note = policy.taken(stats.step, cost)
                if note:
                    ctx.log(note)
                if stopping:  # the node drains: the job goes on elsewhere from this step
                    ctx.log(f"stopped at step {stats.step} to move: the node drains")
                    return {"bundle": rank, "node": ctx.node, "stopped": True, "step": stats.step}
        report: dict[str, Any] = {
            "bundle": rank,
            "node": ctx.node,
            "device": device,
            "steps": trainer.step,
            "tokens": tokens,
            "seconds": round(time.monotonic() - started, 3),
            "final_loss": trainer.losses[-1][1] if trainer.losses else None,
            "resumed_from_step": resumed_from,
        }
        if rank == 0:
            trainer.save_adapter(scratch / "adapter")
            digest = store.put_tree(scratch / "adapter")
            files = [str(f["sha256"]) for f in parse_manifest(store.get_bytes(digest))]
            report["outputs"] = {"adapter": {"sha256": digest, "type": "tree", "files": files}}
            report["losses"] = [[s, round(v, 6)] for s, v in trainer.losses]
            report["lora"] = section.lora.model_dump(mode="json")
            report["training"] = section.training.model_dump(mode="json")
            ctx.log(
                f"done: {trainer.step} steps, final loss {report['final_loss']:.4f}, "
                f"adapter {digest[:12]}"
            )
        return report
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        shutil.rmtree(scratch, ignore_errors=True)
