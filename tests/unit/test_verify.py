"""Trust but verify: the verdict on a node's claim from its Probe's reports (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler import verify
from scheduler.cluster import Gpu, Node
from scheduler.spec import parse_job


def node(model: str = "RTX-4090", count: int = 2, memory: float = 23.99, **kw: Any) -> Node:
    gpus = tuple(Gpu(i, model, memory, (8, 9)) for i in range(count))
    return Node("alice", cpus=16, memory_gb=64, gpus=gpus, **kw)


def report(bundle: int, device: str | None, memory: float, tflops: float) -> dict[str, Any]:
    return {"bundle": bundle, "device": device, "memory_gb": memory, "tflops": tflops}


def test_gpus_that_match_their_claim_make_the_node_ready() -> None:
    reports = [
        report(1, "NVIDIA GeForce RTX 4090", 23.99, 151.0),
        report(0, "NVIDIA GeForce RTX 4090", 23.99, 149.5),
    ]
    assert verify.judge(node(), reports) == (
        verify.READY,
        "2 x RTX-4090 verified: 149.5-151 TFLOP/s (catalogue 165.2)",
    )


@pytest.mark.parametrize(
    ("reports", "why"),
    [
        (
            [report(0, None, 0, 0), report(1, None, 0, 0)],
            "claims 2 x RTX-4090; GPU 0: the probe found no CUDA device",
        ),
        (
            [
                report(0, "NVIDIA GeForce RTX 4090", 23.99, 150),
                report(1, "NVIDIA GeForce RTX 3060", 12.0, 50),
            ],
            "claims 2 x RTX-4090; GPU 1 is a NVIDIA GeForce RTX 3060",
        ),
        (
            [
                report(0, "NVIDIA GeForce RTX 4090", 11.9, 150),
                report(1, "NVIDIA GeForce RTX 4090", 23.99, 150),
            ],
            "claims 2 x RTX-4090 with 23.99 GB; GPU 0 has 11.9 GB",
        ),
        (
            [
                report(0, "NVIDIA GeForce RTX 4090", 23.99, 150),
                report(1, "NVIDIA GeForce RTX 4090", 23.99, 40),
            ],
            "claims 2 x RTX-4090; GPU 1 multiplies at 40 TFLOP/s, below 0.4 x the 165.2 a RTX-4090"
            " reaches",
        ),
        (
            [report(0, "NVIDIA GeForce RTX 4090", 23.99, 150)],
            "claims 2 x RTX-4090; the probe reported 1 of them",
        ),
    ],
)
def test_a_node_far_below_its_claim_is_suspect_and_the_reason_says_where(
    reports: list[dict[str, Any]], why: str
) -> None:
    assert verify.judge(node(), reports) == (verify.SUSPECT, why)


def test_the_speed_floor_is_a_fraction_of_the_catalogue_figure() -> None:
    floor = verify.MIN_SPEED * 165.2
    just_above = [report(i, "NVIDIA GeForce RTX 4090", 23.99, floor + 0.1) for i in range(2)]
    just_below = [report(i, "NVIDIA GeForce RTX 4090", 23.99, floor - 0.1) for i in range(2)]
    assert verify.judge(node(), just_above)[0] == verify.READY
    assert verify.judge(node(), just_below)[0] == verify.SUSPECT


def test_only_real_nodes_with_gpus_are_probed_and_their_probe_is_a_valid_job() -> None:
    assert verify.needs_probe(node())
    assert not verify.needs_probe(node(simulated=True))
    assert not verify.needs_probe(Node("cpu-box", cpus=8, memory_gb=16))
    assert verify.judge(Node("cpu-box", cpus=8, memory_gb=16), []) == (
        verify.READY,
        "no GPUs to verify",
    )
    spec = parse_job(verify.verify_spec(node()), source="verify")
    assert spec.job_id == "mesh/verify-alice" == verify.verify_job_id("alice")
    assert verify.is_verify_job(spec.job_id)
    assert spec.resources.gpus == 2
    assert spec.resources.gpu_types == ["RTX-4090"]
    assert len(verify.verify_job_name("n" * 63)) == 63


def test_a_claim_names_what_a_verdict_is_about() -> None:
    assert verify.claim_of(node()) == {
        "gpus": 2,
        "model": "RTX-4090",
        "memory_gb": 23.99,
        "compute_capability": "8.9",
    }
    assert verify.claim_of(Node("cpu-box", cpus=8, memory_gb=16)) == {"gpus": 0}
