"""`engine: transformers` for a Service: the fallback where vLLM does not run.

`ray.serve.llm`'s `LLMServer` runs vLLM only, so this replica is a deployment of our own that
answers the same calls the `/v1` front makes (`chat`, `completions`: async generators of the
OpenAI protocol objects `ray.serve.llm` uses), so the front treats both engines alike. One
request generates at a time (no batching: a fallback, not a fast path); streamed answers come
token by token through transformers' `TextIteratorStreamer`. Adapters are peft adapters loaded
once by name; a request for `model:adapter` runs with that adapter, others with none. Greedy
when temperature is 0; otherwise sampled (seeded when the request or the Service sets a seed).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionResponse,
    CompletionStreamResponse,
    ErrorInfo,
    ErrorResponse,
)
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatMessage,
    DeltaMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
)
from vllm.entrypoints.serve.engine.protocol import UsageInfo


def _error(message: str, status: int = 400) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=message, type="BadRequestError", code=status))


class TransformersServer:
    """One Service replica on transformers (see the module docstring)."""

    def __init__(
        self,
        model_dir: str,
        adapters: dict[str, str],
        max_model_len: int,
        defaults: dict[str, Any],
        threads: int,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(max(1, threads))
        cuda = torch.cuda.is_available()
        dtype = torch.float32
        if cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.device = "cuda" if cuda else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
        self.adapters = sorted(adapters)
        if adapters:
            from peft import PeftModel

            first, *rest = self.adapters
            model = PeftModel.from_pretrained(model, adapters[first], adapter_name=first)
            for name in rest:
                model.load_adapter(adapters[name], adapter_name=name)
        self.model = model.to(self.device).eval()
        self.max_model_len = max_model_len
        self.defaults = defaults
        self.lock = asyncio.Lock()

    async def check_health(self) -> None:
        return None

    # --- the calls of the front ------------------------------------------------------------

    async def chat(self, body: Any, raw: Any = None) -> AsyncIterator[Any]:
        if not body.messages:
            yield _error("messages: at least one message is needed")
            return
        try:
            messages = [dict(m) for m in body.messages]
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
        except Exception as e:  # a template that rejects these messages
            yield _error(f"messages: the model's chat template refused them ({e})")
            return
        async for item in self._answer(body, list(_ids(ids)), chat=True):
            yield item

    async def completions(self, body: Any, raw: Any = None) -> AsyncIterator[Any]:
        if not isinstance(body.prompt, str):
            yield _error("prompt: this engine takes one prompt string per request")
            return
        ids = self.tokenizer(body.prompt)["input_ids"]
        async for item in self._answer(body, list(ids), chat=False):
            yield item

    # --- generation ------------------------------------------------------------------------

    def _sampling(self, body: Any) -> dict[str, Any]:
        d = self.defaults
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
        return {
            "max_tokens": int(asked or d.get("max_tokens", 256)),
            "temperature": d.get("temperature", 0.7)
            if body.temperature is None
            else body.temperature,
            "top_p": d.get("top_p", 1.0) if body.top_p is None else body.top_p,
            "seed": d.get("seed") if body.seed is None else body.seed,
            "stop": list(stop or d.get("stop") or []),
        }

    async def _answer(self, body: Any, ids: list[int], chat: bool) -> AsyncIterator[Any]:
        s = self._sampling(body)
        if len(ids) + s["max_tokens"] > self.max_model_len:
            yield _error(
                f"the prompt's {len(ids)} tokens and max_tokens {s['max_tokens']} exceed "
                f"the context of {self.max_model_len} tokens"
            )
            return
        adapter = (serve.get_multiplexed_model_id() or "").partition(":")[2] or None
        if adapter is not None and adapter not in self.adapters:
            yield _error(f"no adapter {adapter!r} here", 404)
            return
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        async with self.lock:
            pieces: asyncio.Queue[Any] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            done: dict[str, Any] = {}
            worker = threading.Thread(
                target=self._generate, args=(ids, s, adapter, loop, pieces, done), daemon=True
            )
            worker.start()
            text = ""
            first = True
            while True:
                piece = await pieces.get()
                if piece is None:
                    break
                text += piece
                if body.stream and piece:
                    yield self._chunk(body, rid, created, piece, chat, first)
                    first = False
            worker.join()
        if "error" in done:
            yield _error(f"generation failed: {done['error']}", 500)
            return
        text, reason = _cut(text, s["stop"], done.get("reason", "length"))
        usage = UsageInfo(
            prompt_tokens=len(ids),
            completion_tokens=done.get("tokens", 0),
            total_tokens=len(ids) + done.get("tokens", 0),
        )
        if body.stream:
            yield self._last(body, rid, created, reason, chat)
            return
        if chat:
            yield ChatCompletionResponse(
                id=rid,
                created=created,
                model=body.model,
                choices=[
                    ChatCompletionResponseChoice(
                        index=0,
                        message=ChatMessage(role="assistant", content=text),
                        finish_reason=reason,
                    )
                ],
                usage=usage,
            )
        else:
            yield CompletionResponse(
                id=rid,
                created=created,
                model=body.model,
                choices=[CompletionResponseChoice(index=0, text=text, finish_reason=reason)],
                usage=usage,
            )

    def _chunk(self, body: Any, rid: str, created: int, piece: str, chat: bool, first: bool) -> Any:
        if chat:
            delta = (
                DeltaMessage(role="assistant", content=piece)
                if first
                else DeltaMessage(content=piece)
            )
            return ChatCompletionStreamResponse(
                id=rid,
                created=created,
                model=body.model,
                choices=[ChatCompletionResponseStreamChoice(index=0, delta=delta)],
            )
        return CompletionStreamResponse(
            id=rid,
            created=created,
            model=body.model,
            choices=[CompletionResponseStreamChoice(index=0, text=piece)],
        )

    def _last(self, body: Any, rid: str, created: int, reason: str, chat: bool) -> Any:
        if chat:
            return ChatCompletionStreamResponse(
                id=rid,
                created=created,
                model=body.model,
                choices=[
                    ChatCompletionResponseStreamChoice(
                        index=0, delta=DeltaMessage(), finish_reason=reason
                    )
                ],
            )
        return CompletionStreamResponse(
            id=rid,
            created=created,
            model=body.model,
            choices=[CompletionResponseStreamChoice(index=0, text="", finish_reason=reason)],
        )

    def _generate(
        self,
        ids: list[int],
        s: dict[str, Any],
        adapter: str | None,
        loop: asyncio.AbstractEventLoop,
        pieces: asyncio.Queue[Any],
        done: dict[str, Any],
    ) -> None:
        """In a thread: generate, putting each decoded piece on `pieces`, then None."""
        import contextlib

        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        greedy = s["temperature"] == 0
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([ids], device=self.device),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=self.device),
            "max_new_tokens": s["max_tokens"],
            "do_sample": not greedy,
            "streamer": streamer,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if not greedy:
            kwargs.update(temperature=s["temperature"], top_p=s["top_p"])
            if s["seed"] is not None:
                torch.manual_seed(int(s["seed"]))
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                if self.adapters and adapter is None:
                    scope: Any = self.model.disable_adapter()
                else:
                    scope = contextlib.nullcontext()
                    if adapter is not None:
                        self.model.set_adapter(adapter)
                with scope, torch.no_grad():
                    out = self.model.generate(**kwargs)
                new = out[0][len(ids) :].tolist()
                eos = self.tokenizer.eos_token_id
                result["tokens"] = len(new)
                result["reason"] = "stop" if eos is not None and eos in new else "length"
            except Exception as e:  # reported to the caller as a 500
                result["error"] = f"{type(e).__name__}: {e}"
                streamer.end()

        gen = threading.Thread(target=run, daemon=True)
        gen.start()
        for piece in streamer:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)
        gen.join()
        done.update(result)
        loop.call_soon_threadsafe(pieces.put_nowait, None)


def _ids(value: Any) -> list[int]:
    """Token ids from apply_chat_template, whichever shape this transformers version returns."""
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value["input_ids"]
    if value and isinstance(value[0], list):
        value = value[0]
    return [int(t) for t in value]


def _cut(text: str, stop: list[str], reason: str) -> tuple[str, str]:
    """The text up to the first stop string (reason "stop"), else as it is."""
    cuts = [text.index(s) for s in stop if s in text]
    if cuts:
        return text[: min(cuts)], "stop"
    return text, reason


def hf_replica_app(
    *,
    model_dir: Path,
    adapters: dict[str, Path],
    max_model_len: int,
    defaults: dict[str, Any],
    node: str,
    cpus: float,
    gpus: float,
    name: str,
) -> Any:
    """The Serve application of one transformers replica, pinned and sized as the plan says."""
    from cluster.labels import NODE
    from workloads.serving_replica import MAX_ONGOING_REQUESTS

    bundle: dict[str, float] = {"CPU": max(cpus, 0.01)}
    if gpus > 0:
        bundle["GPU"] = gpus
    deployment = serve.deployment(
        TransformersServer,
        name=name,
        num_replicas=1,
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        placement_group_bundles=[bundle],
        placement_group_strategy="STRICT_PACK",
        placement_group_bundle_label_selector=[{NODE: node}],
        ray_actor_options={
            "num_cpus": 0,
            "num_gpus": gpus,
            "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
        },
        health_check_period_s=5,
        health_check_timeout_s=30,
        max_constructor_retry_count=1,
    )
    return deployment.bind(  # type: ignore[attr-defined]  # serve.deployment(cls) is a Deployment
        str(model_dir),
        {k: str(v) for k, v in adapters.items()},
        max_model_len,
        defaults,
        max(1, int(cpus)),
    )
