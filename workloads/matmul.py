"""A GPU's speed, measured: half-precision matrix products on the first visible CUDA device.

Needs torch alone (no Ray), so that it runs anywhere torch does; the Probe workload calls it.
"""

from __future__ import annotations

import time
from typing import Any

MATMUL_SECONDS = 2.0


def measure_cuda(size: int, seconds: float = MATMUL_SECONDS) -> dict[str, Any] | None:
    """Name, memory and half-precision matmul TFLOP/s of the first visible CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        iterations += 10
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "device": props.name,
        "memory_gb": round(props.total_memory / 2**30, 2),
        "tflops": round(2 * size**3 * iterations / elapsed / 1e12, 1),
        "dtype": str(dtype).removeprefix("torch."),
    }
