"""What watches the fleet from outside (metrics, the daemon's event printer): told of every timeline event
and every probe, in order. An observer's bug never stops supervision: the recorder logs it and goes on."""

from __future__ import annotations

from typing import Protocol

from supervisor.core.views import TimelineEvent


class Observer(Protocol):
    def on_event(self, event: TimelineEvent) -> None:
        """Called for every timeline event, in order."""

    def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
        """Called for every probe (start-up, liveness, manual)."""
