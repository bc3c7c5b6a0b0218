"""Pure decisions of smart recovery (docs/recovery.md): what a failed run's output says would fit, and the
arguments the next run gets.

vLLM says what fits when a start fails for want of memory: "the estimated maximum model length is N" when the
KV cache cannot hold one request of --max-model-len, and "Free memory on device (F/T GiB) ... is less than
desired GPU memory utilization" when other processes hold the GPU. torch's CUDA OOM names the processes that
hold the device ("Process P has X GiB memory in use"). This module reads those numbers and turns them into a
new argument list. It never goes below the operator's floors and never returns a change that changes nothing,
so a run that fails the same way again leaves nothing to adapt and the normal restart budget applies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_MODEL_LEN = "--max-model-len"
GPU_MEMORY_UTILIZATION = "--gpu-memory-utilization"
PORT = "--port"

_ESTIMATE = re.compile(r"estimated maximum model length is (\d+)")
_FREE_MEMORY = re.compile(r"Free memory on device(?: \S+)? \((\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) GiB\)")
_TORCH_HOLDER = re.compile(r"Process (\d+) has (\d+(?:\.\d+)?) ([GM])iB memory in use")
_LENGTH = re.compile(r"(\d+)([kKmM]?)")
# vLLM's human-readable integers: k and m are powers of ten, K and M powers of two.
_SUFFIX = {"": 1, "k": 1000, "m": 1000**2, "K": 1024, "M": 1024**2}
# Head-room below the free fraction, so rounding in vLLM's own check cannot fail the adapted start.
_UTILIZATION_MARGIN = 0.01


@dataclass(frozen=True, slots=True)
class Floors:
    """The lowest values adapting may set (`adapt_min_max_model_len`, `adapt_min_gpu_memory_utilization`)."""

    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.5


@dataclass(frozen=True, slots=True)
class Adaptation:
    """One change of one flag for the next run: `before` None when the flag was not given."""

    flag: str
    before: str | None
    after: str
    reason: str

    @property
    def detail(self) -> str:
        """The timeline's words for it, e.g. "max_model_len 131072 -> 21440 (vLLM's estimate)"."""
        name = self.flag.removeprefix("--").replace("-", "_")
        return f"{name} {self.before or 'default'} -> {self.after} ({self.reason})"


@dataclass(frozen=True, slots=True)
class TorchHolder:
    """A process torch's CUDA OOM message names as holding GPU memory."""

    pid: int
    gib: float


def parse_estimate(line: str) -> int | None:
    """vLLM's estimate of the longest context the KV cache holds, when the line gives one."""
    found = _ESTIMATE.search(line)
    return None if found is None else int(found[1])


def parse_free_memory(line: str) -> tuple[float, float] | None:
    """(free, total) GiB from vLLM's "Free memory on device (F/T GiB)" start-up guard."""
    found = _FREE_MEMORY.search(line)
    return None if found is None else (float(found[1]), float(found[2]))


def parse_torch_holders(line: str) -> tuple[TorchHolder, ...]:
    """Every "Process P has X GiB memory in use" of a torch CUDA OOM line (torch >= 2.4 on a shared GPU)."""
    return tuple(
        TorchHolder(int(pid), float(amount) / (1024 if unit == "M" else 1))
        for pid, amount, unit in _TORCH_HOLDER.findall(line)
    )


def _names(flag: str) -> tuple[str, str]:
    # vLLM's parser takes --max_model_len as well as --max-model-len.
    return flag, "--" + flag.removeprefix("--").replace("-", "_")


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value given for `flag` (`--flag V` or `--flag=V`), or None."""
    names = _names(flag)
    value = None
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name in names:
            if eq:
                value = inline
            elif i + 1 < len(args):
                value = args[i + 1]
    return value


def with_flag(args: Sequence[str], flag: str, value: str) -> tuple[str, ...]:
    """`args` with every value of `flag` set to `value` (each form kept), or `flag value` added at the end."""
    names = _names(flag)
    out: list[str] = []
    replaced = False
    i = 0
    while i < len(args):
        name, eq, _ = args[i].partition("=")
        if name in names and eq:
            out.append(f"{name}={value}")
            replaced = True
        elif name in names and i + 1 < len(args):
            out += [name, value]
            replaced = True
            i += 1
        else:
            out.append(args[i])
        i += 1
    return tuple(out) if replaced else (*out, flag, value)


def parse_length(text: str | None) -> int | None:
    """A --max-model-len value as vLLM reads it (`32768`, `32k`, `32K`, `1m`); None when absent or unreadable."""
    found = None if text is None else _LENGTH.fullmatch(text.strip())
    return None if found is None else int(found[1]) * _SUFFIX[found[2]]


def port_of(args: Sequence[str]) -> int | None:
    """The port the server is told to listen on, when `--port` gives one."""
    value = flag_value(args, PORT)
    return int(value) if value is not None and value.isdigit() else None


def adapt_max_model_len(args: Sequence[str], estimate: int, floors: Floors) -> Adaptation | None:
    """`--max-model-len` lowered to vLLM's estimate; None when that is below the floor or no lower than now."""
    before = flag_value(args, MAX_MODEL_LEN)
    current = parse_length(before)
    if estimate < floors.max_model_len or (current is not None and estimate >= current):
        return None
    return Adaptation(MAX_MODEL_LEN, before, str(estimate), "vLLM's estimate")


def fit_utilization(free_gib: float, total_gib: float) -> float:
    """The largest --gpu-memory-utilization (two decimals) that asks for less than `free_gib` of `total_gib`."""
    return math.floor((free_gib / total_gib - _UTILIZATION_MARGIN) * 100) / 100


def adapt_gpu_memory_utilization(
    args: Sequence[str], free_gib: float, total_gib: float, floors: Floors
) -> Adaptation | None:
    """`--gpu-memory-utilization` lowered to what is free; None below the floor or when it is no lower."""
    if total_gib <= 0:
        return None
    before = flag_value(args, GPU_MEMORY_UTILIZATION)
    try:
        current = 0.9 if before is None else float(before)  # vLLM's default
    except ValueError:
        current = None
    fit = fit_utilization(free_gib, total_gib)
    if fit < floors.gpu_memory_utilization or (current is not None and fit >= current):
        return None
    return Adaptation(GPU_MEMORY_UTILIZATION, before, f"{fit:.2f}", f"{free_gib:g} of {total_gib:g} GiB free")


def apply(args: Sequence[str], adaptation: Adaptation) -> tuple[str, ...]:
    """The arguments of the next run."""
    return with_flag(args, adaptation.flag, adaptation.after)
