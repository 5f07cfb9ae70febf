"""Job specs: what a community asks the mesh to run, as written in a job.yaml (apiVersion mesh/v1).

Four kinds share a header (name, community, priority, resources) and each adds a section named
after it: ``finetune:``, ``batch:``, ``service:`` or ``probe:``. Every model forbids unknown keys,
so a misspelt key is an error that suggests the right one; `parse_job` and `load_jobs` turn every
problem into a line such as ``job.yaml: finetune.lora.r: Input should be greater than 0``.

Only `load_jobs` touches the file system. GPU names resolve through `scheduler.gpus`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from scheduler.documents import SpecError, load_documents, validate_document

API_VERSION = "mesh/v1"


class Kind(StrEnum):
    """The workload kind of a job; the value is what users write after ``kind:``."""

    FineTune = "FineTune"
    BatchInference = "BatchInference"
    Service = "Service"
    Probe = "Probe"


class Priority(StrEnum):
    """How urgent a job is within its community's share."""

    low = "low"
    normal = "normal"
    high = "high"

    @property
    def order(self) -> int:
        """0 for low, 1 for normal, 2 for high: larger runs first."""
        return _PRIORITY_ORDER[self]


_PRIORITY_ORDER: dict[Priority, int] = {Priority.low: 0, Priority.normal: 1, Priority.high: 2}


class Placement(StrEnum):
    """How a job's bundles are spread over nodes (Ray placement group strategies)."""

    pack = "pack"
    spread = "spread"
    strict_pack = "strict_pack"


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


# One entry per kind; a new kind without an entry fails at import.
_SECTION: dict[Kind, str] = {
    Kind.FineTune: "finetune",
    Kind.BatchInference: "batch",
    Kind.Service: "service",
    Kind.Probe: "probe",
}
_PREEMPTIBLE: dict[Kind, bool] = {
    Kind.FineTune: True,
    Kind.BatchInference: True,
    Kind.Service: False,
    Kind.Probe: False,
}
_DEFAULT_RUNTIME_S: dict[Kind, float | None] = {
    Kind.FineTune: 4 * 3600.0,
    Kind.BatchInference: 3600.0,
    Kind.Service: None,  # runs until stopped
    Kind.Probe: 60.0,  # to start, plus probe.duration_s
}
for _table in (_SECTION, _PREEMPTIBLE, _DEFAULT_RUNTIME_S):
    if set(_table) != set(Kind):
        raise RuntimeError(f"spec tables must cover every Kind; missing {set(Kind) - set(_table)}")

MAX_EXPECTED_RUNTIME_S = 30 * 24 * 3600.0
MAX_PATH_CHARS = 4096

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


def _check_registry_name(value: str) -> str:
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
    if is_local_path(value):
        return _check_path(value)
    try:
        return _check_registry_name(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a registry name (community/name, lowercase) nor a folder "
            "path (starting with '/', './', '../' or '~/')"
        ) from None


def _check_module_name(value: str) -> str:
    if not _MODULE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a module name (like q_proj or self_attn.o_proj)")
    return value


def _resolve_gpu_type(value: str) -> str:
    from scheduler import gpus  # imported here so that the spec loads before the catalogue

    return gpus.resolve(value).name


def _unique(values: list[str] | None) -> list[str] | None:
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
RegistryName = Annotated[str, AfterValidator(_check_registry_name)]
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Resources


