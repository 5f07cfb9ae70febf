"""What NVIDIA GPUs this machine has, read from the NVIDIA Management Library (NVML).

This is the only module of the project that imports `pynvml` (package nvidia-ml-py), and it does so
inside `probe_gpus`, so that importing it needs neither the package nor a GPU.

A machine without NVIDIA GPUs, without the NVIDIA library or without `pynvml` is a CPU-only node:
the probe returns no GPUs and a `note` saying why, never an exception. A machine whose GPUs NVML
cannot read one by one raises `GpuProbeError` instead, because a node that joined with a half-read
claim would be scheduled for GPUs it does not have.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scheduler import gpus

__all__ = ["GpuProbe", "GpuProbeError", "ProbedGpu", "probe_gpus"]

_GIB = 2**30
_CPU_ONLY = "a CPU-only node"
_CHECK = "check `nvidia-smi` on this machine (it reads the same library)"


class GpuProbeError(ValueError):
    """NVML started but could not read what the GPUs are; the message names the GPU and the call."""


@dataclass(frozen=True)
class ProbedGpu:
    """One GPU as NVML reports it, with the catalogue model its name resolves to."""

    index: int
    name: str
    memory_gb: float
    compute_capability: tuple[int, int]
    uuid: str | None
    model: str | None
    label: str

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "memory_gb": self.memory_gb,
            "compute_capability": list(self.compute_capability),
            "uuid": self.uuid,
            "model": self.model,
            "label": self.label,
        }


@dataclass(frozen=True)
class GpuProbe:
    """What the probe found: the GPUs in index order, the driver, and why there are none."""

    gpus: tuple[ProbedGpu, ...]
    driver_version: str | None
    cuda_version: str | None
    note: str | None

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    @property
    def models(self) -> tuple[str, ...]:
        """The distinct catalogue names (labels for GPUs the catalogue lacks), in index order."""
        return tuple(dict.fromkeys(g.model or g.label for g in self.gpus))

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": [g.to_json() for g in self.gpus],
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "note": self.note,
            "cpu_only": self.cpu_only,
            "models": list(self.models),
        }


def probe_gpus(nvml: Any | None = None) -> GpuProbe:
    """Read this machine's NVIDIA GPUs.

    `nvml` defaults to the `pynvml` module; any object with the same functions and its
    `NVMLError` class hierarchy will do (the tests pass a stand-in).

    1. Load NVML; without `pynvml` or the NVIDIA library, or if `nvmlInit` fails, a CPU-only node.
    2. Read the driver and CUDA versions (informational: None where NVML does not say).
    3. Count the devices; none is a CPU-only node.
    4. Read each device in index order; a failed read raises `GpuProbeError`.
    5. Shut NVML down, whatever happened after a successful `nvmlInit`.
    """
    if nvml is None:
        try:
            import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py ships no type hints
        except ImportError:
            return _cpu_only(f"pynvml (package nvidia-ml-py) is not installed: {_CPU_ONLY}")
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        return _cpu_only(_init_note(nvml, error))
    try:
        driver = _optional_text(nvml, nvml.nvmlSystemGetDriverVersion)
        cuda = _cuda_version(nvml)
        count = _read(nvml, None, "nvmlDeviceGetCount")
        if count == 0:
            note = f"no NVIDIA GPUs (the NVIDIA library is present but lists none): {_CPU_ONLY}"
            return GpuProbe(gpus=(), driver_version=driver, cuda_version=cuda, note=note)
        found = tuple(_probe_device(nvml, index) for index in range(count))
        return GpuProbe(gpus=found, driver_version=driver, cuda_version=cuda, note=None)
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _cpu_only(note: str) -> GpuProbe:
    return GpuProbe(gpus=(), driver_version=None, cuda_version=None, note=note)


def _init_note(nvml: Any, error: Exception) -> str:
    """Why `nvmlInit` failed, as a note: the usual reasons in words, the others by name."""
    if _is(nvml, error, "NVMLError_LibraryNotFound"):
        return f"no NVIDIA library (libnvidia-ml.so.1 not found): {_CPU_ONLY}"
    if _is(nvml, error, "NVMLError_DriverNotLoaded"):
        return (
            f"the NVIDIA driver is not loaded ({_describe(error)}): {_CPU_ONLY}; "
            f"if this machine has an NVIDIA GPU, {_CHECK}"
        )
    return (
        f"NVML could not start ({_describe(error)}): {_CPU_ONLY}; "
        f"if this machine has an NVIDIA GPU, {_CHECK}"
    )


def _is(nvml: Any, error: Exception, class_name: str) -> bool:
    cls = getattr(nvml, class_name, None)
    return isinstance(cls, type) and isinstance(error, cls)


def _describe(error: Exception) -> str:
    """'NVMLError_DriverNotLoaded: Driver Not Loaded'."""
    return f"{type(error).__name__}: {error}"


def _probe_device(nvml: Any, index: int) -> ProbedGpu:
    handle = _read(nvml, index, "nvmlDeviceGetHandleByIndex", index)
    name = _text(_read(nvml, index, "nvmlDeviceGetName", handle)).strip()
    memory = _read(nvml, index, "nvmlDeviceGetMemoryInfo", handle)
    major, minor = _read(nvml, index, "nvmlDeviceGetCudaComputeCapability", handle)
    found = gpus.find(name)
    model = found.name if found is not None else None
    return ProbedGpu(
        index=index,
        name=name,
        memory_gb=round(int(memory.total) / _GIB, 2),
        compute_capability=(int(major), int(minor)),
        uuid=_optional_text(nvml, nvml.nvmlDeviceGetUUID, handle),
        model=model,
        label=gpus.label_value(model or name),
    )


def _read(nvml: Any, index: int | None, call: str, *args: Any) -> Any:
    """`nvml.<call>(*args)`; an NVML failure becomes a GpuProbeError naming the GPU and the call."""
    try:
        return getattr(nvml, call)(*args)
    except nvml.NVMLError as error:
        where = "NVML" if index is None else f"GPU {index}"
        raise GpuProbeError(
            f"{where}: {call} failed ({_describe(error)}); the node would join with a wrong "
            f"GPU claim, so it does not join. To fix: {_CHECK}, and see that it lists every GPU "
            "with its name and memory"
        ) from error


def _optional_text(nvml: Any, fn: Callable[..., Any], *args: Any) -> str | None:
    """`fn(*args)` as text, or None when NVML cannot say (an old driver, a virtual GPU)."""
    try:
        return _text(fn(*args)).strip() or None
    except nvml.NVMLError:
        return None


def _cuda_version(nvml: Any) -> str | None:
    """The CUDA version the driver supports: 12040 -> "12.4"; None when NVML cannot say."""
    try:
        value = int(nvml.nvmlSystemGetCudaDriverVersion())
    except nvml.NVMLError:
        return None
    if value <= 0:
        return None
    return f"{value // 1000}.{value % 1000 // 10}"


def _text(value: bytes | str) -> str:
    """NVML strings come back as bytes from some pynvml versions and as str from others."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
