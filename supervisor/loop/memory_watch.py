"""The memory watch of one run of a model that has `max_memory` or `max_gpu_memory`: every
`memory_check_interval` it samples what the run's processes hold (psutil, NVML) in a worker thread, and posts
the figures to the model's owner as a `MemorySampled` event. Whether they are over a limit is the machine's
decision (supervisor.core.steps.memory_step), like every other finding about a run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from supervisor.core.clock import Clock
from supervisor.core.machine_types import Event, MemorySampled, Settings
from supervisor.runtime.gpu import Nvml
from supervisor.runtime.usage import run_pids, usage_of

log = logging.getLogger(__name__)

# One NVML handle for the whole supervisor (initialised once); tests replace it with a stand-in module's.
NVML = Nvml()


def has_memory_limit(settings: Settings) -> bool:
    return settings.max_memory is not None or settings.max_gpu_memory is not None


def sample_run(pid: int, with_gpu: bool) -> MemorySampled | None:
    """What the run led by `pid` holds now (blocking: call in a worker thread); None when nothing of it is left.
    The run number is filled in by the caller."""
    pids = run_pids(pid)
    if not pids:
        return None
    usage = usage_of(pids)
    gpu = None
    if with_gpu:
        reading = NVML.read()
        gpu = None if reading.error is not None else reading.memory_of(set(usage.pids))
    return MemorySampled(0, usage.rss, gpu)


async def watch_memory(  # noqa: PLR0917 (the run, as the owner knows it)
    post: Callable[[Event], None],
    is_current: Callable[[], bool],
    number: int,
    pid: int | None,
    settings: Settings,
    clock: Clock,
    unit: str = "",
) -> None:
    """Sample run `number` (main process `pid`) every memory_check_interval while `is_current()` says it is
    the owner's live run; end with it."""
    if pid is None:
        return
    with_gpu = settings.max_gpu_memory is not None
    if with_gpu and (error := (await asyncio.to_thread(NVML.read)).error) is not None:
        log.warning("%s: max_gpu_memory cannot be checked for run %d: %s", unit, number, error)
    while True:
        await clock.sleep_until(clock.now() + settings.memory_check_interval)
        if not is_current():
            return
        sample = await asyncio.to_thread(sample_run, pid, with_gpu)
        if sample is None or not is_current():
            return
        post(MemorySampled(number, sample.rss, sample.gpu))
