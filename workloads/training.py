"""LoRA fine-tuning of a causal language model: datasets, the training step, checkpoints.

No Ray here. `workloads/finetune.py` runs one `Trainer` per bundle and joins the bundles into one
torch.distributed group with `init_distributed`; this module does the rest:

1. `load_examples` reads a JSONL dataset, checks every line before anything else, and turns the
   rows into token ids (chat rows through the tokenizer's chat template).
2. `Trainer` loads the base model (safetensors only, never remote code), adds a peft LoRA adapter
   and trains it with AdamW and a `transformers.get_scheduler` schedule, data-parallel over the
   ranks of the process group.
3. `Trainer.save_checkpoint` / `load_checkpoint` make a run resumable on other machines;
   `Trainer.save_adapter` writes the result in the layout peft and vLLM load.

Data order. The examples form an endless stream: epoch e is the permutation of all examples drawn
from (seed, e), and optimiser step k takes the next `global_batch` examples of the stream
(`batch_size * gradient_accumulation_steps * world_size`). Each global batch is cut into
`gradient_accumulation_steps` micro-batches of `batch_size * world_size` rows, and rank r takes
rows [r * batch_size, (r + 1) * batch_size) of each. So a run over 2 ranks sees the same rows,
in the same micro-batches, as a 1-rank run with twice the batch size, and the data position is
simply how many examples have been consumed. With `epochs`, the last step may take a few rows of
the next epoch's permutation rather than run a short batch.

Loss. Every rank knows the whole global batch (all ranks hold all examples), so each normalises
its summed token loss by the number of target tokens in the whole global batch; the gradients
and the loss are then summed over the ranks with one all_reduce per optimiser step. The result is
the mean token loss of the global batch, the same as one process computing it alone (up to float
rounding), and with equal token counts per rank it is the mean of the ranks' losses.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHECKPOINT_FORMAT = 1
STATE_JSON = "trainer_state.json"  # written last: a checkpoint without it is incomplete
STATE_PT = "trainer_state.pt"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # labels the loss skips (padding)
_MORE_LINES_SHOWN = 5


class DatasetError(ValueError):
    """A dataset row that cannot be trained on: "<label>:<line>: what is wrong; what to write"."""


# ---------------------------------------------------------------------------------------------
# Datasets


def _row_hint(fmt: str, text_field: str, messages_field: str) -> str:
    if fmt == "chat":
        return (
            f'each line must be a JSON object whose "{messages_field}" is a list of '
            '{"role": "system"|"user"|"assistant", "content": "..."}, like '
            f'{{"{messages_field}": [{{"role": "user", "content": "Hi"}}, '
            '{"role": "assistant", "content": "Hello"}]}'
        )
    return (
        f'each line must be a JSON object with a "{text_field}" string, like '
        f'{{"{text_field}": "..."}}'
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _check_messages(value: Any, field: str) -> str | None:
    """What is wrong with a chat row's messages, or None."""
    if not isinstance(value, list):
        return f'"{field}" is a {_json_type(value)}, not a list of messages'
    if not value:
        return f'"{field}" is an empty list'
    for i, message in enumerate(value, 1):
        if not isinstance(message, dict):
            return f'message {i} of "{field}" is a {_json_type(message)}, not an object'
        if "role" not in message:
            return f'message {i} of "{field}" has no "role"'
        role = message["role"]
        if role not in ROLES:
            return (
                f"message {i} has role {json.dumps(role)}; the role must be system, user "
                "or assistant"
            )
        if "content" not in message:
            return f'message {i} of "{field}" has no "content"'
        if not isinstance(message["content"], str):
            return (
                f'message {i} has a "content" that is a {_json_type(message["content"])}, '
                "not a string"
            )
    return None


