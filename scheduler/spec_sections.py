"""The parts of a job spec below its header, and the field types they are built from.

Each kind of job adds one section named after it (``finetune:``, ``batch:``, ``service:`` or
``probe:``); this module defines those sections, the enums and nested settings they hold, and the
value checks and field types (model references, paths, durations, DNS labels, GPU names) that the
sections and the job header in `scheduler.spec` share. Every model forbids unknown keys
(`StrictModel`). Import job specs from `scheduler.spec`, which re-exports the names here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MAX_PATH_CHARS = 4096


class Engine(StrEnum):
    """The inference engine."""

    vllm = "vllm"
    transformers = "transformers"


class Access(StrEnum):
    """Who may call a Service."""

    public = "public"
    community = "community"


class LrScheduler(StrEnum):
    """The learning-rate schedule after warm-up."""

    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class DatasetFormat(StrEnum):
    """How the rows of a dataset are read."""

    text = "text"
    chat = "chat"


# ---------------------------------------------------------------------------------------------
# Value checks shared by several fields


_DNS_LABEL_RE = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_MODEL_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._-]{0,98}[a-z0-9])?")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
_DURATION_RE = re.compile(
    r"(?:(?P<d>[0-9]+(?:\.[0-9]+)?)d)?(?:(?P<h>[0-9]+(?:\.[0-9]+)?)h)?"
    r"(?:(?P<m>[0-9]+(?:\.[0-9]+)?)m)?(?:(?P<s>[0-9]+(?:\.[0-9]+)?)s)?"
)
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_HINT = "write seconds (5400) or a duration like '90s', '45m', '2h', '1h30m', '1d'"


def parse_duration(value: str | float | int) -> float:
    """Seconds in `value`: a number of seconds or a string such as "90s", "2h", "1h30m", "1d"."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"not a duration: {value!r}; {_DURATION_HINT}")
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION_RE.fullmatch(text)
            if not text or match is None or not any(match.groupdict().values()):
                raise ValueError(f"not a duration: {value!r}; {_DURATION_HINT}") from None
            seconds = sum(
                float(amount) * _DURATION_UNITS[unit]
                for unit, amount in match.groupdict().items()
                if amount is not None
            )
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}; {_DURATION_HINT}")
    return seconds


def _optional_duration(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


def _suggest_label(value: str) -> str | None:
    guess = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")
    guess = re.sub(r"-{2,}", "-", guess)[:63].rstrip("-")
    return guess if _DNS_LABEL_RE.fullmatch(guess) and guess != value else None


def _check_dns_label(value: str) -> str:
    if _DNS_LABEL_RE.fullmatch(value):
        return value
    message = (
        f"{value!r} is not a DNS label: use lowercase letters, digits and '-', start with a "
        "letter, end with a letter or digit, at most 63 characters"
    )
    guess = _suggest_label(value)
    raise ValueError(message + (f"; try '{guess}'" if guess else ""))


def is_local_path(ref: str) -> bool:
    """True when a model reference is a folder ("/", "./", "../", "~/"), not a registry name."""
    return ref.startswith(("/", "./", "../", "~/"))


ARTIFACT_PREFIX = "sha256:"
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def artifact_digest(ref: str) -> str | None:
    """The SHA-256 of an uploaded artifact reference ("sha256:<64 hex>"), else None.

    `meshctl submit` uploads the local files and folders a job names and rewrites their paths
    into such references; the mesh itself never reads a path on the submitter's machine.
    """
    if ref.startswith(ARTIFACT_PREFIX) and _DIGEST_RE.fullmatch(ref[len(ARTIFACT_PREFIX) :]):
        return ref[len(ARTIFACT_PREFIX) :]
    return None


def check_registry_name(value: str) -> str:
    """`value` if it is a registry name (community/name); else a ValueError saying why."""
    community, _, name = value.partition("/")
    if _DNS_LABEL_RE.fullmatch(community) and _MODEL_NAME_RE.fullmatch(name):
        return value
    raise ValueError(
        f"{value!r} is not a registry name: write community/name in lowercase letters, digits "
        "and '-' (the name may also hold '.' and '_')"
    )


def _check_path(value: str) -> str:
    if not value or len(value) > MAX_PATH_CHARS or "\x00" in value:
        raise ValueError(f"not a usable path: give 1 to {MAX_PATH_CHARS} characters")
    return value


def _check_model_ref(value: str) -> str:
    if is_local_path(value) or artifact_digest(value):
        return _check_path(value)
    try:
        return check_registry_name(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a registry name (community/name, lowercase) nor a folder "
            "path (starting with '/', './', '../' or '~/') nor an uploaded folder (sha256:HEX)"
        ) from None


def _check_module_name(value: str) -> str:
    if not _MODULE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a module name (like q_proj or self_attn.o_proj)")
    return value


def _resolve_gpu_type(value: str) -> str:
    from scheduler import gpus  # imported here so that the spec loads before the catalogue

    return gpus.resolve(value).name


def unique_in_order(values: list[str] | None) -> list[str] | None:
    """`values` without repeats, in first-seen order; None stays None."""
    return None if values is None else list(dict.fromkeys(values))


def _compute_capability(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (value[0], value[1])
    from scheduler import gpus  # imported here so that the spec loads before the catalogue

    return gpus.parse_compute_capability(value)


DnsLabel = Annotated[
    str,
    AfterValidator(_check_dns_label),
    WithJsonSchema({"type": "string", "pattern": f"^{_DNS_LABEL_RE.pattern}$", "maxLength": 63}),
]
RegistryName = Annotated[str, AfterValidator(check_registry_name)]
ModelRef = Annotated[str, AfterValidator(_check_model_ref)]
DataPath = Annotated[str, AfterValidator(_check_path)]
GpuTypeName = Annotated[str, AfterValidator(_resolve_gpu_type)]
ModuleName = Annotated[str, AfterValidator(_check_module_name)]
Duration = Annotated[
    float | None,
    BeforeValidator(_optional_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^(\d+(\.\d+)?[dhms])+$"},
                {"type": "null"},
            ]
        }
    ),
]
ComputeCapability = Annotated[
    tuple[int, int] | None,
    BeforeValidator(_compute_capability),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+\.\d+$"},
                {"type": "number"},
                {"type": "null"},
            ]
        }
    ),
]


