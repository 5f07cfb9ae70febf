"""The GPU catalogue: every name a user, a probe or a trace uses resolves to one model."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
from pathlib import Path

import pytest

from scheduler import gpus
from scheduler.gpus import CATALOGUE, UnknownGpuError

REPO = Path(__file__).resolve().parents[2]
TRACES = Path(os.environ.get("MESH_TRACES", REPO.parent / "shared" / "traces"))


def trace_file(relative: str) -> Path:
    path = TRACES / relative
    if not path.is_file():
        pytest.skip(f"trace file {path} not present (set MESH_TRACES to the traces folder)")
    return path


def column_values(path: Path, column: str) -> set[str]:
    with path.open(newline="") as f:
        return {row[column] for row in csv.DictReader(f) if row[column]}


def normalised(name: str) -> str:
    """The catalogue's lookup key, recomputed here: no case, separators or vendor words."""
    words = [w for w in re.split(r"[\s_\-]+", name.lower()) if w]
    return "".join(w for w in words if w not in {"nvidia", "geforce", "tesla"})


# --- names resolve ----


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA GeForce RTX 3090", "RTX-3090"),
        ("NVIDIA GeForce RTX 3060", "RTX-3060"),
        ("NVIDIA GeForce RTX 5090", "RTX-5090"),
        ("NVIDIA GeForce RTX 2080 Ti", "RTX-2080-Ti"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100 80GB PCIe", "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
        ("Tesla V100-SXM2-16GB", "V100-16GB"),
        ("Tesla V100-SXM2-32GB", "V100-32GB"),
        ("Tesla T4", "T4"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA RTX A6000", "RTX-A6000"),
        ("NVIDIA RTX A4000", "RTX-A4000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX-6000-Ada"),
        ("Quadro RTX 6000", "Quadro-RTX-6000"),
        ("Tesla P100-PCIE-16GB", "P100"),
        ("Tesla K80", "K80"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A10G", "A10"),
    ],
)
def test_pynvml_names_resolve_to_their_model(name: str, expected: str) -> None:
    assert gpus.resolve(name).name == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("4090", "RTX-4090"),
        ("3090", "RTX-3090"),
        ("rtx 3090 ti", "RTX-3090-Ti"),
        ("rtx_4060_ti", "RTX-4060-Ti"),
        ("a100", "A100-40GB"),
        ("v100", "V100-16GB"),
        ("A100-80GB", "A100-80GB"),
        ("h100-80gb", "H100"),
        ("H100-SXM5-80GB", "H100"),
        ("a6000", "RTX-A6000"),
        ("A10G", "A10"),
        ("NVIDIA-GeForce-RTX-4090", "RTX-4090"),
    ],
)
def test_short_and_differently_written_names_resolve(name: str, expected: str) -> None:
    assert gpus.resolve(name).name == expected


def test_ambiguous_short_names_resolve_to_the_smaller_memory_variant() -> None:
    assert gpus.resolve("A100").memory_gb == 40.0
    assert gpus.resolve("V100").memory_gb == 16.0


def test_quadro_is_dropped_only_where_the_name_stays_unambiguous() -> None:
    assert gpus.resolve("Quadro RTX A6000").name == "RTX-A6000"
    assert gpus.resolve("NVIDIA Quadro RTX 6000").name == "Quadro-RTX-6000"
    assert gpus.find("RTX 6000") is None


def test_every_model_of_the_openb_fleet_resolves() -> None:
    names = column_values(trace_file("alibaba-openb-2023/openb_node_list_gpu_node.csv"), "model")
    assert names == {"A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"}
    resolved = {name: gpus.resolve(name).name for name in names}
    assert resolved["V100M16"] == "V100-16GB"
    assert resolved["V100M32"] == "V100-32GB"


def test_every_gpu_spec_of_the_openb_pods_resolves() -> None:
    path = trace_file("alibaba-openb-2023/openb_pod_list_gpuspec10.csv")
    specs = column_values(path, "gpu_spec")
    names = {name for spec in specs for name in spec.split("|")}
    assert names
    for name in names:
        gpus.resolve(name)


