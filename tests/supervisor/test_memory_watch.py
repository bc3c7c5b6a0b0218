"""The memory watch of one run: what it posts, when it ends, and that an unreadable GPU limit is logged."""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from collections.abc import Iterator

import pytest

from supervisor.core.clock import RealClock
from supervisor.core.machine_types import Event, MemorySampled
from supervisor.loop import memory_watch
from supervisor.runtime.gpu import Nvml
from tests.supervisor.test_machine import make_settings

pytestmark = pytest.mark.usefixtures("no_process_left")


@pytest.fixture
def leader() -> Iterator[subprocess.Popen[bytes]]:
    """A process that leads its own group, as a run's main process does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


async def test_a_live_run_is_sampled_until_it_is_no_longer_current(leader: subprocess.Popen[bytes]) -> None:
    """Each interval posts the run's resident memory; the watch ends once the run is not the live one."""
    posted: list[Event] = []
    settings = make_settings(max_memory=1, memory_check_interval=0.01)
    await memory_watch.watch_memory(posted.append, lambda: len(posted) < 2, 7, leader.pid, settings, RealClock())
    assert len(posted) == 2
    assert all(isinstance(e, MemorySampled) and e.run == 7 and e.rss > 0 and e.gpu is None for e in posted)


async def test_a_run_without_a_pid_or_whose_processes_are_gone_is_not_watched() -> None:
    """No main pid (a runtime that has none), or nothing of the run left: nothing is posted."""
    posted: list[Event] = []
    settings = make_settings(max_memory=1, memory_check_interval=0.01)
    await memory_watch.watch_memory(posted.append, lambda: True, 1, None, settings, RealClock())
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone.wait()
    await memory_watch.watch_memory(posted.append, lambda: True, 1, gone.pid, settings, RealClock())
    assert posted == []


async def test_a_gpu_limit_that_nvml_cannot_check_is_logged(
    leader: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """max_gpu_memory without a working NVML: a warning naming the model and why; samples carry gpu None."""

    class NvmlError(Exception):
        pass

    def init() -> None:
        raise NvmlError("Driver Not Loaded")

    monkeypatch.setattr(memory_watch, "NVML", Nvml(types.SimpleNamespace(NVMLError=NvmlError, nvmlInit=init)))
    posted: list[Event] = []
    settings = make_settings(max_gpu_memory=1, memory_check_interval=0.01)
    with caplog.at_level(logging.WARNING, logger="supervisor.loop.memory_watch"):
        await memory_watch.watch_memory(posted.append, lambda: not posted, 3, leader.pid, settings, RealClock(), "qwen")
    assert "qwen: max_gpu_memory cannot be checked for run 3: NVML: Driver Not Loaded" in caplog.text
    assert [(e.run, e.gpu) for e in posted if isinstance(e, MemorySampled)] == [(3, None)]