class StrictModel(BaseModel):
    """A model that refuses unknown keys, so that a misspelt key is an error."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Sections shared by inference kinds


class Sampling(StrictModel):
    """Default sampling parameters for generated text."""

    temperature: Annotated[
        float, Field(ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    ] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")] = 1.0
    max_tokens: Annotated[
        int, Field(ge=1, le=32768, description="Most tokens generated per request.")
    ] = 256
    seed: Annotated[
        int | None, Field(ge=0, le=2**63 - 1, description="Seed for reproducible sampling.")
    ] = None
    stop: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]],
        Field(max_length=16, description="Strings that end generation."),
    ] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# FineTune


class Dataset(StrictModel):
    """One training dataset: a JSONL file or a dataset folder."""

    path: Annotated[DataPath, Field(description="File or folder of training rows (JSONL).")]
    format: Annotated[
        DatasetFormat,
        Field(description="text: one text field per row; chat: a list of chat messages."),
    ] = DatasetFormat.text
    text_field: Annotated[
        str, Field(min_length=1, max_length=128, description="Row field holding text.")
    ] = "text"
    messages_field: Annotated[
        str,
        Field(min_length=1, max_length=128, description="Row field holding chat messages."),
    ] = "messages"
    split: Annotated[
        str | None,
        Field(min_length=1, max_length=64, description="Split to read, such as train."),
    ] = None


class LoRA(StrictModel):
    """The LoRA adapter trained on top of the base model."""

    r: Annotated[int, Field(ge=1, le=512, description="LoRA rank.")] = 16
    alpha: Annotated[float, Field(gt=0, le=4096, description="LoRA scaling (alpha).")] = 32
    dropout: Annotated[float, Field(ge=0.0, lt=1.0, description="LoRA dropout.")] = 0.05
    target_modules: Annotated[
        Literal["all-linear"] | list[ModuleName],
        Field(
            description="Modules that get adapters: a list such as [q_proj, v_proj], or "
            '"all-linear".'
        ),
    ] = Field(default_factory=lambda: ["q_proj", "v_proj"])

    @field_validator("target_modules", mode="before")
    @classmethod
    def _list_or_all_linear(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            raise ValueError(
                f"give a list of module names (like [q_proj, v_proj]) or 'all-linear'; "
                f"got {value!r}"
            )
        if isinstance(value, list) and not 1 <= len(value) <= 64:
            raise ValueError("give 1 to 64 module names")
        return value


class Training(StrictModel):
    """Optimiser and schedule. Give epochs or max_steps (default: 1 epoch)."""

    epochs: Annotated[float | None, Field(gt=0, le=1000, description="Passes over the data.")] = (
        None
    )
    max_steps: Annotated[
        int | None,
        Field(gt=0, le=10_000_000, description="Optimiser steps, instead of epochs."),
    ] = None
    learning_rate: Annotated[float, Field(gt=0, le=1, description="Peak learning rate.")] = 2e-4
    lr_scheduler: Annotated[LrScheduler, Field(description="Schedule after warm-up.")] = (
        LrScheduler.cosine
    )
    warmup_steps: Annotated[int, Field(ge=0, le=1_000_000, description="Linear warm-up steps.")] = 0
    batch_size: Annotated[int, Field(ge=1, le=1024, description="Sequences per GPU per step.")] = 4
    gradient_accumulation_steps: Annotated[
        int, Field(ge=1, le=1024, description="Micro-batches per optimiser step.")
    ] = 1
    seq_len: Annotated[
        int, Field(ge=16, le=131072, description="Tokens per sequence (longer rows are cut).")
    ] = 1024
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0, description="AdamW weight decay.")] = 0.0
    max_grad_norm: Annotated[
        float, Field(gt=0, le=10_000, description="Gradient clipping norm.")
    ] = 1.0
    seed: Annotated[int, Field(ge=0, le=2**32 - 1, description="Seed for data order, init.")] = 0

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> Training:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("give epochs or max_steps, not both")
        if self.epochs is None and self.max_steps is None:
            self.epochs = 1.0
        return self


class Output(StrictModel):
    """Where the trained adapter is registered."""

    name: Annotated[
        str | None,
        Field(
            description="Registry name of the result: community/name or a name in the job's "
            "community. Default: the job's community/name."
        ),
    ] = None


class FineTuneSection(StrictModel):
    """Fine-tune a base model with LoRA on the community's datasets."""

    base_model: Annotated[
        ModelRef,
        Field(description="Registry name (community/name) or a folder path (/..., ./..., ~/...)."),
    ]
    datasets: Annotated[
        list[Dataset], Field(min_length=1, max_length=64, description="Training datasets.")
    ]
    lora: Annotated[LoRA, Field(description="LoRA adapter settings.")] = Field(default_factory=LoRA)
    training: Annotated[Training, Field(description="Optimiser and schedule.")] = Field(
        default_factory=Training
    )
    checkpoint_every: Annotated[
        Literal["auto"] | Annotated[int, Field(gt=0, le=10_000_000)],
        Field(
            description='Optimiser steps between checkpoints, or "auto": the Young/Daly '
            "interval from the measured checkpoint cost and the nodes' expected time to failure."
        ),
    ] = "auto"
    output: Annotated[Output, Field(description="Where the trained adapter goes.")] = Field(
        default_factory=Output
    )