def _check_row(line: str, fmt: str, field: str) -> tuple[Any, str | None]:
    """(the row's value for `field`, None) or (None, what is wrong)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON at column {err.colno}: {err.msg.removesuffix(' at')}"
    if not isinstance(row, dict):
        return None, f"the row is a JSON {_json_type(row)}, not an object"
    if field not in row:
        return None, f'row has no "{field}" field'
    value = row[field]
    if fmt == "chat":
        problem = _check_messages(value, field)
        if problem:
            return None, problem
        return [{"role": m["role"], "content": m["content"]} for m in value], None
    if not isinstance(value, str):
        return None, f'"{field}" is a {_json_type(value)}, not a string'
    if not value:
        return None, f'"{field}" is an empty string'
    return value, None


def load_examples(
    path: str | Path,
    label: str,
    fmt: str,
    text_field: str,
    messages_field: str,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
) -> list[list[int]]:
    """The token ids of every row of the JSONL file `path`, each cut to `seq_len` tokens.

    `label` names the file in errors ("data.jsonl:7: ..."). Every line is checked before any is
    tokenised; the first bad line raises DatasetError (which also counts the other bad lines).
    Blank lines are skipped. `fmt` "text" reads the string `text_field` and appends the EOS
    token; "chat" reads the message list `messages_field` and renders it with the tokenizer's
    chat template.
    """
    fmt = str(fmt)
    if fmt not in ("text", "chat"):
        raise ValueError(f"unknown dataset format {fmt!r}: use text or chat")
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, not {seq_len}")
    field = messages_field if fmt == "chat" else text_field
    hint = _row_hint(fmt, text_field, messages_field)
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError:
        raise DatasetError(f"{label}: is a folder; give a JSONL file") from None
    except OSError as err:
        raise DatasetError(f"{label}: cannot read the file ({err.strerror})") from None

    values: list[Any] = []
    bad: list[tuple[int, str]] = []
    for number, data in enumerate(raw.split(b"\n"), 1):
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError:
            bad.append((number, "not UTF-8 text"))
            continue
        if not line.strip():
            continue
        value, problem = _check_row(line, fmt, field)
        if problem:
            bad.append((number, problem))
        else:
            values.append(value)
    if bad:
        number, problem = bad[0]
        message = f"{label}:{number}: {problem}; {hint}"
        if len(bad) > 1:
            more = ", ".join(str(n) for n, _ in bad[1 : 1 + _MORE_LINES_SHOWN])
            etc = ", ..." if len(bad) > 1 + _MORE_LINES_SHOWN else ""
            message += f" ({len(bad) - 1} more bad lines: {more}{etc})"
        raise DatasetError(message)
    if not values:
        raise DatasetError(f"{label}:1: the dataset has no rows; {hint}")

    if fmt == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise DatasetError(
                f"{label}: chat rows need a chat template and the base model's tokenizer has "
                "none; use format: text with the conversation written out as text"
            )
        texts = tokenizer.apply_chat_template(values, tokenize=False)
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(values, add_special_tokens=True)["input_ids"]
        eos = tokenizer.eos_token_id
        if isinstance(eos, int):
            ids = [row if row and row[-1] == eos else [*row, eos] for row in ids]
    return [list(row[:seq_len]) for row in ids]


def load_tokenizer(base_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a local model folder (no hub, no remote code)."""
    from transformers import AutoTokenizer

    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(base_dir), trust_remote_code=False, local_files_only=True
    )
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Distributed set-up


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not an address: write ip:port, like 10.0.0.5:29500")
    return host.strip("[]"), int(port)


