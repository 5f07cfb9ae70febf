"""On a machine with an NVIDIA GPU: the Probe's measurement names a catalogue model, reports its
memory, and measures a speed in the range the catalogue expects. Skipped without a CUDA GPU."""

from __future__ import annotations

import pytest

from scheduler import gpus

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_the_matmul_check_measures_a_real_gpu_near_its_catalogue_figures() -> None:
    from workloads.matmul import measure_cuda

    measured = measure_cuda(4096, seconds=1.0)
    assert measured is not None
    model = gpus.find(measured["device"])
    assert model is not None, f"{measured['device']} is not in the GPU catalogue"
    # the marketed "GB" of NVIDIA cards are GiB (an A100-80GB has 81920 MiB)
    assert measured["memory_gb"] == pytest.approx(model.memory_gb, rel=0.1)
    assert 0.25 * model.tflops_16 <= measured["tflops"] <= 1.2 * model.tflops_16, measured
