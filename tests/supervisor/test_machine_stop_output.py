"""What a run prints while it obeys an operator's stop, restart or the supervisor's shutdown is no finding."""

from __future__ import annotations

import pytest

from supervisor.core.machine_types import (
    Diagnosed,
    Event,
    Exited,
    GroupGone,
    RestartRequested,
    ShutdownRequested,
    Stalled,
    StopRequested,
)
from supervisor.core.states import Cause, EventKind, ExitStatus, State
from tests.supervisor.test_machine import driver

ENGINE_DEAD = Diagnosed(1, Cause.ENGINE_DEAD, "engine_dead", has_cuda_oom=False)


@pytest.mark.parametrize("request_", [StopRequested(), RestartRequested(requested_at=20), ShutdownRequested()])
def test_engine_dead_printed_during_a_requested_stop_is_not_diagnosed(request_: Event) -> None:
    """vLLM prints EngineDeadError as it obeys SIGTERM: no diagnosed event, no cause, no advice."""
    d = driver()
    d.boot()
    d.healthy()
    d.feed(request_, 30)
    assert d.feed(ENGINE_DEAD).actions == ()
    d.feed(Exited(1, ExitStatus(0)), 30.3)
    d.feed(GroupGone(1), 30.4)
    assert d.records(EventKind.DIAGNOSED) == []
    assert d.snap.failure_cause is None
    assert d.snap.run_cause is None


def test_output_while_a_failed_run_is_torn_down_is_still_diagnosed() -> None:
    """A run stopped because it failed (here: stalled) still has its last words read: they may say why."""
    d = driver()
    d.boot()
    d.healthy()
    d.feed(Stalled(1, "no output for 60s"), 30)
    assert d.snap.state is State.STOPPING
    step = d.feed(ENGINE_DEAD)
    assert [r.kind for r in d.records(EventKind.DIAGNOSED)] == [EventKind.DIAGNOSED]
    assert step.actions


def test_a_shorter_stop_timeout_wins_for_a_loading_run() -> None:
    """startup_stop_timeout never lengthens a stop: with stop_timeout 1 a loading run is killed after 1 s."""
    d = driver(stop_timeout=1, startup_stop_timeout=5)
    d.boot()
    d.feed(StopRequested(), 10)
    assert d.snap.kill_at == 11
