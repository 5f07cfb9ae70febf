"""Job specs: the examples validate, defaults per kind, and every error a user can act on."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from scheduler.documents import SpecError, validate_document
from scheduler.spec import (
    BatchInferenceJob,
    FineTuneJob,
    JobSpec,
    Kind,
    Placement,
    Priority,
    ProbeJob,
    ServiceJob,
    artifact_digest,
    job_json_schema,
    load_jobs,
    parse_duration,
    parse_job,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobs"

SECTIONS: dict[str, dict[str, Any]] = {
    "FineTune": {
        "finetune": {
            "base_model": "swahili-nlp/swahili-llama-1b",
            "datasets": [{"path": "data/train.jsonl"}],
        }
    },
    "BatchInference": {"batch": {"model": "quechua-lm/quechua-llama-1b", "input": "in.jsonl"}},
    "Service": {"service": {"model": "swahili-nlp/swahili-llama-1b"}},
    "Probe": {},
}


def job_doc(kind: str = "Probe", **fields: Any) -> dict[str, Any]:
    """A minimal valid document of `kind`; `fields` replace top-level keys."""
    doc: dict[str, Any] = {
        "apiVersion": "mesh/v1",
        "kind": kind,
        "name": "test-job",
        "community": "swahili-nlp",
        **copy.deepcopy(SECTIONS[kind]),
    }
    doc.update(fields)
    return doc


def finetune_doc(**section: Any) -> dict[str, Any]:
    """A FineTune document whose `finetune:` section has `section` merged in."""
    doc = job_doc("FineTune")
    doc["finetune"].update(section)
    return doc


def error_of(doc: Any, source: str = "job.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_job(doc, source=source)
    return str(info.value)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- examples --------------------------------------------------------------------------------


def test_the_examples_folder_holds_the_documented_job_files() -> None:
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {
        "finetune-swahili-lora.yaml",
        "batch-translate.yaml",
        "service-swahili-chat.yaml",
        "probe.yaml",
        "cpu-tokenize.yaml",
        "queue-mixed.yaml",
    } <= names


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_job_file_validates(path: Path) -> None:
    jobs = load_jobs(path)
    assert jobs
    assert all(job.api_version == "mesh/v1" for job in jobs)


def test_the_mixed_queue_example_holds_several_communities_and_priorities() -> None:
    jobs = load_jobs(EXAMPLES / "queue-mixed.yaml")
    assert len({job.community for job in jobs}) == 3
    assert {job.priority for job in jobs} == set(Priority)
    assert {job.kind for job in jobs} == set(Kind)


def test_the_finetune_example_asks_for_two_gpus_of_20_gb_packed_with_a_chat_dataset() -> None:
    (job,) = load_jobs(EXAMPLES / "finetune-swahili-lora.yaml")
    assert isinstance(job, FineTuneJob)
    assert (job.resources.gpus, job.resources.gpu_memory_gb) == (2, 20)
    assert job.resources.placement is Placement.pack
    assert job.finetune.datasets[0].format.value == "chat"
    assert job.output_name == "swahili-nlp/swahili-chat-lora-v1"


def test_the_service_example_is_public_with_two_adapters_and_one_to_three_replicas() -> None:
    (job,) = load_jobs(EXAMPLES / "service-swahili-chat.yaml")
    assert isinstance(job, ServiceJob)
    assert job.service.access.value == "public"
    assert len(job.service.adapters) == 2
    assert (job.service.replicas.min, job.service.replicas.max) == (1, 3)
    assert job.resources.gpu_memory_gb == 12
    assert job.resources.exclusive is False


# --- unknown keys and their suggestions ------------------------------------------------------


def test_a_misspelt_top_level_key_suggests_the_right_one() -> None:
    doc = job_doc(priorty="high")
    assert error_of(doc) == "job.yaml: priorty: unknown key; did you mean 'priority'?"


def test_a_misspelt_resources_key_suggests_gpus() -> None:
    doc = job_doc(resources={"gpu": 2})
    assert error_of(doc) == "job.yaml: resources.gpu: unknown key; did you mean 'gpus'?"


def test_a_misspelt_key_inside_finetune_lora_suggests_the_right_one() -> None:
    doc = finetune_doc(lora={"alpah": 16})
    assert error_of(doc) == "job.yaml: finetune.lora.alpah: unknown key; did you mean 'alpha'?"


def test_a_misspelt_key_inside_batch_sampling_suggests_the_right_one() -> None:
    doc = job_doc("BatchInference")
    doc["batch"]["sampling"] = {"temprature": 0.1}
    assert error_of(doc) == (
        "job.yaml: batch.sampling.temprature: unknown key; did you mean 'temperature'?"
    )


def test_an_unknown_key_with_no_close_match_lists_the_valid_keys() -> None:
    doc = finetune_doc(lora={"rank": 8})
    assert error_of(doc) == (
        "job.yaml: finetune.lora.rank: unknown key; valid keys: alpha, dropout, r, target_modules"
    )


def test_every_problem_of_a_document_is_reported_one_per_line() -> None:
    doc = finetune_doc(lora={"alpah": 16})
    doc["resources"] = {"gpu": 2}
    assert error_of(doc).splitlines() == [
        "job.yaml: resources.gpu: unknown key; did you mean 'gpus'?",
        "job.yaml: finetune.lora.alpah: unknown key; did you mean 'alpha'?",
    ]


class _Queue(BaseModel):
    """A file that embeds jobs, as a list of running jobs does."""

    model_config = ConfigDict(extra="forbid")
    jobs: list[JobSpec]


def test_suggestions_work_through_the_union_of_kinds_and_the_path_omits_the_kind_tag() -> None:
    lora_typo = finetune_doc(lora={"alpah": 16})
    resources_typo = job_doc("Service", resources={"gpu": 1})
    with pytest.raises(SpecError) as info:
        validate_document(_Queue, {"jobs": [lora_typo, resources_typo]}, source="queue.yaml")
    assert str(info.value).splitlines() == [
        "queue.yaml: jobs[0].finetune.lora.alpah: unknown key; did you mean 'alpha'?",
        "queue.yaml: jobs[1].resources.gpu: unknown key; did you mean 'gpus'?",
    ]


# --- sections, kind and apiVersion -----------------------------------------------------------


def test_a_section_of_another_kind_says_which_section_the_kind_uses() -> None:
    doc = job_doc("BatchInference")
    doc["finetune"] = doc.pop("batch")
    assert error_of(doc) == "job.yaml: finetune: not allowed for kind BatchInference; use 'batch'"


def test_a_misplaced_section_is_reported_beside_the_other_problems() -> None:
    doc = job_doc("Service", probe={"duration_s": 10}, resources={"gpu": 1})
    assert error_of(doc).splitlines() == [
        "job.yaml: probe: not allowed for kind Service; use 'service'",
        "job.yaml: resources.gpu: unknown key; did you mean 'gpus'?",
    ]


def test_a_misplaced_section_is_reported_through_the_union_of_kinds() -> None:
    doc = job_doc("Probe", batch={"model": "a/b", "input": "x.jsonl"})
    with pytest.raises(SpecError) as info:
        validate_document(_Queue, {"jobs": [doc]}, source="queue.yaml")
    assert str(info.value) == "queue.yaml: jobs[0].batch: not allowed for kind Probe; use 'probe'"


def test_a_misspelt_kind_suggests_the_right_one() -> None:
    assert error_of({**job_doc(), "kind": "Finetune"}) == (
        "job.yaml: kind: must be one of FineTune, BatchInference, Service, Probe; "
        "got 'Finetune' — did you mean 'FineTune'?"
    )


def test_a_kind_in_the_wrong_case_suggests_the_right_one() -> None:
    assert error_of({**job_doc(), "kind": "batchinference"}).endswith(
        "got 'batchinference' — did you mean 'BatchInference'?"
    )


def test_an_unknown_kind_lists_the_kinds() -> None:
    assert error_of({**job_doc(), "kind": "Notebook"}) == (
        "job.yaml: kind: must be one of FineTune, BatchInference, Service, Probe; got 'Notebook'"
    )


def test_a_missing_kind_is_required() -> None:
    doc = job_doc()
    del doc["kind"]
    assert error_of(doc) == (
        "job.yaml: kind: required; one of FineTune, BatchInference, Service, Probe"
    )


def test_a_missing_api_version_says_which_to_use() -> None:
    doc = job_doc()
    del doc["apiVersion"]
    assert error_of(doc) == "job.yaml: apiVersion: required; use 'mesh/v1'"


def test_another_api_version_is_not_supported() -> None:
    assert error_of(job_doc(apiVersion="mesh/v2")) == (
        "job.yaml: apiVersion: 'mesh/v2' is not supported; use 'mesh/v1'"
    )


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert error_of(["kind", "Probe"]) == (
        "job.yaml: (document): expected a mapping (apiVersion: mesh/v1, kind: ..., name: ...); "
        "got list"
    )


# --- names -----------------------------------------------------------------------------------


def test_a_name_that_is_not_a_dns_label_is_refused_with_a_fixed_suggestion() -> None:
    assert error_of(job_doc(name="Swahili_Chat")) == (
        "job.yaml: name: 'Swahili_Chat' is not a DNS label: use lowercase letters, digits and "
        "'-', start with a letter, end with a letter or digit, at most 63 characters; "
        "try 'swahili-chat'"
    )


@pytest.mark.parametrize(
    "name",
    ["1st-run", "run-", "a" * 64, "", "ünï"],
    ids=["starts with a digit", "ends with a dash", "64 characters", "empty", "not ascii"],
)
def test_names_that_break_the_dns_label_rules_are_refused(name: str) -> None:
    assert "is not a DNS label" in error_of(job_doc(name=name))


def test_a_community_must_be_a_dns_label_too() -> None:
    assert error_of(job_doc(community="Bio ML")).startswith(
        "job.yaml: community: 'Bio ML' is not a DNS label"
    )


def test_the_job_id_is_community_slash_name() -> None:
    job = parse_job(job_doc(name="probe-a", community="bio-ml"), source="job.yaml")
    assert job.job_id == "bio-ml/probe-a"


def test_a_model_that_is_neither_a_registry_name_nor_a_folder_is_refused() -> None:
    doc = finetune_doc(base_model="Meta/Llama-3")
    assert error_of(doc) == (
        "job.yaml: finetune.base_model: 'Meta/Llama-3' is neither a registry name "
        "(community/name, lowercase) nor a folder path (starting with '/', './', '../' or '~/')"
        " nor an uploaded folder (sha256:HEX)"
    )


def test_an_uploaded_artifact_is_named_by_its_hash() -> None:
    digest = "ab" * 32
    job = parse_job(finetune_doc(base_model=f"sha256:{digest}"), source="job.yaml")
    assert artifact_digest(job.finetune.base_model) == digest  # type: ignore[union-attr]
    assert artifact_digest("sha256:ABC") is None


def test_a_base_model_may_be_a_folder() -> None:
    job = parse_job(finetune_doc(base_model="/models/llama-8b"), source="job.yaml")
    assert isinstance(job, FineTuneJob)
    assert job.finetune.base_model == "/models/llama-8b"


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("45m", 2700.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        ("1h 30m", 5400.0),
        ("600", 600.0),
        (600, 600.0),
        (12.5, 12.5),
    ],
)
def test_durations_are_seconds_or_unit_strings(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2 hours", "h", "", "1h-30m", "-5", "nan", "30x"])
def test_a_malformed_duration_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="^not a duration: ") as info:
        parse_duration(text)
    assert str(info.value) == (
        f"not a duration: {text!r}; write seconds (5400) or a duration like "
        "'90s', '45m', '2h', '1h30m', '1d'"
    )


def test_a_boolean_is_not_a_duration() -> None:
    with pytest.raises(ValueError, match="^not a duration: True"):
        parse_duration(True)


def test_expected_runtime_is_stored_as_seconds() -> None:
    job = parse_job(job_doc(expected_runtime="1h30m"), source="job.yaml")
    assert job.expected_runtime == 5400.0


def test_a_bad_expected_runtime_names_the_field() -> None:
    assert error_of(job_doc(expected_runtime="soon")) == (
        "job.yaml: expected_runtime: not a duration: 'soon'; write seconds (5400) or a duration "
        "like '90s', '45m', '2h', '1h30m', '1d'"
    )


def test_a_zero_expected_runtime_is_refused() -> None:
    assert error_of(job_doc(expected_runtime="0s")) == (
        "job.yaml: expected_runtime: Input should be greater than 0"
    )


# --- resources and the GPU catalogue ---------------------------------------------------------


def test_gpu_types_resolve_to_catalogue_names_without_repeats() -> None:
    doc = job_doc(resources={"gpu_types": ["4090", "RTX-4090", "A6000", "NVIDIA A100-SXM4-80GB"]})
    job = parse_job(doc, source="job.yaml")
    assert job.resources.gpu_types == ["RTX-4090", "RTX-A6000", "A100-80GB"]


def test_an_unknown_gpu_type_names_the_entry_and_suggests_close_names() -> None:
    doc = job_doc(resources={"gpu_types": ["RTX-3090", "RTX-4900"]})
    assert error_of(doc) == (
        "job.yaml: resources.gpu_types[1]: unknown GPU model 'RTX-4900'; did you mean "
        "'RTX-4090'? (meshctl gpus lists the catalogue)"
    )


@pytest.mark.parametrize(("given", "stored"), [("8.0", (8, 0)), (8.6, (8, 6)), (9, (9, 0))])
def test_min_compute_capability_accepts_strings_and_numbers(
    given: str | float, stored: tuple[int, int]
) -> None:
    job = parse_job(job_doc(resources={"min_compute_capability": given}), source="job.yaml")
    assert job.resources.min_compute_capability == stored


@pytest.mark.parametrize(
    "field", [("gpu_memory_gb", 8), ("gpu_types", ["RTX-4090"]), ("min_compute_capability", "8.0")]
)
def test_gpu_requirements_of_a_cpu_only_job_are_refused(field: tuple[str, Any]) -> None:
    name, value = field
    doc = job_doc("BatchInference", resources={"gpus": 0, name: value})
    assert error_of(doc) == (
        f"job.yaml: resources.{name}: needs gpus >= 1; this job asks for gpus: 0 (CPU-only)"
    )


def test_a_probe_without_gpus_is_refused() -> None:
    assert error_of(job_doc(resources={"gpus": 0})) == (
        "job.yaml: resources.gpus: a Probe checks GPUs; it needs gpus >= 1"
    )


def test_a_service_cannot_spread_a_replica_over_nodes() -> None:
    doc = job_doc("Service", resources={"placement": "spread"})
    assert error_of(doc) == (
        "job.yaml: resources.placement: spread is not allowed for a Service: each replica runs "
        "on one node; use pack or strict_pack"
    )


def test_more_than_64_gpus_is_refused() -> None:
    assert error_of(job_doc(resources={"gpus": 65})) == (
        "job.yaml: resources.gpus: Input should be less than or equal to 64"
    )


@pytest.mark.parametrize(
    ("kind", "exclusive"),
    [("FineTune", True), ("BatchInference", False), ("Service", False), ("Probe", False)],
)
def test_exclusive_defaults_to_true_only_for_finetune(kind: str, exclusive: bool) -> None:
    assert parse_job(job_doc(kind), source="job.yaml").resources.exclusive is exclusive


def test_an_explicit_null_exclusive_takes_the_default_of_the_kind() -> None:
    job = parse_job(job_doc("FineTune", resources={"exclusive": None}), source="job.yaml")
    assert job.resources.exclusive is True


def test_a_finetune_may_share_its_gpus_when_told() -> None:
    job = parse_job(job_doc("FineTune", resources={"exclusive": False}), source="job.yaml")
    assert job.resources.exclusive is False


# --- bundles, runtimes, preemption -----------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "bundles", "gpus_each", "runtime_s", "preemptible"),
    [
        (job_doc("FineTune", resources={"gpus": 4}), 4, 1, 4 * 3600.0, True),
        (job_doc("BatchInference", resources={"gpus": 2}), 2, 1, 3600.0, True),
        (job_doc("BatchInference", resources={"gpus": 0}), 1, 0, 3600.0, True),
        (
            job_doc(
                "Service",
                resources={"gpus": 2},
                service={"model": "a/b", "replicas": {"min": 3, "max": 5}},
            ),
            3,
            2,
            None,
            False,
        ),
        (job_doc("Service", resources={"gpus": 0}), 1, 0, None, False),
        (job_doc("Probe", resources={"gpus": 2}, probe={"duration_s": 45}), 2, 1, 105.0, False),
        (job_doc("Probe", expected_runtime="10m"), 1, 1, 600.0, False),
        (job_doc("FineTune", expected_runtime=120), 1, 1, 120.0, True),
    ],
    ids=[
        "finetune on 4 GPUs: 4 bundles of 1",
        "batch on 2 GPUs: 2 bundles of 1",
        "cpu-only batch: 1 bundle of 0",
        "service of 3 replicas of 2 GPUs: 3 bundles of 2",
        "cpu-only service: 1 bundle of 0",
        "probe: duration plus a minute",
        "probe with expected_runtime",
        "finetune with expected_runtime",
    ],
)
def test_bundles_and_runtime_follow_the_kind(
    doc: dict[str, Any],
    bundles: int,
    gpus_each: int,
    runtime_s: float | None,
    preemptible: bool,
) -> None:
    job = parse_job(doc, source="job.yaml")
    assert job.bundle_count == bundles
    assert job.gpus_per_bundle == gpus_each
    assert job.default_runtime_s == runtime_s
    assert job.preemptible is preemptible


def test_priorities_are_ordered_low_normal_high() -> None:
    assert [p.order for p in (Priority.low, Priority.normal, Priority.high)] == [0, 1, 2]


def test_each_kind_parses_to_its_own_model() -> None:
    models: dict[str, type[object]] = {
        "FineTune": FineTuneJob,
        "BatchInference": BatchInferenceJob,
        "Service": ServiceJob,
        "Probe": ProbeJob,
    }
    for kind, model in models.items():
        job = parse_job(job_doc(kind), source="job.yaml")
        assert type(job) is model
        assert job.kind is Kind(kind)


def test_a_job_survives_a_round_trip_through_json() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for job in load_jobs(path):
            again = parse_job(
                json.loads(job.model_dump_json(by_alias=True, exclude_none=True)),
                source="stored",
            )
            assert again == job


# --- kind-specific rules ---------------------------------------------------------------------


def test_training_defaults_to_one_epoch() -> None:
    job = parse_job(job_doc("FineTune"), source="job.yaml")
    assert isinstance(job, FineTuneJob)
    assert (job.finetune.training.epochs, job.finetune.training.max_steps) == (1.0, None)


def test_training_takes_epochs_or_max_steps_but_not_both() -> None:
    doc = finetune_doc(training={"epochs": 2, "max_steps": 100})
    assert error_of(doc) == "job.yaml: finetune.training: give epochs or max_steps, not both"


def test_target_modules_is_a_list_or_all_linear() -> None:
    doc = finetune_doc(lora={"target_modules": "q_proj"})
    assert error_of(doc) == (
        "job.yaml: finetune.lora.target_modules: give a list of module names "
        "(like [q_proj, v_proj]) or 'all-linear'; got 'q_proj'"
    )
    job = parse_job(finetune_doc(lora={"target_modules": "all-linear"}), source="job.yaml")
    assert isinstance(job, FineTuneJob)
    assert job.finetune.lora.target_modules == "all-linear"


def test_the_output_defaults_to_the_job_name_in_its_community() -> None:
    job = parse_job(job_doc("FineTune", name="news-lora"), source="job.yaml")
    assert isinstance(job, FineTuneJob)
    assert job.finetune.output.name == job.output_name == "swahili-nlp/news-lora"


def test_a_bare_output_name_is_placed_in_the_jobs_community() -> None:
    job = parse_job(finetune_doc(output={"name": "news-lora-v2"}), source="job.yaml")
    assert isinstance(job, FineTuneJob)
    assert job.output_name == "swahili-nlp/news-lora-v2"


def test_a_job_cannot_write_its_output_into_another_community() -> None:
    doc = finetune_doc(output={"name": "bio-ml/stolen"})
    assert error_of(doc) == (
        "job.yaml: finetune.output.name: 'bio-ml/stolen' is in community 'bio-ml'; a job writes "
        "only to its own community 'swahili-nlp'"
    )


def test_a_finetune_needs_at_least_one_dataset() -> None:
    assert error_of(finetune_doc(datasets=[])) == (
        "job.yaml: finetune.datasets: List should have at least 1 item after validation, not 0"
    )


def test_service_replicas_max_defaults_to_min() -> None:
    doc = job_doc("Service", service={"model": "a/b", "replicas": {"min": 2}})
    job = parse_job(doc, source="job.yaml")
    assert isinstance(job, ServiceJob)
    assert (job.service.replicas.min, job.service.replicas.max) == (2, 2)


def test_service_replicas_max_below_min_is_refused() -> None:
    doc = job_doc("Service", service={"model": "a/b", "replicas": {"min": 3, "max": 2}})
    assert error_of(doc) == "job.yaml: service.replicas: max (2) must be >= min (3)"


def test_service_adapters_must_be_registry_names() -> None:
    doc = job_doc("Service", service={"model": "a/b", "adapters": ["./my-adapter"]})
    assert error_of(doc) == (
        "job.yaml: service.adapters[0]: './my-adapter' is not a registry name: write "
        "community/name in lowercase letters, digits and '-' (the name may also hold '.' and '_')"
    )


def test_a_probe_section_is_optional() -> None:
    job = parse_job(job_doc("Probe"), source="job.yaml")
    assert isinstance(job, ProbeJob)
    assert (job.probe.duration_s, job.probe.matmul_size) == (30, 4096)


def test_sampling_is_bounded() -> None:
    doc = job_doc("BatchInference")
    doc["batch"]["sampling"] = {"temperature": 3, "top_p": 0}
    assert error_of(doc).splitlines() == [
        "job.yaml: batch.sampling.temperature: Input should be less than or equal to 2",
        "job.yaml: batch.sampling.top_p: Input should be greater than 0",
    ]


# --- files -----------------------------------------------------------------------------------

THREE_JOBS = """\
apiVersion: mesh/v1
kind: Probe
name: first
community: bio-ml
---
apiVersion: mesh/v1
kind: Probe
name: second
community: bio-ml
resources: {gpu: 2}
---
apiVersion: mesh/v1
kind: BatchInference
name: third
community: quechua-lm
batch: {model: quechua-lm/quechua-llama-1b, input: in.jsonl}
"""


def test_a_file_with_three_documents_gives_three_jobs(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", THREE_JOBS.replace("resources: {gpu: 2}", ""))
    assert [job.job_id for job in load_jobs(path)] == [
        "bio-ml/first",
        "bio-ml/second",
        "quechua-lm/third",
    ]


def test_an_error_in_a_file_of_several_documents_names_the_document(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", THREE_JOBS)
    with pytest.raises(SpecError) as info:
        load_jobs(path)
    assert str(info.value) == (
        "jobs.yaml (document 2): resources.gpu: unknown key; did you mean 'gpus'?"
    )


def test_an_error_in_a_file_of_one_document_names_only_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "apiVersion: mesh/v1\nkind: Probe\nname: a\n")
    with pytest.raises(SpecError) as info:
        load_jobs(path)
    assert str(info.value) == "job.yaml: community: required"


def test_the_same_job_twice_in_a_file_is_refused(tmp_path: Path) -> None:
    one = "apiVersion: mesh/v1\nkind: Probe\nname: a\ncommunity: bio-ml\n"
    path = write(tmp_path, "jobs.yaml", one + "---\n" + one)
    with pytest.raises(SpecError) as info:
        load_jobs(path)
    assert str(info.value) == (
        "jobs.yaml (document 2): name: job 'bio-ml/a' is already defined in document 1; "
        "a community's job names must be unique"
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.yaml", text)
    with pytest.raises(SpecError) as info:
        load_jobs(path)
    assert str(info.value) == (
        "empty.yaml: no job in the file; a job starts with 'apiVersion: mesh/v1' and "
        "'kind: ...' (FineTune, BatchInference, Service, Probe)"
    )


def test_a_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    text = "# padding\n" * (1024 * 1024 // 10 + 1)
    path = write(tmp_path, "big.yaml", text)
    with pytest.raises(SpecError) as info:
        load_jobs(path)
    assert str(info.value) == f"big.yaml: {len(text)} bytes; files over 1 MiB are refused"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 9):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    path = write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    with pytest.raises(SpecError) as info:
        load_jobs(path)
    assert str(info.value) == (
        "bomb.yaml: the document expands to more than 200000 values (YAML aliases?)"
    )


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file$"):
        load_jobs(tmp_path / "nope.yaml")


# --- JSON Schema -----------------------------------------------------------------------------


def test_the_json_schema_covers_the_four_kinds_with_descriptions() -> None:
    schema = job_json_schema()
    text = json.dumps(schema)
    assert isinstance(schema, dict)
    assert set(schema["discriminator"]["mapping"]) == {k.value for k in Kind}
    defs = schema["$defs"]
    for model in ("FineTuneJob", "BatchInferenceJob", "ServiceJob", "ProbeJob"):
        assert defs[model]["additionalProperties"] is False
        assert "apiVersion" in defs[model]["properties"]
    assert defs["Resources"]["properties"]["gpus"]["description"].startswith("GPUs for the job")
    assert defs["LoRA"]["properties"]["r"]["description"] == "LoRA rank."
    assert "Spec version: mesh/v1." in text


def test_every_property_in_the_json_schema_has_a_description() -> None:
    defs = job_json_schema()["$defs"]
    missing = [
        f"{name}.{prop}"
        for name, definition in defs.items()
        for prop, body in definition.get("properties", {}).items()
        if "description" not in body
    ]
    assert missing == []
