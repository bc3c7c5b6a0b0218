"""A store that lives as long as the process: the timeline and state of a fleet run without a journal.

Each model keeps its newest `max_events_per_model` events, so a flapping model cannot grow memory without
bound. Nothing here can fail, so it never raises StoreError.
"""

from __future__ import annotations

from collections import deque

from supervisor.core.views import TimelineEvent
from supervisor.store.base import PersistedModel

DEFAULT_MAX_EVENTS_PER_MODEL = 2000


class MemoryStore:
    def __init__(self, *, max_events_per_model: int = DEFAULT_MAX_EVENTS_PER_MODEL) -> None:
        self._max_events = max_events_per_model
        self._events: dict[str, deque[TimelineEvent]] = {}
        self._models: dict[str, PersistedModel] = {}
        self._last_seq = 0

    def last_seq(self) -> int:
        return self._last_seq

    def append(self, event: TimelineEvent) -> None:
        self._events.setdefault(event.model_id, deque(maxlen=self._max_events)).append(event)
        self._last_seq = max(self._last_seq, event.seq)

    def events(self, model_id: str, since: int = 0, *, newest: int | None = None) -> list[TimelineEvent]:
        found = [event for event in self._events.get(model_id, ()) if event.seq > since]
        return found[-newest:] if newest else found

    def save_model(self, model_id: str, model: PersistedModel) -> None:
        self._models[model_id] = model

    def load_models(self) -> dict[str, PersistedModel]:
        return dict(self._models)
