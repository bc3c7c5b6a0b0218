"""The `adapted` event of smart recovery survives in the journal and reads back as itself."""

from __future__ import annotations

from pathlib import Path

from supervisor.core.states import EventKind, State
from supervisor.core.views import TimelineEvent
from supervisor.store.journal import Journal


def test_adapted_event_persists_and_reads_back(tmp_path: Path) -> None:
    """An `adapted` entry written by one life of the supervisor is read back, kind and detail kept, by the next."""
    path = tmp_path / "journal.sqlite3"
    event = TimelineEvent(
        7,
        1_700_000_000.0,
        "m",
        EventKind.ADAPTED,
        State.BACKOFF,
        "max_model_len 131072 -> 21440 (vLLM's estimate)",
        "--max-model-len",
    )
    journal = Journal.open(path)
    journal.append(event)
    journal.close()
    again = Journal.open(path)
    try:
        assert again.events("m") == [event]
        assert again.events("m")[0].kind is EventKind.ADAPTED
    finally:
        again.close()
