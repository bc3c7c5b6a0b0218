"""The daemon's event lines: one per timeline event, naming the replica when a model has several."""

from __future__ import annotations

import io

from supervisor.cli.daemon import EventPrinter
from supervisor.core.states import EventKind, State
from supervisor.core.views import TimelineEvent


def line_for(event: TimelineEvent) -> str:
    out = io.StringIO()
    EventPrinter(out).on_event(event)
    return out.getvalue().rstrip("\n").split(" ", 2)[2]


def test_a_replica_is_named_after_its_model() -> None:
    """Replica 0 reads as the model itself; replica 1 as 'qwen#1', the name of its log."""
    first = TimelineEvent(1, 0.0, "qwen", EventKind.HEALTHY, State.HEALTHY)
    second = TimelineEvent(2, 0.0, "qwen", EventKind.EXITED, State.BACKOFF, "exit code 1", "crash", replica=1)
    assert line_for(first) == "qwen: healthy"
    assert line_for(second) == "qwen#1: exited -> backoff (exit code 1) [reason: crash]"


def test_a_backoff_delay_reads_in_seconds() -> None:
    """The backoff event's detail is a delay: the line says its unit."""
    event = TimelineEvent(3, 0.0, "m", EventKind.BACKOFF, State.BACKOFF, "2.5", "crash")
    assert line_for(event) == "m: backoff (2.5 s) [reason: crash]"