def _default_ip() -> str:
    """This host's IP on its default route (what other machines reach); 127.0.0.1 if none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP: no packet is sent
            ip: str = probe.getsockname()[0]
            return ip
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def pick_master_address(host: str | None = None) -> str:
    """ "ip:port" for rank 0 to listen on: a free TCP port on `host` (default: this host's IP on
    its default route; the Ray glue passes the node IP that other Ray nodes reach)."""
    ip = host or _default_ip()
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, 0))
        port = int(s.getsockname()[1])
    return f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"


def _interface_of(ip: str) -> str | None:
    """The name of the network interface that holds `ip` (psutil), or None."""
    try:
        psutil = importlib.import_module("psutil")  # Ray's dependency; no type stubs here
    except ImportError:
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addresses):
            return str(name)
    return None


def init_distributed(
    master_addr: str,
    rank: int,
    world_size: int,
    backend: str = "gloo",
    timeout_s: float = 300.0,
    local_ip: str | None = None,
) -> None:
    """Join the torch.distributed group whose rank 0 listens on `master_addr` ("ip:port").

    gloo on CPU, nccl on GPUs. Blocks until all `world_size` ranks have joined, or raises after
    `timeout_s`. `local_ip`, this node's address as the other ranks reach it, makes gloo use
    the interface that holds it (GLOO_SOCKET_IFNAME, unless set): by default gloo binds to
    what the hostname resolves to, which on many hosts is a loopback address.
    """
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialised in this process")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a group of {world_size}")
    if backend == "gloo" and local_ip and "GLOO_SOCKET_IFNAME" not in os.environ:
        interface = _interface_of(local_ip)
        if interface:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    host, port = _host_port(master_addr)
    url_host = f"[{host}]" if ":" in host else host
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{url_host}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


# ---------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class StepStats:
    """One optimiser step: its number (from 1), the global batch's mean token loss, the tokens
    of all ranks (padding not counted), and the wall time of the step on this rank."""

    step: int
    loss: float
    tokens: int
    seconds: float


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 over them); the same in every process."""
    state = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for value in values:
        state = (state ^ (value & mask)) * 0xBF58476D1CE4E5B9 & mask
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & mask
        state ^= state >> 29
    return state >> 1


