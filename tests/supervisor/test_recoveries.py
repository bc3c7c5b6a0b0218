"""How recoveries and restarts are counted from a timeline (GET /api/status)."""

from __future__ import annotations

from supervisor.core.states import EventKind, State
from supervisor.core.views import TimelineEvent
from supervisor.loop.heal import Recoveries, count_recoveries, restarts_total


def timeline(*entries: tuple[str, EventKind, str | None, int]) -> list[TimelineEvent]:
    return [
        TimelineEvent(seq, 0.0, model, kind, State.STARTING, None, reason, replica)
        for seq, (model, kind, reason, replica) in enumerate(entries, 1)
    ]


def test_an_attempt_is_the_spawn_after_a_failure_and_succeeds_when_healthy_comes_first() -> None:
    """crash, restart, crash before healthy (attempt failed), restart, healthy (attempt succeeded)."""
    events = timeline(
        ("m", EventKind.SPAWNED, None, 0),
        ("m", EventKind.HEALTHY, None, 0),  # a first start is no recovery
        ("m", EventKind.EXITED, "crash", 0),
        ("m", EventKind.SPAWNED, "crash", 0),
        ("m", EventKind.EXITED, "oom", 0),
        ("m", EventKind.SPAWNED, "oom", 0),
        ("m", EventKind.HEALTHY, None, 0),
        ("m", EventKind.HEALTHY, None, 0),  # healthy again (after unhealthy) is not a second success
    )
    assert count_recoveries(events) == Recoveries(2, 1)
    assert count_recoveries(events).success_rate == 0.5
    assert restarts_total(events) == 2


def test_replicas_and_requested_stops_are_told_apart() -> None:
    """A failure of replica 1 is recovered by replica 1's spawn only; an exit without a cause is no failure."""
    events = timeline(
        ("m", EventKind.EXITED, "crash", 1),
        ("m", EventKind.SPAWNED, "manual", 0),  # another replica: not replica 1's recovery
        ("m", EventKind.HEALTHY, None, 0),
        ("m", EventKind.EXITED, None, 0),  # a requested stop
        ("m", EventKind.SPAWNED, None, 0),
        ("m", EventKind.SPAWNED, None, 1),  # an operator's start after the failure is an attempt too
        ("m", EventKind.HEALTHY, None, 1),
    )
    assert count_recoveries(events) == Recoveries(1, 1)
    assert Recoveries(0, 0).success_rate is None
