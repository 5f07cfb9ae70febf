"""One replica of a Service: its `ray.serve.llm` configuration and its Serve application.

Imported where a replica is deployed (the keeper, `workloads/serving.py`) and where it runs
(the Serve replica), not by the controller: it loads `ray.serve.llm`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader, global_id_manager
from ray.serve.llm import LLMConfig, build_llm_deployment

from cluster.labels import NODE
from scheduler.spec_sections import ServiceSection
from workloads.runner import WorkloadError
from workloads.serving import DEFAULT_MAX_MODEL_LEN

MAX_ONGOING_REQUESTS = 64  # per replica; the front answers 503 beyond twice that in flight
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
CPU_KVCACHE_GB = "1"
# the share of a GPU's memory vLLM may use is the plan's share times this (activations, CUDA
# context and the allocator live outside vLLM's budget)
GPU_MEMORY_SHARE = 0.9


def _lora_rank(folder: Path) -> int:
    try:
        r = int(json.loads((folder / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkloadError(f"{folder.name}: not a LoRA adapter ({e})") from None
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise WorkloadError(f"adapter rank r={r} is more than vLLM serves ({VLLM_LORA_RANKS[-1]})")


def llm_config(
    *,
    model_id: str,
    model_dir: Path,
    adapters: dict[str, Path],
    section: ServiceSection,
    node: str,
    cpus: float,
    gpus: float,
    on_gpu: bool,
) -> Any:
    """The `LLMConfig` of one replica: pinned to `node`, holding the plan's bundle."""
    s = section.sampling
    engine: dict[str, Any] = {
        "tokenizer": str(model_dir),
        "trust_remote_code": False,
        "load_format": "safetensors",
        "max_model_len": section.max_model_len or DEFAULT_MAX_MODEL_LEN,
        "generation_config": "vllm",  # the Service's defaults, not the model folder's
        "override_generation_config": {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_new_tokens": s.max_tokens,
        },
    }
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    bundle: dict[str, float] = {"CPU": max(cpus, 0.01)}
    if gpus > 0:
        bundle["GPU"] = gpus
    if on_gpu:
        whole = gpus >= 1
        engine["tensor_parallel_size"] = int(gpus) if whole else 1
        engine["gpu_memory_utilization"] = round((1.0 if whole else gpus) * GPU_MEMORY_SHARE, 3)
        if not whole:
            env["VLLM_RAY_PER_WORKER_GPUS"] = str(gpus)  # a share of one GPU (ray#58328)
    else:
        engine.update(dtype="float32", enforce_eager=True)
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KVCACHE_GB
        env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or "nobind"
        env["OMP_NUM_THREADS"] = str(max(1, int(cpus)))
    lora: dict[str, Any] | None = None
    if adapters:
        slots = len(adapters) + 1  # see the module docstring: vLLM-cpu's "no adapter" slot
        engine.update(
            enable_lora=True,
            max_loras=slots,
            max_lora_rank=max(_lora_rank(p) for p in adapters.values()),
        )
        lora = {"max_num_adapters_per_replica": slots - 1}
    return LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": str(model_dir)},
        accelerator_config={"kind": "gpu" if on_gpu else "cpu"},
        placement_group_config={"bundles": [bundle], "strategy": "STRICT_PACK"},
        engine_kwargs=engine,
        lora_config=lora,
        runtime_env={"env_vars": env},
        deployment_config={
            "num_replicas": 1,
            "max_ongoing_requests": MAX_ONGOING_REQUESTS,
            "placement_group_bundle_label_selector": [{NODE: node}],
            "ray_actor_options": {"num_cpus": 0},
            "health_check_period_s": 5,
            "health_check_timeout_s": 30,
            # an engine that cannot start says so at once (the job's retries start it again)
            "max_constructor_retry_count": 1,
        },
    )


def replica_app(config: Any, adapters: dict[str, Path]) -> Any:
    """The Serve application of one replica: an `LLMServer` whose adapters come from disk."""
    local = {name: str(path) for name, path in adapters.items()}
    return build_llm_deployment(
        config,
        name_prefix="replica-",
        bind_kwargs={"model_downloader": functools.partial(CacheLoraLoader, adapters=local)},
    )


class CacheLoraLoader(LoraModelLoader):
    """Serve's LoRA loader, given the adapters' folders in the node's cache instead of a bucket.

    The keeper fetched (and verified) every adapter before deploying; a request for
    `model:adapter` loads that folder into the engine.
    """

    def __init__(self, *args: Any, adapters: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._adapters = adapters

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> Any:
        if lora_model_id in self.disk_cache:
            return self.disk_cache[lora_model_id]
        name = lora_model_id.split(":", 1)[-1]
        if name not in self._adapters:
            raise ValueError(f"{lora_model_id}: this Service serves no adapter {name!r}")
        config = DiskMultiplexConfig.model_validate(
            {
                "model_id": lora_model_id,
                "max_total_tokens": llm_config.engine_kwargs.get("max_model_len"),
                "local_path": self._adapters[name],
                "lora_assigned_int_id": global_id_manager.next(),
            }
        )
        self.disk_cache[lora_model_id] = config
        return config
