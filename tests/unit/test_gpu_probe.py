"""The GPU probe: the real NVIDIA library where there is one, a stand-in NVML everywhere else.

The stand-in has pynvml's functions and raises pynvml's own `NVMLError` classes, built as pynvml
builds them (`NVMLError(code)` becomes the code's subclass), so the probe sees what it would see
on a real machine.
"""

from __future__ import annotations

import ctypes
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from cluster.gpu_probe import GpuProbe, GpuProbeError, ProbedGpu, probe_gpus
from scheduler import gpus

RTX_4090_BYTES = 25_757_220_864  # 24,564 MiB, what NVML reports for an RTX 4090
H100_BYTES = 85_520_809_984  # 81,559 MiB, an H100 80GB HBM3
CHECK = "check `nvidia-smi` on this machine (it reads the same library)"


def nvidia_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.fixture
def pynvml() -> ModuleType:
    return pytest.importorskip("pynvml")


def nvml_error(pynvml: ModuleType, code_name: str) -> Exception:
    """The error pynvml raises for an NVML return code: `NVMLError(code)`, mapped to a subclass."""
    error: Exception = pynvml.NVMLError(getattr(pynvml, code_name))
    return error


@dataclass
class Device:
    name: str | bytes = "NVIDIA GeForce RTX 4090"
    total: int = RTX_4090_BYTES
    cc: tuple[int, int] = (8, 9)
    uuid: str | bytes = "GPU-00000000-0000-0000-0000-000000000000"


