"""NVML readings: the real package on a machine without a driver, and a stand-in module for a GPU's answers."""

from __future__ import annotations

import types
from typing import Any

import pytest

from supervisor.runtime.gpu import NOT_INSTALLED, GpuProcess, Nvml


class FakeNvmlError(Exception):
    pass


def stand_in(*, fail_init: bool = False, count: int = 1) -> Any:
    """A pynvml look-alike with one 80 GiB GPU and two processes (one listed both as compute and graphics)."""
    gib = 1 << 30
    calls = {"init": 0}

    def init() -> None:
        calls["init"] += 1
        if fail_init:
            raise FakeNvmlError("Driver Not Loaded")

    def proc(pid: int, used: int | None) -> types.SimpleNamespace:
        return types.SimpleNamespace(pid=pid, usedGpuMemory=used)

    return types.SimpleNamespace(
        calls=calls,
        NVMLError=FakeNvmlError,
        nvmlInit=init,
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H200",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * gib, used=30 * gib),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [proc(535, 20 * gib), proc(600, None)],
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [proc(535, 20 * gib)],
    )


def test_a_gpu_is_read_with_its_processes_once_each() -> None:
    """Name, totals and each process once (compute and graphics lists merged); unknown usage stays None."""
    reading = Nvml(stand_in()).read()
    assert reading.error is None
    (gpu,) = reading.gpus
    assert (gpu.index, gpu.name, gpu.memory_total, gpu.memory_used) == (0, "NVIDIA H200", 80 << 30, 30 << 30)
    assert gpu.processes == (GpuProcess(535, 20 << 30), GpuProcess(600, None))
    assert reading.memory_of({535, 600}) == 20 << 30
    assert reading.holders() == {535: 20 << 30, 600: 0}


def test_nvml_is_initialised_once_and_retried_after_a_failure() -> None:
    """A driver that fails to load gives a reason, not figures; a later read tries again."""
    module = stand_in(fail_init=True)
    nvml = Nvml(module)
    first = nvml.read()
    assert (first.gpus, first.error) == ((), "NVML: Driver Not Loaded")
    nvml.read()
    assert module.calls["init"] == 2
    healthy = stand_in()
    nvml = Nvml(healthy)
    nvml.read()
    nvml.read()
    assert healthy.calls["init"] == 1


def test_no_gpu_is_said() -> None:
    assert Nvml(stand_in(count=0)).read().error == "NVML found no GPU"


def test_without_the_package_the_reason_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nvidia-ml-py the reading says how to install it."""
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert Nvml().read().error == NOT_INSTALLED


def test_the_real_package_without_a_driver_says_so() -> None:
    """On a machine with nvidia-ml-py but no NVIDIA driver (CI), the error is NVML's own."""
    pytest.importorskip("pynvml")
    reading = Nvml().read()
    if reading.gpus:
        pytest.skip("this machine has a GPU")
    assert reading.error is not None
    assert reading.error.startswith("NVML: ")