# ---------------------------------------------------------------------------------------------
# BatchInference, Service, Probe


class BatchSection(StrictModel):
    """Generate completions for every row of a JSONL file."""

    model: Annotated[
        ModelRef, Field(description="Registry name (community/name) or a folder path.")
    ]
    adapter: Annotated[
        RegistryName | None, Field(description="LoRA adapter (registry name) to apply.")
    ] = None
    input: Annotated[
        DataPath, Field(description='JSONL file; each row holds "prompt" or "messages".')
    ]
    engine: Annotated[Engine, Field(description="Inference engine.")] = Engine.vllm
    max_model_len: Annotated[
        int | None, Field(ge=16, le=1_048_576, description="Context length to allocate for.")
    ] = None
    sampling: Annotated[Sampling, Field(description="Sampling parameters.")] = Field(
        default_factory=Sampling
    )


class Replicas(StrictModel):
    """How many copies of a Service run; between min and max, by load."""

    min: Annotated[int, Field(ge=1, le=64, description="Replicas always running.")] = 1
    max: Annotated[
        int, Field(ge=1, le=64, description="Most replicas under load (default: min).")
    ] = 1
    target_ongoing_requests: Annotated[
        int, Field(ge=1, le=1024, description="Requests in flight per replica before scaling.")
    ] = 8

    @model_validator(mode="before")
    @classmethod
    def _max_defaults_to_min(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "min" in data and "max" not in data:
            return {**data, "max": data["min"]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class ServiceSection(StrictModel):
    """Serve a model (and its adapters) over the OpenAI-compatible API."""

    model: Annotated[
        ModelRef, Field(description="Registry name (community/name) or a folder path.")
    ]
    adapters: Annotated[
        list[RegistryName],
        Field(max_length=64, description="LoRA adapters served beside the model."),
    ] = Field(default_factory=list)
    replicas: Annotated[Replicas, Field(description="Replica count.")] = Field(
        default_factory=Replicas
    )
    engine: Annotated[Engine, Field(description="Inference engine.")] = Engine.vllm
    access: Annotated[
        Access, Field(description="public: anyone; community: members' tokens only.")
    ] = Access.community
    max_model_len: Annotated[
        int | None, Field(ge=16, le=1_048_576, description="Context length to allocate for.")
    ] = None
    sampling: Annotated[
        Sampling, Field(description="Defaults for requests that do not set them.")
    ] = Field(default_factory=Sampling)


class ProbeSection(StrictModel):
    """Check that GPUs work and measure their speed with a matrix multiply."""

    duration_s: Annotated[float, Field(ge=1, le=3600, description="Seconds to run the check.")] = 30
    matmul_size: Annotated[
        int, Field(ge=256, le=16384, description="Side of the square matrices multiplied.")
    ] = 4096