@dataclass
class StandInNvml:
    """pynvml's functions over a list of devices; `fail` maps a function name to its error."""

    pynvml: ModuleType
    devices: Sequence[Device] = ()
    fail: dict[str, Exception] = field(default_factory=dict)
    fail_on_index: int | None = None
    driver: str | bytes = "550.54.15"
    cuda: int = 12040
    calls: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        # NVMLError and every NVMLError_* subclass, exactly pynvml's
        if name.startswith("NVMLError"):
            return getattr(self.pynvml, name)
        raise AttributeError(name)

    def _call(self, name: str, index: int | None = None) -> None:
        self.calls.append(name)
        if name in self.fail and (self.fail_on_index is None or index == self.fail_on_index):
            raise self.fail[name]

    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._call("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._call("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call("nvmlDeviceGetHandleByIndex", index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        self._call("nvmlDeviceGetName", handle)
        return self.devices[handle].name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self._call("nvmlDeviceGetMemoryInfo", handle)
        total = self.devices[handle].total
        return SimpleNamespace(total=total, free=total, used=0)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        self._call("nvmlDeviceGetCudaComputeCapability", handle)
        return self.devices[handle].cc

    def nvmlDeviceGetUUID(self, handle: int) -> str | bytes:
        self._call("nvmlDeviceGetUUID", handle)
        return self.devices[handle].uuid


def stand_in(pynvml: ModuleType, *devices: Device, **kwargs: Any) -> StandInNvml:
    return StandInNvml(pynvml, devices, **kwargs)


# --- the real library ----


@pytest.mark.skipif(nvidia_library_present(), reason="this machine has the NVIDIA library")
def test_a_machine_without_the_nvidia_library_is_a_cpu_only_node() -> None:
    probe = probe_gpus()

    assert probe.cpu_only
    assert probe.gpus == ()
    assert probe.models == ()
    assert probe.note is not None
    assert "a CPU-only node" in probe.note


@pytest.mark.skipif(not nvidia_library_present(), reason="needs the NVIDIA library and a GPU")
def test_a_gpu_machine_lists_its_gpus_with_names_memory_and_compute_capability() -> None:
    probe = probe_gpus()

    assert not probe.cpu_only, probe.note
    assert [g.index for g in probe.gpus] == list(range(len(probe.gpus)))
    for g in probe.gpus:
        assert g.name
        assert g.memory_gb > 0
        assert g.compute_capability >= (3, 0)
        assert g.label == gpus.label_value(g.model or g.name)
    assert probe.driver_version


def test_without_pynvml_a_machine_is_a_cpu_only_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError

    probe = probe_gpus()

    assert probe == GpuProbe(
        gpus=(),
        driver_version=None,
        cuda_version=None,
        note="pynvml (package nvidia-ml-py) is not installed: a CPU-only node",
    )


# --- a stand-in NVML ----


def test_two_rtx_4090s_are_read_with_model_label_memory_and_versions(pynvml: ModuleType) -> None:
    nvml = stand_in(
        pynvml,
        Device(uuid="GPU-aaaa"),
        Device(uuid="GPU-bbbb"),
    )

    probe = probe_gpus(nvml)

    assert probe.gpus == (
        ProbedGpu(0, "NVIDIA GeForce RTX 4090", 23.99, (8, 9), "GPU-aaaa", "RTX-4090", "RTX-4090"),
        ProbedGpu(1, "NVIDIA GeForce RTX 4090", 23.99, (8, 9), "GPU-bbbb", "RTX-4090", "RTX-4090"),
    )
    assert probe.driver_version == "550.54.15"
    assert probe.cuda_version == "12.4"
    assert probe.note is None
    assert not probe.cpu_only
    assert probe.models == ("RTX-4090",)
    assert nvml.calls[0] == "nvmlInit"
    assert nvml.calls[-1] == "nvmlShutdown"


@pytest.mark.parametrize(
    ("cuda", "expected"),
    [(12040, "12.4"), (11080, "11.8"), (12090, "12.9"), (13000, "13.0"), (0, None)],
)
def test_the_cuda_version_is_read_from_the_driver_integer(
    pynvml: ModuleType, cuda: int, expected: str | None
) -> None:
    assert probe_gpus(stand_in(pynvml, Device(), cuda=cuda)).cuda_version == expected


def test_names_uuids_and_driver_given_as_bytes_read_as_text(pynvml: ModuleType) -> None:
    nvml = stand_in(
        pynvml,
        Device(name=b"NVIDIA H100 80GB HBM3", total=H100_BYTES, cc=(9, 0), uuid=b"GPU-cccc"),
        driver=b"535.161.08",
    )

    probe = probe_gpus(nvml)

    assert probe.gpus == (
        ProbedGpu(0, "NVIDIA H100 80GB HBM3", 79.65, (9, 0), "GPU-cccc", "H100", "H100"),
    )
    assert probe.driver_version == "535.161.08"


def test_a_machine_mixing_models_keeps_index_order(pynvml: ModuleType) -> None:
    nvml = stand_in(
        pynvml,
        Device(name="Tesla T4", total=15_843_721_216, cc=(7, 5)),
        Device(),
        Device(name="Tesla T4", total=15_843_721_216, cc=(7, 5)),
    )

    probe = probe_gpus(nvml)

    assert [g.model for g in probe.gpus] == ["T4", "RTX-4090", "T4"]
    assert probe.models == ("T4", "RTX-4090")


def test_an_unknown_gpu_keeps_its_nvml_name_as_a_kubernetes_label(pynvml: ModuleType) -> None:
    probe = probe_gpus(stand_in(pynvml, Device(name="NVIDIA Futura X1", cc=(13, 0))))

    (gpu,) = probe.gpus
    assert gpu.model is None
    assert gpu.name == "NVIDIA Futura X1"
    assert gpu.label == "NVIDIA-Futura-X1"
    assert probe.models == ("NVIDIA-Futura-X1",)


def test_zero_devices_is_a_cpu_only_node_with_the_driver_still_reported(
    pynvml: ModuleType,
) -> None:
    nvml = stand_in(pynvml)

    probe = probe_gpus(nvml)

    assert probe == GpuProbe(
        gpus=(),
        driver_version="550.54.15",
        cuda_version="12.4",
        note="no NVIDIA GPUs (the NVIDIA library is present but lists none): a CPU-only node",
    )
    assert probe.cpu_only
    assert nvml.calls[-1] == "nvmlShutdown"


# --- NVML failing ----


def test_the_driver_not_loaded_at_init_is_a_cpu_only_node_that_says_so(
    pynvml: ModuleType,
) -> None:
    error = nvml_error(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED")
    assert isinstance(error, pynvml.NVMLError_DriverNotLoaded)
    nvml = stand_in(pynvml, Device(), fail={"nvmlInit": error})

    probe = probe_gpus(nvml)

    assert probe == GpuProbe(
        gpus=(),
        driver_version=None,
        cuda_version=None,
        note=(
            "the NVIDIA driver is not loaded (NVMLError_DriverNotLoaded: Driver Not Loaded): "
            f"a CPU-only node; if this machine has an NVIDIA GPU, {CHECK}"
        ),
    )
    assert nvml.calls == ["nvmlInit"]  # no shutdown without a successful init


def test_no_nvidia_library_at_init_is_a_cpu_only_node_that_says_so(pynvml: ModuleType) -> None:
    error = nvml_error(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND")
    assert isinstance(error, pynvml.NVMLError_LibraryNotFound)

    probe = probe_gpus(stand_in(pynvml, Device(), fail={"nvmlInit": error}))

    assert probe.cpu_only
    assert probe.note == "no NVIDIA library (libnvidia-ml.so.1 not found): a CPU-only node"


def test_any_other_nvml_error_at_init_is_a_cpu_only_node_naming_the_error(
    pynvml: ModuleType,
) -> None:
    error = nvml_error(pynvml, "NVML_ERROR_NO_PERMISSION")

    probe = probe_gpus(stand_in(pynvml, Device(), fail={"nvmlInit": error}))

    assert probe.cpu_only
    assert probe.note == (
        "NVML could not start (NVMLError_NoPermission: Insufficient Permissions): "
        f"a CPU-only node; if this machine has an NVIDIA GPU, {CHECK}"
    )


@pytest.mark.parametrize(
    "call",
    [
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetName",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetCudaComputeCapability",
    ],
)
def test_a_device_that_cannot_be_read_stops_the_probe_naming_gpu_and_call(
    pynvml: ModuleType, call: str
) -> None:
    error = nvml_error(pynvml, "NVML_ERROR_GPU_IS_LOST")
    nvml = stand_in(pynvml, Device(), Device(), fail={call: error}, fail_on_index=1)

    with pytest.raises(GpuProbeError) as raised:
        probe_gpus(nvml)

    assert str(raised.value) == (
        f"GPU 1: {call} failed (NVMLError_GpuIsLost: GPU is lost); the node would join with a "
        f"wrong GPU claim, so it does not join. To fix: {CHECK}, and see that it lists every GPU "
        "with its name and memory"
    )
    assert isinstance(raised.value, ValueError)
    assert raised.value.__cause__ is error
    assert nvml.calls[-1] == "nvmlShutdown"


def test_a_device_count_that_cannot_be_read_stops_the_probe(pynvml: ModuleType) -> None:
    error = nvml_error(pynvml, "NVML_ERROR_UNKNOWN")
    nvml = stand_in(pynvml, Device(), fail={"nvmlDeviceGetCount": error})

    with pytest.raises(GpuProbeError, match=r"^NVML: nvmlDeviceGetCount failed \(NVMLError_Unk"):
        probe_gpus(nvml)
    assert nvml.calls[-1] == "nvmlShutdown"


@pytest.mark.parametrize(
    ("call", "read"),
    [
        ("nvmlDeviceGetUUID", lambda p: p.gpus[0].uuid),
        ("nvmlSystemGetDriverVersion", lambda p: p.driver_version),
        ("nvmlSystemGetCudaDriverVersion", lambda p: p.cuda_version),
    ],
)
def test_what_nvml_cannot_say_besides_the_gpus_themselves_is_none(
    pynvml: ModuleType, call: str, read: Callable[[GpuProbe], str | None]
) -> None:
    error = nvml_error(pynvml, "NVML_ERROR_NOT_SUPPORTED")

    probe = probe_gpus(stand_in(pynvml, Device(), fail={call: error}))

    assert read(probe) is None
    assert probe.gpus[0].model == "RTX-4090"


def test_a_failing_shutdown_does_not_hide_the_result(pynvml: ModuleType) -> None:
    error = nvml_error(pynvml, "NVML_ERROR_UNINITIALIZED")

    probe = probe_gpus(stand_in(pynvml, Device(), fail={"nvmlShutdown": error}))

    assert probe.models == ("RTX-4090",)


# --- reports ----


def test_the_probe_reports_as_json(pynvml: ModuleType) -> None:
    probe = probe_gpus(stand_in(pynvml, Device(uuid="GPU-aaaa")))

    assert json.loads(json.dumps(probe.to_json())) == {
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA GeForce RTX 4090",
                "memory_gb": 23.99,
                "compute_capability": [8, 9],
                "uuid": "GPU-aaaa",
                "model": "RTX-4090",
                "label": "RTX-4090",
            }
        ],
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "note": None,
        "cpu_only": False,
        "models": ["RTX-4090"],
    }


@pytest.mark.parametrize(
    ("nvml_name", "model"),
    [
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("Tesla T4", "T4"),
        ("NVIDIA H200", "H200"),
    ],
)
def test_names_nvml_reports_resolve_in_the_catalogue(nvml_name: str, model: str) -> None:
    found = gpus.find(nvml_name)
    assert found is not None
    assert found.name == model
