"""Job specs: what a community asks the mesh to run, as written in a job.yaml (apiVersion mesh/v1).

Four kinds share a header (name, community, priority, resources) and each adds a section named
after it: ``finetune:``, ``batch:``, ``service:`` or ``probe:``. Every model forbids unknown keys,
so a misspelt key is an error that suggests the right one; `parse_job` and `load_jobs` turn every
problem into a line such as ``job.yaml: finetune.lora.r: Input should be greater than 0``.

The sections and the field types are defined in `scheduler.spec_sections`; this module
re-exports them. Only `load_jobs` touches the file system. GPU names resolve through
`scheduler.gpus`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from scheduler.documents import SpecError, load_documents, validate_document
from scheduler.spec_sections import (
    ARTIFACT_PREFIX,
    MAX_PATH_CHARS,
    Access,
    BatchSection,
    ComputeCapability,
    DataPath,
    Dataset,
    DatasetFormat,
    DnsLabel,
    Duration,
    Engine,
    FineTuneSection,
    GpuTypeName,
    LoRA,
    LrScheduler,
    ModelRef,
    ModuleName,
    Output,
    ProbeSection,
    RegistryName,
    Replicas,
    Sampling,
    ServiceSection,
    StrictModel,
    Training,
    artifact_digest,
    check_registry_name,
    is_local_path,
    parse_duration,
    unique_in_order,
)

__all__ = [
    "API_VERSION",
    "Access",
    "AnyJob",
    "BatchInferenceJob",
    "BatchSection",
    "ComputeCapability",
    "DataPath",
    "Dataset",
    "DatasetFormat",
    "DnsLabel",
    "Duration",
    "Engine",
    "FineTuneJob",
    "FineTuneResources",
    "FineTuneSection",
    "GpuTypeName",
    "JobBase",
    "JobSpec",
    "Kind",
    "LoRA",
    "LrScheduler",
    "MAX_EXPECTED_RUNTIME_S",
    "MAX_PATH_CHARS",
    "ModelRef",
    "ModuleName",
    "Output",
    "Placement",
    "Priority",
    "ProbeJob",
    "ProbeResources",
    "ProbeSection",
    "RegistryName",
    "Replicas",
    "Resources",
    "Sampling",
    "ServiceJob",
    "ServiceResources",
    "ServiceSection",
    "Training",
    "ARTIFACT_PREFIX",
    "artifact_digest",
    "is_local_path",
    "job_json_schema",
    "load_jobs",
    "parse_duration",
    "parse_job",
]

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


# ---------------------------------------------------------------------------------------------
# Resources


class Resources(StrictModel):
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
        AfterValidator(unique_in_order),
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


class JobBase(StrictModel):
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
            check_registry_name(name)
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
