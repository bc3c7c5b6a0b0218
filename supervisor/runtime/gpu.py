"""GPU memory as NVML reports it, through `nvidia-ml-py` (the optional extra `gpu`), imported only when present.

Without the package, the driver or a GPU, a reading has no GPUs and says why in `error`: never made-up
figures. NVML is initialised once and kept; a failed initialisation is retried on the next read, so a driver
that comes up after the supervisor is still found.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

NOT_INSTALLED = "nvidia-ml-py is not installed (pip install 'llm-supervisor[gpu]')"


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    used_memory: int | None  # bytes; None where the driver does not say (for example inside some containers)


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    memory_total: int  # bytes
    memory_used: int  # bytes
    processes: tuple[GpuProcess, ...]


@dataclass(frozen=True, slots=True)
class GpuReading:
    gpus: tuple[Gpu, ...]
    error: str | None = None  # why there are no figures: no package, no driver, no GPU

    def memory_of(self, pids: Collection[int]) -> int:
        """Bytes of GPU memory the given processes hold, over every GPU (unknown amounts count 0)."""
        return sum(p.used_memory or 0 for gpu in self.gpus for p in gpu.processes if p.pid in pids)

    def holders(self) -> dict[int, int]:
        """pid -> bytes held, over every GPU."""
        held: dict[int, int] = {}
        for gpu in self.gpus:
            for proc in gpu.processes:
                held[proc.pid] = held.get(proc.pid, 0) + (proc.used_memory or 0)
        return held


class Nvml:
    """Reads every GPU. `module` is the `pynvml` module; tests pass a stand-in (there is no GPU in CI)."""

    def __init__(self, module: Any = None) -> None:
        self._module = module
        self._ready = False

    def read(self) -> GpuReading:
        nvml = self._module
        if nvml is None:
            try:
                nvml = self._module = importlib.import_module("pynvml")
            except ImportError:
                return GpuReading((), NOT_INSTALLED)
        try:
            if not self._ready:
                nvml.nvmlInit()
                self._ready = True
            gpus = tuple(_read_gpu(nvml, index) for index in range(nvml.nvmlDeviceGetCount()))
        except nvml.NVMLError as exc:
            return GpuReading((), f"NVML: {exc}")
        return GpuReading(gpus, None if gpus else "NVML found no GPU")


def _read_gpu(nvml: Any, index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    seen: dict[int, GpuProcess] = {}
    for query in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
        for info in query(handle):
            used = info.usedGpuMemory
            seen.setdefault(int(info.pid), GpuProcess(int(info.pid), int(used) if isinstance(used, int) else None))
    return Gpu(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_total=int(memory.total),
        memory_used=int(memory.used),
        processes=tuple(seen.values()),
    )
