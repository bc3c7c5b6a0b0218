"""The supervisor keeps supervising through its own troubles: a broken journal, a runtime that raises, a
shutdown that cannot finish, requests that arrive while it shuts down."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

import supervisor.loop.fleet as fleet_module
from supervisor.config.schema import parse_config
from supervisor.core.clock import settle
from supervisor.core.states import EventKind, ExitStatus, State
from supervisor.core.views import TimelineEvent
from supervisor.loop.fleet import Fleet
from supervisor.runtime.base import LineSink
from supervisor.store.base import PersistedModel, Store, StoreError
from tests.supervisor.test_owner_loop import FakeRun


class Runtime:
    """Spawns fake runs; `error` makes the next spawns raise it (not a SpawnError: a bug or odd input)."""

    def __init__(self) -> None:
        self.runs: list[FakeRun] = []
        self.error: Exception | None = None

    async def spawn(self, model_id: str, run_number: int, sink: LineSink) -> FakeRun:
        if self.error is not None:
            raise self.error
        self.runs.append(FakeRun(1000 + run_number, sink))
        return self.runs[-1]


class BrokenJournal:
    """A journal on a full disk: every write fails."""

    def last_seq(self) -> int:
        return 0

    def load_models(self) -> dict[str, PersistedModel]:
        return {}

    def append(self, event: TimelineEvent) -> None:
        raise StoreError("journal write failed: database or disk is full")

    def save_model(self, model_id: str, model: PersistedModel) -> None:
        raise StoreError("journal write failed: database or disk is full")

    def events(self, model_id: str, since: int = 0, newest: int | None = None) -> list[TimelineEvent]:
        return []


def make(tmp_path: Path, runtime: Runtime, store: Store | None = None, **keys: Any) -> Fleet:
    model = {"command": "unused", "restart_delay": 0.01, "stop_timeout": 0.05, **keys}
    config = parse_config({"supervisor": {"state_dir": str(tmp_path)}, "llmModels": {"m": model}}, "t")
    return Fleet(config, runtimes={"m": runtime}, store=store)


async def wait_for(predicate: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_spawn_that_raises_an_unexpected_error_is_a_counted_failure(tmp_path: Path) -> None:
    """A runtime raising something other than SpawnError (e.g. a NUL byte in an argument) fails that start
    like a crash; the model stays supervised and ends failed once its budget is spent."""
    runtime = Runtime()
    runtime.error = ValueError("embedded null byte")
    sup = make(tmp_path, runtime, max_restarts=2)
    await sup.start()
    try:
        await wait_for(lambda: sup.status("m").state is State.FAILED)
        exits = [e for e in sup.events("m") if e.kind is EventKind.EXITED]
        assert len(exits) == 3
        assert "embedded null byte" in (exits[0].detail or "")
        runtime.error = None
        assert (await sup.start_model("m")).accepted  # the owner still answers
        await wait_for(lambda: sup.status("m").state is State.HEALTHY)
    finally:
        await sup.shutdown()


async def test_a_broken_journal_never_stops_supervision(tmp_path: Path) -> None:
    """With every journal write failing (disk full), crashes are still seen and restarted."""
    runtime = Runtime()
    sup = make(tmp_path, runtime, store=BrokenJournal())
    await sup.start()
    try:
        await wait_for(lambda: len(runtime.runs) == 1)
        runtime.runs[0].die(ExitStatus(1))
        await wait_for(lambda: len(runtime.runs) == 2 and sup.status("m").state is State.HEALTHY)
    finally:
        await sup.shutdown()


async def test_actions_during_shutdown_are_refused_and_start_nothing(tmp_path: Path) -> None:
    """A start or restart that arrives while the supervisor shuts down is refused: no run outlives it."""
    runtime = Runtime()
    sup = make(tmp_path, runtime)
    await sup.start()
    await wait_for(lambda: sup.status("m").state is State.HEALTHY)
    runtime.runs[0].ignore_sigterm = True  # the stop takes until stop_timeout
    stopping = asyncio.ensure_future(sup.shutdown())
    await settle()
    restart = await sup.restart_model("m")
    start = await sup.start_model("m")
    await stopping
    assert (restart.accepted, start.accepted) == (False, False)
    assert restart.message == "the supervisor is shutting down"
    assert len(runtime.runs) == 1


async def test_shutdown_gives_up_on_a_process_that_outlives_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A group that never goes (stuck in the kernel) delays shutdown by stop_timeout plus a grace, not for ever."""
    monkeypatch.setattr(fleet_module, "SHUTDOWN_GRACE", 0.2)
    runtime = Runtime()
    sup = make(tmp_path, runtime)
    await sup.start()
    await wait_for(lambda: sup.status("m").state is State.HEALTHY)
    runtime.runs[0].ignore_sigterm = True
    runtime.runs[0].hold_group = True
    async with asyncio.timeout(5):
        await sup.shutdown()
    assert "gave up" in caplog.text
    assert runtime.runs[0].signals == ["TERM", "KILL"]


async def test_an_unreachable_docker_daemon_stops_only_the_docker_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Docker down, the supervisor still starts; the process model runs, the container model fails."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    models = {
        "boxed": {"command": "vllm", "runtime": "docker", "docker": {"image": "vllm/vllm-openai"}, "max_restarts": 0},
        "plain": {"command": sys.executable, "args": ["-c", "import time; time.sleep(60)"], "stop_timeout": 1},
    }
    config = parse_config({"supervisor": {"state_dir": str(tmp_path)}, "llmModels": models}, "t")
    sup = Fleet(config)
    await sup.start()
    try:
        await wait_for(lambda: sup.status("boxed").state is State.FAILED and sup.status("plain").is_running)
        exited = next(e for e in sup.events("boxed") if e.kind is EventKind.EXITED)
        assert "docker" in (exited.detail or "").lower()
    finally:
        await sup.shutdown()
