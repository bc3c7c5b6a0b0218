"""Between a model's snapshot (monotonic times, the machine's words) and what a store keeps of it across
lives of the supervisor (Unix times, plain values). Pure functions: `offset` turns one into the other."""

from __future__ import annotations

from dataclasses import replace

from supervisor.core.machine_types import Desired, Snapshot
from supervisor.core.states import RuntimeKind, State
from supervisor.loop.owner import RunView
from supervisor.store.base import PersistedModel, RunRecord


def persisted_state(snapshot: Snapshot, run: RunView | None, runtime: RuntimeKind, offset: float) -> PersistedModel:
    """What must outlive this supervisor: the desired state, the budget so far, and a live run to stop."""
    record = None
    if run is not None and (snapshot.live or snapshot.group_alive):
        spawned_at = 0.0 if snapshot.spawned_at is None else snapshot.spawned_at + offset
        record = RunRecord(run.handle.ident, run.number, spawned_at, runtime)
    return PersistedModel(
        desired=snapshot.desired.value,
        restart_times=tuple(t + offset for t in snapshot.restart_times),
        restart_count=snapshot.restart_count,
        attempt=snapshot.attempt,
        failed=snapshot.state is State.FAILED,
        run=record,
    )


def restored_snapshot(persisted: PersistedModel | None, offset: float) -> Snapshot:
    """A new life starts stopped (its runs were stopped, never adopted), keeping the budget and desired state."""
    if persisted is None:
        return Snapshot()
    return replace(
        Snapshot(),
        state=State.FAILED if persisted.failed else State.STOPPED,
        desired=Desired(persisted.desired),
        restart_times=tuple(t - offset for t in persisted.restart_times),
        restart_count=persisted.restart_count,
        attempt=persisted.attempt,
    )