def test_every_model_of_the_spot_trace_fleet_resolves() -> None:
    names = column_values(trace_file("alibaba-spot-2026/node_info_df.csv"), "gpu_model")
    assert "A100-SXM4-80GB" in names
    resolved = {name: gpus.resolve(name).name for name in names}
    assert resolved["A100-SXM4-80GB"] == "A100-80GB"
    assert resolved["A800-SXM4-80GB"] == "A800-80GB"
    assert resolved["H800"] == "H800"


def test_every_gpu_type_of_the_gavel_throughputs_resolves() -> None:
    with trace_file("gavel/simulation_throughputs.json").open() as f:
        keys = json.load(f)
    names = {key.removesuffix("_unconsolidated") for key in keys}
    assert names == {"k80", "p100", "v100"}
    assert {gpus.resolve(n).name for n in names} == {"K80", "P100", "V100-16GB"}


def test_the_sia_server_names_for_consumer_and_workstation_gpus_resolve() -> None:
    assert gpus.resolve("rtx").name == "RTX-2080-Ti"
    assert gpus.resolve("quad").name == "Quadro-RTX-6000"


def test_catalogue_names_resolve_to_themselves() -> None:
    for model in CATALOGUE:
        assert gpus.resolve(model.name) is model


# --- unknown names ----


def test_a_misspelt_name_suggests_the_closest_model() -> None:
    with pytest.raises(UnknownGpuError) as caught:
        gpus.resolve("RTX-4009")
    assert str(caught.value) == (
        "unknown GPU model 'RTX-4009'; did you mean 'RTX-4090'? (meshctl gpus lists the catalogue)"
    )
    assert caught.value.suggestions == ("RTX-4090",)


def test_several_close_names_are_listed_closest_first() -> None:
    with pytest.raises(UnknownGpuError) as caught:
        gpus.resolve("A100-80G")
    assert str(caught.value) == (
        "unknown GPU model 'A100-80G'; did you mean 'A100-80GB' or 'A100-40GB'?"
        " (meshctl gpus lists the catalogue)"
    )


def test_at_most_three_close_names_are_listed() -> None:
    with pytest.raises(UnknownGpuError) as caught:
        gpus.resolve("A1000")
    assert caught.value.suggestions == ("A100-40GB", "RTX-A4000", "RTX-A5000")


def test_a_name_that_starts_with_a_model_suggests_that_model() -> None:
    with pytest.raises(UnknownGpuError) as caught:
        gpus.resolve("NVIDIA GeForce RTX 4090 Laptop GPU")
    assert caught.value.suggestions == ("RTX-4090",)


def test_a_name_far_from_every_model_points_to_the_catalogue() -> None:
    with pytest.raises(UnknownGpuError) as caught:
        gpus.resolve("TPU v5e")
    assert str(caught.value) == (
        "unknown GPU model 'TPU v5e'; see `meshctl gpus` for the catalogue"
    )


def test_unknown_gpu_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown GPU model ''"):
        gpus.resolve("")


def test_unknown_gpu_error_survives_pickling() -> None:
    with pytest.raises(UnknownGpuError) as caught:
        gpus.resolve("RTX-4009")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value)
    assert copy.suggestions == ("RTX-4090",)


def test_find_returns_none_for_an_unknown_name() -> None:
    assert gpus.find("RTX-4009") is None
    assert gpus.find("rtx4090") is gpus.resolve("RTX-4090")


# --- the table itself ----


def test_no_two_models_share_a_normalised_name_or_alias() -> None:
    owner: dict[str, str] = {}
    for model in CATALOGUE:
        for name in (model.name, *model.aliases):
            key = normalised(name)
            assert owner.setdefault(key, model.name) == model.name, (
                f"'{name}' names both {owner[key]} and {model.name}"
            )


def test_catalogue_names_are_valid_label_values() -> None:
    for model in CATALOGUE:
        assert gpus.label_value(model.name) == model.name


