"""The journal keeps which replica an event is about, and a journal from before replicas opens unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from supervisor.core.states import EventKind, State
from supervisor.core.views import TimelineEvent
from supervisor.store.journal import SCHEMA_VERSION, Journal

VERSION_1 = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, time REAL NOT NULL, model_id TEXT NOT NULL, kind TEXT NOT NULL,
                     state TEXT NOT NULL, detail TEXT, reason TEXT);
CREATE INDEX events_by_model ON events (model_id, seq);
CREATE TABLE models (model_id TEXT PRIMARY KEY, desired TEXT NOT NULL, restart_times TEXT NOT NULL,
                     restart_count INTEGER NOT NULL, attempt INTEGER NOT NULL, failed INTEGER NOT NULL,
                     run_ident TEXT, run_number INTEGER, run_spawned_at REAL, run_runtime TEXT);
INSERT INTO events VALUES (7, 1700000000.0, 'm', 'spawned', 'starting', NULL, NULL);
PRAGMA user_version=1;
"""


def test_events_keep_their_replica(tmp_path: Path) -> None:
    """An event about replica 2 reads back as replica 2, next to replica 0's."""
    journal = Journal.open(tmp_path / "j.sqlite3")
    journal.append(TimelineEvent(1, 1.0, "q", EventKind.SPAWNED, State.STARTING))
    journal.append(TimelineEvent(2, 2.0, "q", EventKind.SPAWNED, State.STARTING, replica=2))
    assert [e.replica for e in journal.events("q")] == [0, 2]
    assert [e.replica for e in journal.events("q", newest=1)] == [2]
    journal.close()


def test_a_journal_written_before_replicas_is_migrated_in_place(tmp_path: Path) -> None:
    """Version 1's events read as replica 0, new events keep theirs, and the file says version 2."""
    path = tmp_path / "j.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(VERSION_1)
    conn.close()
    journal = Journal.open(path)
    assert [(e.seq, e.replica) for e in journal.events("m")] == [(7, 0)]
    journal.append(TimelineEvent(8, 2.0, "m", EventKind.HEALTHY, State.HEALTHY, replica=1))
    assert [(e.seq, e.replica) for e in journal.events("m")] == [(7, 0), (8, 1)]
    journal.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    reopened = Journal.open(path)  # opening a current journal migrates nothing and loses nothing
    assert len(reopened.events("m")) == 2
    reopened.close()