class Resources(_Strict):
    """What each bundle of a job needs: GPUs, their memory and model, CPUs and host memory."""

    gpus: Annotated[
        int,
        Field(
            ge=0,
            le=64,
            description="GPUs for the job; each is its own bundle (worker / shard). "
            "0 makes a CPU-only job.",
        ),
    ] = 1
    gpu_memory_gb: Annotated[
        float | None,
        Field(
            gt=0,
            le=1024,
            description="GPU memory needed on each GPU, in GB. A non-exclusive job that needs "
            "less than a GPU has may share that GPU.",
        ),
    ] = None
    cpus: Annotated[
        float, Field(gt=0, le=512, description="CPU cores per bundle (worker or replica).")
    ] = 1
    memory_gb: Annotated[
        float, Field(gt=0, le=4096, description="Host memory per bundle, in GB.")
    ] = 4
    gpu_types: Annotated[
        list[GpuTypeName] | None,
        AfterValidator(_unique),
        Field(
            min_length=1,
            max_length=32,
            description="Allow-list of GPU models (catalogue names or aliases such as "
            "RTX-4090, 4090, A100-80GB); stored as catalogue names.",
        ),
    ] = None
    min_compute_capability: Annotated[
        ComputeCapability,
        Field(description='Lowest CUDA compute capability accepted, such as "8.0" or 8.6.'),
    ] = None
    placement: Annotated[
        Placement,
        Field(
            description="pack: as few nodes as possible; spread: one bundle per node where "
            "possible; strict_pack: all bundles on one node."
        ),
    ] = Placement.pack
    exclusive: Annotated[
        bool,
        Field(
            description="Whole GPUs only, never shared with other jobs. Default: true for "
            "FineTune, false for the other kinds."
        ),
    ] = False

    @field_validator("exclusive", mode="before")
    @classmethod
    def _exclusive_default(cls, value: Any) -> Any:
        return cls.model_fields["exclusive"].default if value is None else value

    @field_validator("gpu_memory_gb", "gpu_types", "min_compute_capability")
    @classmethod
    def _needs_gpus(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("gpus") == 0:
            raise ValueError("needs gpus >= 1; this job asks for gpus: 0 (CPU-only)")
        return value


class FineTuneResources(Resources):
    """Resources of a FineTune: one GPU per training worker; whole GPUs unless told otherwise."""

    exclusive: Annotated[
        bool,
        Field(
            description="Whole GPUs only, never shared with other jobs (default true for a "
            "FineTune; false lets a small fine-tune share a GPU)."
        ),
    ] = True


class ServiceResources(Resources):
    """Resources of one Service replica; its GPUs are one node's (tensor parallel)."""

    gpus: Annotated[
        int,
        Field(
            ge=0,
            le=64,
            description="GPUs per replica, all on one node (tensor parallel). 0 serves on CPU.",
        ),
    ] = 1
    placement: Annotated[
        Placement,
        Field(
            description="pack or strict_pack: a replica's GPUs are always on one node; spread "
            "is not allowed."
        ),
    ] = Placement.pack

    @field_validator("placement")
    @classmethod
    def _one_node(cls, value: Placement) -> Placement:
        if value is Placement.spread:
            raise ValueError(
                "spread is not allowed for a Service: each replica runs on one node; "
                "use pack or strict_pack"
            )
        return value


class ProbeResources(Resources):
    """Resources of a Probe: the GPUs it checks."""

    gpus: Annotated[
        int, Field(ge=1, le=64, description="GPUs to check; one bundle each (at least 1).")
    ] = 1

    @field_validator("gpus", mode="before")
    @classmethod
    def _some_gpus(cls, value: Any) -> Any:
        if value == 0 and not isinstance(value, bool):
            raise ValueError("a Probe checks GPUs; it needs gpus >= 1")
        return value


# ---------------------------------------------------------------------------------------------
# Sections shared by inference kinds


class Sampling(_Strict):
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


class Dataset(_Strict):
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


class LoRA(_Strict):
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


class Training(_Strict):
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


class Output(_Strict):
    """Where the trained adapter is registered."""

    name: Annotated[
        str | None,
        Field(
            description="Registry name of the result: community/name or a name in the job's "
            "community. Default: the job's community/name."
        ),
    ] = None


class FineTuneSection(_Strict):
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


class BatchSection(_Strict):
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


class Replicas(_Strict):
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


class ServiceSection(_Strict):
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


class ProbeSection(_Strict):
    """Check that GPUs work and measure their speed with a matrix multiply."""

    duration_s: Annotated[float, Field(ge=1, le=3600, description="Seconds to run the check.")] = 30
    matmul_size: Annotated[
        int, Field(ge=256, le=16384, description="Side of the square matrices multiplied.")
    ] = 4096


# ---------------------------------------------------------------------------------------------
# Jobs


def _problem(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("job_spec", message), loc=loc, input=value)


def _again(error: ErrorDetails) -> InitErrorDetails:
    """An error from an inner validation, to raise again beside our own."""
    return InitErrorDetails(
        type=PydanticCustomError(error["type"], error["msg"]),
        loc=error["loc"],
        input=error["input"],
    )


def _fail(title: str, problems: list[InitErrorDetails]) -> ValidationError:
    # pydantic passes a ValidationError raised in a validator on with each error's location
    return ValidationError.from_exception_data(title, problems)


class JobBase(_Strict):
    """Fields every job has. Use `JobSpec` (the union of the four kinds) to read one."""

    _section: ClassVar[str | None] = None

    api_version: Annotated[
        Literal["mesh/v1"], Field(alias="apiVersion", description="Spec version: mesh/v1.")
    ]
    kind: Annotated[Kind, Field(description="Workload kind.")]
    name: Annotated[DnsLabel, Field(description="Job name, unique in its community (a DNS label).")]
    community: Annotated[DnsLabel, Field(description="Community that submits the job.")]
    description: Annotated[
        str | None, Field(max_length=500, description="Free text shown in listings.")
    ] = None
    priority: Annotated[
        Priority, Field(description="low, normal or high, within the community's share.")
    ] = Priority.normal
    max_retries: Annotated[
        int,
        Field(
            ge=0,
            le=10,
            description="Retries after the job itself fails (preemptions and lost nodes "
            "do not count).",
        ),
    ] = 2
    expected_runtime: Annotated[
        Duration,
        Field(
            gt=0,
            le=MAX_EXPECTED_RUNTIME_S,
            description='Expected run time: seconds or "90s", "45m", "2h", "1h30m", "1d". '
            "Used to backfill idle GPUs.",
        ),
    ] = None
    resources: Annotated[Resources, Field(description="What each bundle needs.")] = Field(
        default_factory=Resources
    )

    @model_validator(mode="wrap")
    @classmethod
    def _sections_match_kind(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """`finetune:` in a BatchInference is an error that names the right section."""
        own = cls._section
        if own is None or not isinstance(data, Mapping):
            return handler(data)
        misplaced = [key for key in data if key in _SECTION.values() and key != own]
        if not misplaced:
            return handler(data)
        kind = data.get("kind")
        problems = [
            _problem((key,), f"not allowed for kind {kind}; use '{own}'", data[key])
            for key in misplaced
        ]
        try:
            handler({key: value for key, value in data.items() if key not in misplaced})
        except ValidationError as e:
            # "<own>: required" says again what "use '<own>'" already said
            problems += [
                _again(err)
                for err in e.errors(include_url=False)
                if not (err["type"] == "missing" and tuple(err["loc"]) == (own,))
            ]
        raise _fail(cls.__name__, problems)

    @property
    def job_id(self) -> str:
        """The job's name everywhere: community/name."""
        return f"{self.community}/{self.name}"

    @property
    def preemptible(self) -> bool:
        """Whether the scheduler may stop the job to make room (it resumes later)."""
        return _PREEMPTIBLE[self.kind]

    @property
    def bundle_count(self) -> int:
        """Bundles placed: one per GPU (one GPU each), or 1 for a CPU-only job."""
        return max(self.resources.gpus, 1)

    @property
    def gpus_per_bundle(self) -> int:
        """GPUs in each bundle: 1, or 0 for a CPU-only job."""
        return 1 if self.resources.gpus >= 1 else 0

    @property
    def default_runtime_s(self) -> float | None:
        """expected_runtime if given, else a default for the kind; None runs until stopped."""
        if self.expected_runtime is not None:
            return self.expected_runtime
        return _DEFAULT_RUNTIME_S[self.kind]


class FineTuneJob(JobBase):
    """kind: FineTune: train a LoRA adapter. Preemptible; resumes from its last checkpoint."""

    _section: ClassVar[str | None] = _SECTION[Kind.FineTune]

    kind: Annotated[Literal[Kind.FineTune], Field(description="Workload kind.")]
    resources: Annotated[
        FineTuneResources, Field(description="Per training worker (one GPU each).")
    ] = Field(default_factory=FineTuneResources)
    finetune: Annotated[FineTuneSection, Field(description="What to train and how.")]

    @model_validator(mode="after")
    def _output_in_community(self) -> FineTuneJob:
        given = self.finetune.output.name
        name = given or self.name
        if "/" not in name:
            name = f"{self.community}/{name}"
        community = name.partition("/")[0]
        try:
            _check_registry_name(name)
            if community != self.community:
                raise ValueError(
                    f"{name!r} is in community '{community}'; a job writes only to its own "
                    f"community '{self.community}'"
                )
        except ValueError as e:
            raise _fail(
                type(self).__name__, [_problem(("finetune", "output", "name"), str(e), given)]
            ) from None
        self.finetune.output.name = name
        return self

    @property
    def output_name(self) -> str:
        """Registry name of the adapter this job produces."""
        return self.finetune.output.name or self.job_id


class BatchInferenceJob(JobBase):
    """kind: BatchInference: generate for every row of an input file. Preemptible."""

    _section: ClassVar[str | None] = _SECTION[Kind.BatchInference]

    kind: Annotated[Literal[Kind.BatchInference], Field(description="Workload kind.")]
    batch: Annotated[BatchSection, Field(description="Model, input and sampling.")]


class ServiceJob(JobBase):
    """kind: Service: serve a model until stopped. Not preemptible."""

    _section: ClassVar[str | None] = _SECTION[Kind.Service]

    kind: Annotated[Literal[Kind.Service], Field(description="Workload kind.")]
    resources: Annotated[
        ServiceResources, Field(description="Per replica; a replica runs on one node.")
    ] = Field(default_factory=ServiceResources)
    service: Annotated[ServiceSection, Field(description="Model, adapters and replicas.")]

    @property
    def bundle_count(self) -> int:
        """One bundle per replica (the minimum count is what must be placed)."""
        return self.service.replicas.min

    @property
    def gpus_per_bundle(self) -> int:
        """Each replica holds all its GPUs (tensor parallel)."""
        return self.resources.gpus


class ProbeJob(JobBase):
    """kind: Probe: check the GPUs it is placed on. Not preemptible."""

    _section: ClassVar[str | None] = _SECTION[Kind.Probe]

    kind: Annotated[Literal[Kind.Probe], Field(description="Workload kind.")]
    resources: Annotated[ProbeResources, Field(description="GPUs to check.")] = Field(
        default_factory=ProbeResources
    )
    probe: Annotated[ProbeSection, Field(description="How long and how hard.")] = Field(
        default_factory=ProbeSection
    )

    @property
    def default_runtime_s(self) -> float | None:
        """expected_runtime if given, else the probe's duration plus a minute to start."""
        if self.expected_runtime is not None:
            return self.expected_runtime
        return self.probe.duration_s + (_DEFAULT_RUNTIME_S[Kind.Probe] or 0.0)


AnyJob = FineTuneJob | BatchInferenceJob | ServiceJob | ProbeJob
JobSpec = Annotated[AnyJob, Field(discriminator="kind")]

_MODELS: dict[Kind, type[AnyJob]] = {
    Kind.FineTune: FineTuneJob,
    Kind.BatchInference: BatchInferenceJob,
    Kind.Service: ServiceJob,
    Kind.Probe: ProbeJob,
}
_KIND_VALUES = [k.value for k in Kind]
_KINDS_TEXT = ", ".join(_KIND_VALUES)


def _kind_problem(value: Any) -> str | None:
    if value is None:
        return f"kind: required; one of {_KINDS_TEXT}"
    if isinstance(value, str) and value in _KIND_VALUES:
        return None
    message = f"kind: must be one of {_KINDS_TEXT}; got {value!r}"
    if isinstance(value, str):
        by_lower = {k.value.lower(): k.value for k in Kind}
        close = difflib.get_close_matches(value.lower(), list(by_lower), n=1, cutoff=0.6)
        if close:
            message += f" — did you mean '{by_lower[close[0]]}'?"
    return message


def parse_job(data: Any, *, source: str) -> JobSpec:
    """Validate one job document; raises SpecError with one ``source: path: problem`` a line."""
    if not isinstance(data, Mapping):
        raise SpecError(
            f"{source}: (document): expected a mapping (apiVersion: {API_VERSION}, kind: ..., "
            f"name: ...); got {type(data).__name__}"
        )
    problems = []
    if "apiVersion" not in data:
        problems.append(f"apiVersion: required; use '{API_VERSION}'")
    elif data["apiVersion"] != API_VERSION:
        problems.append(f"apiVersion: {data['apiVersion']!r} is not supported; use '{API_VERSION}'")
    kind_problem = _kind_problem(data.get("kind"))
    if kind_problem is not None:
        problems.append(kind_problem)
    if problems:
        raise SpecError("\n".join(f"{source}: {p}" for p in problems))

    return validate_document(_MODELS[Kind(data["kind"])], data, source=source)


def load_jobs(path: str | Path) -> list[JobSpec]:
    """Every job in a YAML file (documents separated by ``---``), each validated.

    Raises SpecError listing the problems of every document; when the file holds several
    documents each line names its document: ``jobs.yaml (document 2): resources.gpus: ...``.
    """
    name = Path(path).name
    documents = load_documents(path)
    if not documents:
        raise SpecError(
            f"{name}: no job in the file; a job starts with 'apiVersion: {API_VERSION}' "
            f"and 'kind: ...' ({_KINDS_TEXT})"
        )
    jobs: list[JobSpec] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for number, document in enumerate(documents, start=1):
        source = name if len(documents) == 1 else f"{name} (document {number})"
        try:
            job = parse_job(document, source=source)
        except SpecError as e:
            problems.append(str(e))
            continue
        if job.job_id in first_seen:
            problems.append(
                f"{source}: name: job '{job.job_id}' is already defined in document "
                f"{first_seen[job.job_id]}; a community's job names must be unique"
            )
            continue
        first_seen[job.job_id] = number
        jobs.append(job)
    if problems:
        raise SpecError("\n".join(problems))
    return jobs


_JOB_ADAPTER: TypeAdapter[AnyJob] = TypeAdapter(JobSpec)


def job_json_schema() -> dict[str, Any]:
    """The JSON Schema of a job document (all four kinds), for editors and `meshctl schema`."""
    schema = _JOB_ADAPTER.json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Mesh job ({API_VERSION})",
        **schema,
    }
