"""The supervisor's memory across its own restarts: event timeline and per-model state in SQLite.

One file, `<state_dir>/journal.sqlite3`. Every write is its own committed transaction, so whatever a call
returned from is on disk when the supervisor is killed with SIGKILL a moment later.

Durability choice: WAL with `synchronous=NORMAL`. In WAL mode a commit appends to the WAL file and returns
without fsync; the data is in the kernel's page cache, which survives the death of the process (the kill -9
this journal is for). Only a power loss or kernel crash can lose the last few commits, and even then the
database is never corrupted. `FULL` would fsync every commit: milliseconds on real disks, paid on the
event loop for every probe failure, to protect against a failure (the whole machine going down) that
also takes every model process with it, so there is nothing left to adopt anyway.

Calls come from the event loop thread; each is one small indexed statement (tens of microseconds), so
they run inline rather than in a thread. A lock makes use from another thread safe, not fast.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from supervisor.core.states import EventKind, RuntimeKind, State
from supervisor.core.views import TimelineEvent
from supervisor.store.base import PersistedModel, RunRecord, StoreError

JOURNAL_FILENAME: Final = "journal.sqlite3"
SCHEMA_VERSION: Final = 2  # 2: events carry the replica they are about
# Weeks of a flapping model's probe failures must not grow the file without bound.
DEFAULT_MAX_EVENTS_PER_MODEL: Final = 10_000
_PRUNE_EVERY: Final = 500
# SQLite's page cache, in KiB. Its default (2,000) fills as the file grows: a few hundred KiB of heap an hour
# under a soak's faults, which reads as a leak until the cache is full. The hot pages (the newest events' leaves,
# the index's inner pages, the models table) fit in 64 KiB; a miss is read from the kernel's file cache, and
# measured 40,000 appends and 8,000 reads cost no more than with the default.
_CACHE_KIB: Final = 64

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY,
    time     REAL    NOT NULL,
    model_id TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    state    TEXT    NOT NULL,
    detail   TEXT,
    reason   TEXT,
    replica  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_by_model ON events (model_id, seq);
CREATE TABLE IF NOT EXISTS models (
    model_id       TEXT PRIMARY KEY,
    desired        TEXT    NOT NULL,
    restart_times  TEXT    NOT NULL,
    restart_count  INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    failed         INTEGER NOT NULL,
    run_ident      TEXT,
    run_number     INTEGER,
    run_spawned_at REAL,
    run_runtime    TEXT
);
"""


_EVENTS_SQL = (
    "SELECT seq, time, model_id, kind, state, detail, reason, replica FROM events "
    "WHERE model_id = ? AND seq > ? ORDER BY seq"
)
_NEWEST_EVENTS_SQL = (
    "SELECT * FROM (SELECT seq, time, model_id, kind, state, detail, reason, replica FROM events "
    "WHERE model_id = ? AND seq > ? ORDER BY seq DESC LIMIT ?) ORDER BY seq"
)
# Each step takes a journal of the version before it to the next; a new journal runs none of them.
_MIGRATIONS: Final = {1: "ALTER TABLE events ADD COLUMN replica INTEGER NOT NULL DEFAULT 0"}


class JournalError(Exception):
    """The journal file cannot be used (written by a newer version, not a database, unwritable)."""


