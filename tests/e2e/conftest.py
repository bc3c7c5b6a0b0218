"""Fixtures for end-to-end tests: a real Supervisor over real processes, and a check that nothing is left."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.config.schema import parse_config
from supervisor.core.states import EventKind
from supervisor.core.views import TimelineEvent
from supervisor.loop.fleet import Fleet

FAKE_VLLM = str(Path(sys.executable).with_name("fake-vllm"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_model(*flags: str, **keys: Any) -> dict[str, Any]:
    """A model entry running fake-vllm on a free port, with short timings suited to tests."""
    port = free_port()
    entry: dict[str, Any] = {
        "command": FAKE_VLLM,
        "args": ["serve", "test-model", "--port", str(port), *flags],
        "endpoints": {"base_url": f"http://127.0.0.1:{port}/v1"},
        "restart_delay": 0.2,
        "health_check_interval": 0.2,
        "health_check_timeout": 0.5,
        "health_failure_threshold": 2,
        "startup_probe_interval": 0.1,
        "startup_timeout": 20,
        "stop_timeout": 3,
    }
    entry.update(keys)
    return entry


def replicated(count: int = 2, *flags: str, **keys: Any) -> dict[str, Any]:
    """A model of `count` fake-vllm replicas on free ports ("{port}" in args and base_url), timed like fake_model."""
    entry = fake_model(*flags, **keys)
    entry["args"] = ["serve", "test-model", "--port", "{port}", *flags]
    entry["endpoints"] = {"base_url": "http://127.0.0.1:{port}/v1"}
    entry["replicas"] = count
    entry["ports"] = [free_port() for _ in range(count)]
    return entry


def script_model(code: str, **keys: Any) -> dict[str, Any]:
    """A model entry running a small Python program (process liveness only: no endpoint)."""
    entry: dict[str, Any] = {"command": sys.executable, "args": ["-c", code], "restart_delay": 0.1, "stop_timeout": 2}
    entry.update(keys)
    return entry


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition with a deadline; fail naming what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def kinds(events: list[TimelineEvent], kind: EventKind) -> list[TimelineEvent]:
    return [e for e in events if e.kind is kind]


TEST_ID_ENV = "LLM_SUPERVISOR_TEST_ID"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(test_id: str) -> list[psutil.Process]:
    """Our children, plus orphans re-parented to init that inherited this test's id in their environment."""
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    for proc in psutil.process_iter():
        try:
            if proc.pid != me.pid and proc.pid not in found and proc.environ().get(TEST_ID_ENV) == test_id:
                found[proc.pid] = proc
        except psutil.Error:
            continue
    return [p for p in found.values() if _alive(p)]


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return str(proc.pid)


@pytest.fixture
def no_leftovers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test that leaves any process behind, then kill what is left so the next test starts clean."""
    test_id = uuid.uuid4().hex
    monkeypatch.setenv(TEST_ID_ENV, test_id)
    before = {p.pid for p in _descendants(test_id)}
    yield
    left = [p for p in _descendants(test_id) if p.pid not in before]
    described = [_describe(p) for p in left]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not left, f"processes left behind: {described}"


Supervised = Callable[[dict[str, dict[str, Any]]], Any]


@pytest.fixture
def supervised(tmp_path: Path, no_leftovers: None) -> Supervised:
    """`async with supervised({"m": {...}}) as sup:` runs a real Supervisor and always shuts it down."""

    @asynccontextmanager
    async def run(models: dict[str, dict[str, Any]], **supervisor_keys: Any) -> AsyncIterator[Fleet]:
        config = parse_config(
            {"supervisor": {"state_dir": str(tmp_path / "state"), **supervisor_keys}, "llmModels": models}, "test"
        )
        sup = Fleet(config)
        await sup.start()
        try:
            yield sup
        finally:
            await asyncio.wait_for(sup.shutdown(), 30)

    return run


Waiter = Callable[[], Awaitable[None]]
