"""Each model's latest failure, kept after it recovers, so status can say "healthy again; last failed at
03:12 with an OOM, exit 1" (the snapshot's failure_cause is cleared once a run is healthy).

An observer of the timeline: a failed run's `exited` entry carries its cause as `reason` (a requested stop
carries none). The exit code is read from the replica's snapshot as that entry is recorded.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.core.states import Cause, EventKind, ExitStatus
from supervisor.core.views import LastFailure, TimelineEvent

CAUSES = frozenset(cause.value for cause in Cause)


def exit_code(status: ExitStatus | None) -> int | None:
    """As status shows it: the code, or minus the signal that ended the run."""
    if status is None:
        return None
    return -status.signal if status.signal is not None else status.code


class LastFailures:
    def __init__(self, last_exit: Callable[[str, int], ExitStatus | None]) -> None:
        self._last_exit = last_exit  # (model id, replica) -> how its current run ended
        self._by_model: dict[str, LastFailure] = {}

    def get(self, model_id: str) -> LastFailure | None:
        return self._by_model.get(model_id)

    def on_event(self, event: TimelineEvent) -> None:
        if event.kind is EventKind.EXITED and event.reason in CAUSES:
            code = exit_code(self._last_exit(event.model_id, event.replica))
            self._by_model[event.model_id] = LastFailure(event.reason, event.time, code)

    def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
        pass
