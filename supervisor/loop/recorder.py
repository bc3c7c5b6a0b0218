"""Everything the fleet remembers of its models: the timeline, the persisted state and the logs.

The owners report here; the recorder stamps each timeline entry (a seq global across models, Unix time),
writes it and the model's persisted state to the store, marks run boundaries in the model's log, and tells
the observers. A broken store (disk full) or a buggy observer never stops supervision: it is logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from supervisor.core.clock import Clock
from supervisor.core.machine_types import Record, Snapshot
from supervisor.core.states import EventKind, RuntimeKind
from supervisor.core.views import TimelineEvent
from supervisor.loop.model import parse_unit
from supervisor.loop.observer import Observer
from supervisor.loop.owner import RunView
from supervisor.loop.persistence import persisted_state
from supervisor.probe import ProbeResult
from supervisor.runtime.base import Stream
from supervisor.store.base import PersistedModel, Store, StoreError
from supervisor.store.logs import LogWriter

log = logging.getLogger(__name__)

RUN_ENDS = (EventKind.EXITED, EventKind.KILLED, EventKind.FAILED)


class Recorder:
    def __init__(self, store: Store, clock: Clock, offset: float) -> None:
        self.store = store
        self._clock = clock
        self._offset = offset  # monotonic -> Unix, fixed for this life of the supervisor
        self._seq = store.last_seq()
        # Keyed by unit: a replica's name (loop.model.unit_name), the model id for a model of one replica.
        self._writers: dict[str, LogWriter] = {}
        self._runtimes: dict[str, RuntimeKind] = {}
        self._saved: dict[str, PersistedModel] = {}  # what the store holds per model, to skip rewrites
        self._observers: list[Observer] = []
        self._store_broken = False

    def add_unit(self, unit: str, writer: LogWriter, runtime: RuntimeKind) -> None:
        self._writers[unit] = writer
        self._runtimes[unit] = runtime

    def remove_unit(self, unit: str) -> None:
        """A reload stopped this replica for good: close its log (a replacement opens its own)."""
        writer = self._writers.pop(unit, None)
        if writer is not None:
            writer.close()
        self._runtimes.pop(unit, None)
        self._saved.pop(unit, None)

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def events(self, model_id: str, since: int = 0, limit: int | None = None) -> list[TimelineEvent]:
        """Events with seq > since, oldest first; with `limit`, only the newest `limit` of them."""
        return self.store.events(model_id, since, newest=limit)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    # --- what owners report (see loop.owner.OwnerReports) ----------------------------------------

    def record(self, unit: str, record: Record, snapshot: Snapshot, run: RunView | None) -> None:
        self._seq += 1
        model_id, replica = parse_unit(unit)
        event = TimelineEvent(
            self._seq, self._clock.wall(), model_id, record.kind, record.state, record.detail, record.reason, replica
        )
        self._mark_log(unit, record, snapshot.run, run)
        self._store(unit, event, persisted_state(snapshot, run, self._runtimes[unit], self._offset))
        self._notify(lambda o: o.on_event(event))

    def probed(self, unit: str, result: ProbeResult) -> None:
        model_id, _ = parse_unit(unit)
        self._notify(lambda o: o.on_probe(model_id, result.ok, result.duration))

    def line(self, unit: str, stream: Stream, text: str) -> None:
        self._writers[unit].write(stream, text)

    # --- plumbing ----------------------------------------------------------------------------------

    def _mark_log(self, unit: str, record: Record, number: int, run: RunView | None) -> None:
        """Put run boundaries into the replica's log, so a reader can tell runs apart."""
        writer = self._writers[unit]
        if record.kind is EventKind.SPAWNED:
            writer.start_run(number, run.handle.pid if run else None)
        elif record.kind in RUN_ENDS:
            writer.note(f"run {number}: {record.kind}" + (f" ({record.detail})" if record.detail else ""))

    def _store(self, unit: str, event: TimelineEvent, persisted: PersistedModel) -> None:
        try:
            self.store.append(event)
            if self._saved.get(unit) != persisted:  # most events (probe failures) change no saved state
                self.store.save_model(unit, persisted)
                self._saved[unit] = persisted
        except StoreError as exc:
            if not self._store_broken:
                log.error("%s: supervising on; state will not survive a restart", exc)  # noqa: TRY400
            self._store_broken = True
        else:
            if self._store_broken:
                log.warning("journal writes work again")
            self._store_broken = False

    def _notify(self, call: Callable[[Observer], None]) -> None:
        for observer in self._observers:
            try:
                call(observer)
            except Exception:  # an observer's bug must never stop supervision
                log.exception("observer %r failed", observer)
