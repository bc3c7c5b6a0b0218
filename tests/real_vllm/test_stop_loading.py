"""A stop of real vLLM while it loads: vLLM ignores SIGTERM then, so the stop must not wait out stop_timeout.

A loading server has no request to drain; `startup_stop_timeout` (default 5 s) is its grace before SIGKILL,
however long `stop_timeout` is (30 s here).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from supervisor.core.states import EventKind, State
from tests.real_vllm.harness import (
    describe,
    events_since,
    group_members,
    last_seq,
    log_lines,
    of_kind,
    report,
    show_events,
    supervised,
    vllm_model,
    wait_until,
)

pytestmark = pytest.mark.real_vllm

MODEL = "tiny"
STARTUP_STOP_TIMEOUT = 5.0  # the default
LOADING = "Initializing a V1 LLM engine"  # EngineCore's first line: the engine is being built


@pytest.mark.timeout(480)
async def test_a_stop_during_loading_ends_within_startup_stop_timeout(
    tiny_model: Path, tag: str, tmp_path: Path
) -> None:
    entry = vllm_model(tiny_model, tag, stop_timeout=30)
    async with supervised(tmp_path / "state", {MODEL: entry}, tag) as running:
        fleet = running.fleet
        await wait_until(lambda: any(LOADING in line for line in log_lines(fleet, MODEL)), 300, "the engine to load")
        assert fleet.status(MODEL).state is State.STARTING
        pid = fleet.status(MODEL).pid
        assert pid is not None
        members = describe(group_members(pid))
        seq, lines_before = last_seq(fleet, MODEL), len(log_lines(fleet, MODEL))
        started = time.monotonic()
        result = await fleet.stop_model(MODEL)
        assert result.accepted, result.message
        await wait_until(lambda: fleet.status(MODEL).state is State.STOPPED, 60, "the model to be stopped")
        took = time.monotonic() - started
        left = group_members(pid)
        events = events_since(fleet, MODEL, seq)
        lines = log_lines(fleet, MODEL)[lines_before:]
    killed = of_kind(events, EventKind.KILLED)
    report(
        "stop-during-loading",
        f"stop requested while loading; stopped after {took:.2f} s (stop_timeout 30, startup_stop_timeout default)\n"
        f"SIGKILL needed: {bool(killed)} ({killed[0].detail if killed else 'SIGTERM was obeyed'})\n"
        "group at the stop:\n  " + "\n  ".join(members) + "\n"
        f"events:\n{show_events(events)}\noutput after the stop request:\n" + "\n".join(lines),
    )
    assert not left, describe(left)
    assert took <= STARTUP_STOP_TIMEOUT + 5, show_events(events)
