"""What the fleet keeps across its own restarts, and the seam it keeps it through.

`Store` has two implementations: `Journal` (SQLite, for the daemon) and `MemoryStore` (a life in memory,
for tests and embedding). A store that cannot write raises `StoreError`; the caller decides that a broken
store never stops supervision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from supervisor.core.states import RuntimeKind
from supervisor.core.views import TimelineEvent


class StoreError(Exception):
    """A write could not be stored (disk full, database locked); what was asked is lost, nothing else."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A live run, as needed to find it again: 'pid:create_time' (guards against PID reuse) or a container id."""

    ident: str
    run_number: int
    spawned_at: float  # Unix time
    runtime: RuntimeKind


@dataclass(frozen=True, slots=True)
class PersistedModel:
    """The state of one model that must outlive the supervisor process."""

    desired: str  # "running" | "stopped"
    restart_times: tuple[float, ...]  # Unix times of automatic restarts still inside the budget window
    restart_count: int
    attempt: int  # backoff attempt
    failed: bool
    run: RunRecord | None


class Store(Protocol):
    def last_seq(self) -> int:
        """The highest seq ever appended (0 when new), so a new life continues the numbering."""

    def append(self, event: TimelineEvent) -> None:
        """Record one timeline event; raise StoreError when it cannot be written."""

    def events(self, model_id: str, since: int = 0, *, newest: int | None = None) -> list[TimelineEvent]:
        """Events of `model_id` with seq > since, oldest first; with `newest`, only the last `newest` of them."""

    def save_model(self, model_id: str, model: PersistedModel) -> None:
        """Replace the persisted state of `model_id`; raise StoreError when it cannot be written."""

    def load_models(self) -> dict[str, PersistedModel]:
        """Every model's persisted state, ids no longer configured included."""
