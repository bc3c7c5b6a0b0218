"""Shared fixtures for supervisor tests: leftover-process checks and condition waits.

`no_process_left` marks every process a test starts (an environment variable its children inherit, so
orphans reparented to init are found too) and, after the test, fails it if any of them is still alive or
any child of ours is an unreaped zombie, then kills and reaps them so one broken test cannot poison the
next. Zombies reparented to init are not ours to reap and hold nothing, so they do not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import psutil
import pytest

_MARK_ENV = "LLM_SUPERVISOR_TEST_MARK"
# Processes that were just signalled need a moment to die, more so on a loaded CI machine.
_SETTLE_SECONDS = 5.0


def _marked_processes(mark: str) -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(_MARK_ENV) == mark:
                found.append(proc)
        except psutil.Error:
            continue  # gone meanwhile, or another user's process
    return found


def _leftovers(mark: str) -> list[psutil.Process]:
    """Live processes the test started, and our own children nobody reaped (zombies)."""
    left = {proc.pid: proc for proc in _marked_processes(mark)}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE or child.ppid() == os.getpid():
                left[child.pid] = child
    return list(left.values())


def _remove(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=_SETTLE_SECONDS)
    for proc in procs:  # our own zombies: reap them so the next test starts clean
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, os.WNOHANG)


def _describe(procs: list[psutil.Process]) -> str:
    parts = []
    for proc in procs:
        try:
            parts.append(f"{proc.pid} ({proc.status()}) {proc.cmdline()!r}")
        except psutil.Error:
            parts.append(f"{proc.pid} (zombie or gone)")
    return ", ".join(parts)


@pytest.fixture
def no_process_left(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Fail the test if any process it started (children, grandchildren, orphans) outlives it."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(_MARK_ENV, mark)
    yield mark
    deadline = time.monotonic() + _SETTLE_SECONDS
    left = _leftovers(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _leftovers(mark)
    if left:
        description = _describe(left)
        _remove(left)
        pytest.fail(f"processes left behind by the test: {description}")


WaitUntil = Callable[[Callable[[], bool], float], Awaitable[None]]


@pytest.fixture
def wait_until() -> WaitUntil:
    """An async helper: poll `predicate` every 10 ms until it holds, failing after `timeout` seconds."""

    async def wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                pytest.fail(f"condition not met within {timeout} s")
            await asyncio.sleep(0.01)

    return wait