def test_every_model_has_a_source_and_positive_numbers() -> None:
    for model in CATALOGUE:
        assert model.source.strip(), model.name
        assert model.memory_gb > 0, model.name
        assert model.relative_speed > 0, model.name
        assert model.tflops_16 > 0, model.name
        assert model.tier in gpus.TIERS, model.name
        assert model.compute_capability >= (3, 0), model.name


def test_bf16_support_follows_compute_capability() -> None:
    for model in CATALOGUE:
        assert model.bf16 == (model.compute_capability >= (8, 0)), model.name


def test_anonymised_models_say_their_numbers_are_assumed() -> None:
    anonymised = [m for m in CATALOGUE if m.tier == "anonymised"]
    assert {m.name for m in anonymised} == {"G2", "G3", "GPU-series-1", "GPU-series-2"}
    for model in anonymised:
        assert "assumed" in model.source


def test_the_a100_80gb_is_the_speed_reference() -> None:
    assert gpus.resolve("A100-80GB").relative_speed == 1.0
    assert gpus.resolve("H100").relative_speed > 1.0 > gpus.resolve("RTX-4090").relative_speed


def test_the_required_models_are_in_the_catalogue() -> None:
    names = {m.name for m in CATALOGUE}
    required = {
        "RTX-3060", "RTX-3070", "RTX-3080", "RTX-3090", "RTX-3090-Ti", "RTX-4060-Ti",
        "RTX-4070", "RTX-4080", "RTX-4090", "RTX-5090", "RTX-2080-Ti", "Quadro-RTX-6000",
        "RTX-A4000", "RTX-A5000", "RTX-A6000", "RTX-6000-Ada", "L4", "L40S", "T4", "V100-16GB",
        "V100-32GB", "A10", "A100-40GB", "A100-80GB", "A800-80GB", "H100", "H800", "H200", "P100",
        "K80", "G2", "G3", "GPU-series-1", "GPU-series-2",
    }  # fmt: skip
    assert required <= names


# --- compute capability and label values ----


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8.0", (8, 0)),
        (8.0, (8, 0)),
        ("8.6", (8, 6)),
        (8.6, (8, 6)),
        (9, (9, 0)),
        ("12.0", (12, 0)),
        (" 7.5 ", (7, 5)),
    ],
)
def test_compute_capability_parses_text_and_numbers(
    value: str | float, expected: tuple[int, int]
) -> None:
    assert gpus.parse_compute_capability(value) == expected


@pytest.mark.parametrize("value", ["eight", "", "8.", "8.6.1", "-1", "0.5", True])
def test_compute_capability_junk_is_refused_with_the_value_named(value: str | bool) -> None:
    with pytest.raises(ValueError, match="compute capability"):
        gpus.parse_compute_capability(value)


def test_compute_capability_error_message() -> None:
    with pytest.raises(ValueError, match="eight") as caught:
        gpus.parse_compute_capability("eight")
    assert str(caught.value) == "compute capability 'eight' is not a version like '8.6'"


def test_compute_capability_formats_as_major_dot_minor() -> None:
    assert gpus.format_compute_capability((8, 6)) == "8.6"
    assert gpus.format_compute_capability((12, 0)) == "12.0"
    for model in CATALOGUE:
        text = gpus.format_compute_capability(model.compute_capability)
        assert gpus.parse_compute_capability(text) == model.compute_capability


LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NVIDIA GeForce RTX 4090", "NVIDIA-GeForce-RTX-4090"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB"),
        ("A100 (80GB)", "A100-80GB"),
        ("  --padded__ ", "padded"),
        ("a/b:c", "a-b-c"),
        ("8.6", "8.6"),
        ("", ""),
        ("***", ""),
        ("x" * 70, "x" * 63),
        ("a" * 62 + "-b", "a" * 62),
    ],
)
def test_label_value_makes_any_text_a_valid_label_value(text: str, expected: str) -> None:
    value = gpus.label_value(text)
    assert value == expected
    assert LABEL_VALUE.fullmatch(value)