def _scheduler_name(name: str) -> str:
    # transformers' "constant" ignores warm-up; "constant_with_warmup" is constant after it.
    return "constant_with_warmup" if name == "constant" else name


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Trainer:
    """LoRA fine-tuning of the model in `base_dir` on `examples` (token ids), one rank's share.

    `section` is the job's `finetune` section as a dict (defaults filled in by
    `FineTuneSection`). With `world_size` > 1, call `init_distributed` first: every rank builds
    a Trainer with the same examples and section, and calls `train_step` in lockstep.
    """

    def __init__(
        self,
        base_dir: str | Path,
        examples: Sequence[Sequence[int]],
        section: dict[str, Any],
        *,
        rank: int = 0,
        world_size: int = 1,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from scheduler.spec_sections import FineTuneSection

        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        self.section = FineTuneSection.model_validate(section)
        train = self.section.training
        if not examples:
            raise ValueError("no training examples: the datasets gave no rows")
        if any(len(row) == 0 for row in examples):
            raise ValueError("an example has no tokens")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a group of {world_size}")
        if world_size > 1 and not dist.is_initialized():
            raise RuntimeError(f"{world_size} ranks need torch.distributed: call init_distributed")
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.dtype = torch.bfloat16 if bf16 else torch.float32

        self._rows = [torch.tensor(list(row), dtype=torch.long) for row in examples]
        self._lengths = [len(row) for row in examples]
        self._seed = train.seed
        self._dropout = self.section.lora.dropout
        self._micro = train.batch_size
        self._accum = train.gradient_accumulation_steps
        self.global_batch = self._micro * self._accum * world_size
        self.total_steps = self._total_steps(0, 0)

        base = Path(base_dir)
        if not (base / "config.json").is_file():
            raise ValueError(f"{base}: not a model folder (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(
            str(base),
            dtype=self.dtype,
            trust_remote_code=False,
            use_safetensors=True,
            local_files_only=True,
        )
        model.config.use_cache = False
        lora = self.section.lora
        torch.manual_seed(self._seed)  # the same LoRA initialisation on every rank
        with warnings.catch_warnings():
            # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
            )
            peft_model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft says int; floats work
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules,
                    bias="none",
                    task_type="CAUSAL_LM",
                ),
            )
        self.model = peft_model.to(self.device)
        self.model.train()

        # Gradients live in one flat buffer (its last slot holds the loss), so that one
        # all_reduce per optimiser step sums both over the ranks and one zero_() clears them.
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        dtypes = {p.dtype for p in self._params}
        if len(dtypes) != 1:
            raise RuntimeError(f"LoRA parameters of several dtypes: {sorted(map(str, dtypes))}")
        numel = sum(p.numel() for p in self._params)
        self._flat = torch.zeros(numel + 1, dtype=dtypes.pop(), device=self.device)
        if world_size > 1:  # start from rank 0's weights, whatever the ranks' hardware did
            offset = 0
            for p in self._params:
                self._flat[offset : offset + p.numel()].copy_(p.detach().reshape(-1))
                offset += p.numel()
            dist.broadcast(self._flat, 0)
        offset = 0
        for p in self._params:
            view = self._flat[offset : offset + p.numel()].view_as(p)
            if world_size > 1:
                p.data.copy_(view)
            p.grad = view
            offset += p.numel()
        self._flat.zero_()
        self._loss_slot = self._flat[numel:]

        self.optimizer = torch.optim.AdamW(
            self._params,
            lr=train.learning_rate,
            weight_decay=train.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.scheduler = self._new_scheduler()
        self.step = 0
        self.losses: list[tuple[int, float]] = []
        self._position = 0  # examples of the stream consumed by the steps so far
        self._perms: dict[int, list[int]] = {}

    # -- data order ---------------------------------------------------------------------------

    def _total_steps(self, step: int, position: int) -> int:
        train = self.section.training
        if train.max_steps is not None:
            return train.max_steps
        epochs = train.epochs if train.epochs is not None else 1.0
        left = max(0.0, epochs * len(self._rows) - position)
        return step + math.ceil(left / self.global_batch)

    def _new_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        from transformers import get_scheduler

        train = self.section.training
        scheduler: torch.optim.lr_scheduler.LRScheduler = get_scheduler(
            _scheduler_name(str(train.lr_scheduler)),
            self.optimizer,
            num_warmup_steps=train.warmup_steps,
            num_training_steps=self.total_steps,
        )
        return scheduler

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(_mix(self._seed, epoch))
            if len(self._perms) > 1:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(len(self._rows), generator=generator).tolist()
        return self._perms[epoch]

    def _stream(self, start: int, count: int) -> list[int]:
        out: list[int] = []
        position = start
        while len(out) < count:
            epoch, offset = divmod(position, len(self._rows))
            take = min(count - len(out), len(self._rows) - offset)
            out.extend(self._permutation(epoch)[offset : offset + take])
            position += take
        return out

    def _micro_batches(self, rows: list[int]) -> list[list[int]]:
        width = self._micro * self.world_size
        first = self.rank * self._micro
        return [
            rows[m * width + first : m * width + first + self._micro] for m in range(self._accum)
        ]

    def next_batch_indices(self) -> list[list[int]]:
        """The examples (indices) this rank trains on in the next step, per micro-batch."""
        return self._micro_batches(self._stream(self._position, self.global_batch))

    # -- the step -----------------------------------------------------------------------------

    def _collate(self, indices: list[int]) -> dict[str, torch.Tensor | None]:
        """Rows padded to the longest: one host-to-device copy; padding is -100 in the labels
        and masked out of attention (no mask at all when the rows are of one length)."""
        labels = torch.nn.utils.rnn.pad_sequence(
            [self._rows[i] for i in indices], batch_first=True, padding_value=IGNORE_INDEX
        ).to(self.device, non_blocking=True)
        ragged = len({self._lengths[i] for i in indices}) > 1
        return {
            "input_ids": labels.clamp(min=0) if ragged else labels,
            "attention_mask": labels.ne(IGNORE_INDEX).long() if ragged else None,
            "labels": labels,
        }

    def train_step(self) -> StepStats:
        """One optimiser step over the next global batch; every rank must call it."""
        if self.step >= self.total_steps:
            raise RuntimeError(f"training is complete: all {self.total_steps} steps are done")
        started = time.perf_counter()
        step = self.step + 1
        rows = self._stream(self._position, self.global_batch)
        tokens = sum(self._lengths[i] for i in rows)
        targets = max(1, tokens - len(rows))  # each row predicts all its tokens but the first
        if self._dropout > 0:  # dropout masks depend on (seed, rank, step) only: exact resumes
            torch.manual_seed(_mix(self._seed, self.rank, step))
        for indices in self._micro_batches(rows):
            if not indices:
                continue
            out = self.model(**self._collate(indices), num_items_in_batch=targets, use_cache=False)
            out.loss.backward()
            self._loss_slot += out.loss.detach()
        if self.world_size > 1:
            dist.all_reduce(self._flat)
        torch.nn.utils.clip_grad_norm_(self._params, self.section.training.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        loss = float(self._loss_slot.item())
        self._flat.zero_()
        self.step = step
        self._position += self.global_batch
        self.losses.append((step, loss))
        return StepStats(step=step, loss=loss, tokens=tokens, seconds=time.perf_counter() - started)

    # -- saving and resuming -------------------------------------------------------------------

    def save_adapter(self, folder: str | Path) -> Path:
        """adapter_config.json + adapter_model.safetensors in `folder` (peft's layout, which
        vLLM's LoRA loader reads); returns `folder`."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out), safe_serialization=True)
        return out

    def save_checkpoint(self, folder: str | Path) -> Path:
        """Everything a new Trainer needs to continue after this step (call it on rank 0):
        the adapter, optimizer and scheduler states, RNG states, step, data position, losses."""
        out = self.save_adapter(folder)
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
        }
        tmp = out / (STATE_PT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, out / STATE_PT)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "position": self._position,
            "total_steps": self.total_steps,
            "global_batch": self.global_batch,
            "world_size": self.world_size,
            "examples": len(self._rows),
            "seed": self._seed,
            "losses": [[s, loss] for s, loss in self.losses],
        }
        _write_atomic(out / STATE_JSON, json.dumps(meta).encode())
        return out

    def load_checkpoint(self, folder: str | Path) -> None:
        """Continue from a checkpoint: the next step is the one after the saved step, on the
        data that follows it, and the loss history goes on from the saved one."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        src = Path(folder)
        missing = [n for n in (STATE_JSON, STATE_PT, ADAPTER_WEIGHTS) if not (src / n).is_file()]
        if missing:
            raise ValueError(f"{src}: not a complete checkpoint (missing {', '.join(missing)})")
        meta = json.loads((src / STATE_JSON).read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{src}: checkpoint format {meta.get('format')!r} is not supported")
        if meta["examples"] != len(self._rows) or meta["seed"] != self._seed:
            raise ValueError(
                f"{src}: the checkpoint was trained on {meta['examples']} examples with seed "
                f"{meta['seed']}; this run has {len(self._rows)} with seed {self._seed}: resume "
                "with the same datasets and seed"
            )
        weights = load_file(str(src / ADAPTER_WEIGHTS), device=str(self.device))
        if len(weights) != len(self._params):
            raise ValueError(
                f"{src}: the adapter holds {len(weights)} tensors, this LoRA has "
                f"{len(self._params)}: resume with the same lora settings"
            )
        result = set_peft_model_state_dict(self.model, weights)
        unexpected = list(getattr(result, "unexpected_keys", []))  # peft types it "namedtuple"
        if unexpected:
            raise ValueError(f"{src}: adapter tensors this model lacks: {unexpected[:5]}")
        state = torch.load(src / STATE_PT, map_location="cpu", weights_only=True)
        self.step = int(meta["step"])
        self._position = int(meta["position"])
        resized = meta["global_batch"] != self.global_batch  # resumed on another number of ranks
        if resized:
            self.total_steps = self._total_steps(self.step, self._position)
            self.scheduler = self._new_scheduler()
        else:
            self.total_steps = int(meta["total_steps"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if resized and isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            # the saved learning rate was on the old schedule: take the new one's at this step
            for group, base, factor in zip(
                self.optimizer.param_groups,
                self.scheduler.base_lrs,
                self.scheduler.lr_lambdas,
                strict=True,
            ):
                group["lr"] = base * factor(self.scheduler.last_epoch)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            if len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.losses = [(int(s), float(loss)) for s, loss in meta["losses"]]