@contextmanager
def _writing() -> Iterator[None]:
    """A failed write is a StoreError: the caller knows a store may fail, not that it is SQLite."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"journal write failed: {exc}") from exc


class Journal:
    """Append-only event timeline plus one row of persisted state per model."""

    def __init__(self, conn: sqlite3.Connection, path: Path, max_events_per_model: int) -> None:
        self._conn = conn
        self.path = path
        self._max_events = max_events_per_model
        self._lock = threading.Lock()
        # Appends per model since its last prune: each model is pruned after its own _PRUNE_EVERY appends (a
        # count shared by all would always prune whichever model happens to land on it, and never the others).
        self._appends_since_prune: dict[str, int] = {}

    @classmethod
    def open(cls, path: Path | str, *, max_events_per_model: int = DEFAULT_MAX_EVENTS_PER_MODEL) -> Journal:
        """Open (creating parent directories and tables as needed) the journal at `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: autocommit, so every statement is committed when it returns.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise JournalError(
                    f"{path}: journal schema {version} is newer than this llm-supervisor ({SCHEMA_VERSION}); "
                    "upgrade llm-supervisor or point state_dir elsewhere"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=2000")
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            if version == 0:
                conn.executescript(_SCHEMA)
            for step in range(version or SCHEMA_VERSION, SCHEMA_VERSION):
                conn.execute(_MIGRATIONS[step])
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
        return cls(conn, path, max_events_per_model)

    def append(self, event: TimelineEvent) -> None:
        """Record one timeline event (its seq is the caller's, global across models)."""
        with self._lock, _writing():
            self._conn.execute(
                "INSERT INTO events (seq, time, model_id, kind, state, detail, reason, replica) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.seq,
                    event.time,
                    event.model_id,
                    str(event.kind),
                    str(event.state),
                    event.detail,
                    event.reason,
                    event.replica,
                ),
            )
            appended = self._appends_since_prune.get(event.model_id, 0) + 1
            if appended >= _PRUNE_EVERY:
                appended = 0
                self._prune(event.model_id)
            self._appends_since_prune[event.model_id] = appended

    def _prune(self, model_id: str) -> None:
        # Keeps the newest max_events rows of the model that just grew; others are pruned when they grow.
        self._conn.execute(
            "DELETE FROM events WHERE model_id = ? AND seq <= ("
            "  SELECT seq FROM events WHERE model_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (model_id, model_id, self._max_events),
        )

    def events(
        self, model_id: str, since: int = 0, limit: int | None = None, *, newest: int | None = None
    ) -> list[TimelineEvent]:
        """Events of `model_id` with seq > since, ascending; with `limit`, the first `limit` of them; with
        `newest`, the last `newest` of them (a dashboard's view, read without loading the rest)."""
        sql = _EVENTS_SQL
        params: tuple[object, ...] = (model_id, since)
        if newest is not None:
            sql = _NEWEST_EVENTS_SQL
            params = (*params, newest)
        elif limit is not None:
            sql += " LIMIT ?"
            params = (*params, limit)
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [
            TimelineEvent(
                seq=seq,
                time=time,
                model_id=mid,
                kind=EventKind(kind),
                state=State(state),
                detail=detail,
                reason=reason,
                replica=replica,
            )
            for seq, time, mid, kind, state, detail, reason, replica in rows
        ]

    def last_seq(self) -> int:
        """The highest seq ever appended (0 for a new journal), so a new life continues the numbering."""
        with self._lock:
            row = self._conn.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0]) if row[0] is not None else 0

    def save_model(self, model_id: str, model: PersistedModel) -> None:
        """Replace the persisted state of `model_id`."""
        run = model.run
        with self._lock, _writing():
            self._conn.execute(
                "INSERT OR REPLACE INTO models (model_id, desired, restart_times, restart_count, attempt, "
                "failed, run_ident, run_number, run_spawned_at, run_runtime) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model_id,
                    model.desired,
                    json.dumps(list(model.restart_times)),
                    model.restart_count,
                    model.attempt,
                    int(model.failed),
                    run.ident if run else None,
                    run.run_number if run else None,
                    run.spawned_at if run else None,
                    run.runtime if run else None,
                ),
            )

    def load_models(self) -> dict[str, PersistedModel]:
        """Every model's persisted state, keyed by model id (ids no longer configured included)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT model_id, desired, restart_times, restart_count, attempt, failed, "
                "run_ident, run_number, run_spawned_at, run_runtime FROM models"
            ).fetchall()
        models: dict[str, PersistedModel] = {}
        for mid, desired, times, count, attempt, failed, ident, number, spawned_at, runtime in rows:
            run = None
            if ident is not None:
                run = RunRecord(ident=ident, run_number=number, spawned_at=spawned_at, runtime=RuntimeKind(runtime))
            models[mid] = PersistedModel(
                desired=desired,
                restart_times=tuple(float(t) for t in json.loads(times)),
                restart_count=count,
                attempt=attempt,
                failed=bool(failed),
                run=run,
            )
        return models

    def close(self) -> None:
        """Close the connection; the WAL is checkpointed into the main file by SQLite on the last close."""
        with self._lock:
            self._conn.close()
