"""Builders for hand-recorded timelines: events and statuses at times relative to a supervisor's start."""

from __future__ import annotations

from typing import Any

from chaos.expectations import ExpectItem, SteadyItem
from chaos.timeline import Event, FaultRecord, Observation, Overlap, RequestRecord, Sighting, Snapshot

T0 = 1_700_000_000.0


def ev(
    t: float,
    kind: str,
    state: str,
    detail: str | None = None,
    reason: str | None = None,
    model: str = "m1",
    replica: int = 0,
) -> Event:
    """An event `t` seconds after the start (seq is filled in by `observation`)."""
    return Event(model, 0, T0 + t, kind, state, detail, reason, replica)


def req(t: float, latency: float = 0.1, *, stream: bool = False, model: str = "m1", **facts: Any) -> RequestRecord:
    """A request sent `t` seconds after the start; by default one that succeeded."""
    fields: dict[str, Any] = {"status": 200, "done": True, "finished": True, "chunks": 4 if stream else 0}
    fields.update(facts)
    return RequestRecord(model, "/v1/completions", stream, T0 + t, latency, **fields)


def snap(t: float, model: str = "m1", replicas: tuple[dict[str, Any], ...] = (), **fields: Any) -> Snapshot:
    """A polled status `t` seconds after the start."""
    return Snapshot(T0 + t, model, {"id": model, **fields}, replicas)


def sighting(pid: int, run_pid: int, model: str = "m1", name: str = "fake-vllm serve m1", replica: int = 0) -> Sighting:
    """A process seen as part of run `run_pid`; its create time is derived from the pid."""
    return Sighting(model, pid, float(pid), run_pid, name, T0, replica)


def fault(t: float, action: str = "kill", applied: float | None = None) -> FaultRecord:
    """A fault step carried out `t` seconds after the start (taking effect at `applied`, default at once)."""
    return FaultRecord(0, action, "m1", action, T0 + t, None, "done", action, T0 + (t if applied is None else applied))


def observation(
    events: list[Event],
    snaps: list[Snapshot] | None = None,
    *,
    steady: float | None = 1.0,
    faults_end: float | None = None,
    end: float = 20.0,
    sightings: list[Sighting] | None = None,
    alive: list[int] | None = None,
    after_shutdown: list[int] | None = None,
    overlaps: list[tuple[float, tuple[int, ...]]] | None = None,
    requests: list[RequestRecord] | None = None,
    faults: list[FaultRecord] | None = None,
) -> Observation:
    """An Observation; `alive`/`after_shutdown` list pids of `sightings` still alive then."""
    numbered = tuple(
        Event(e.model, i + 1, e.time, e.kind, e.state, e.detail, e.reason, e.replica) for i, e in enumerate(events)
    )
    seen = sightings or []
    keys = {s.pid: s.key for s in seen}
    return Observation(
        launched_at=T0,
        steady_at=None if steady is None else T0 + steady,
        faults_end=T0 + (faults_end if faults_end is not None else (steady or 0.0)),
        ended_at=T0 + end,
        events=numbered,
        snapshots=tuple(snaps or ()),
        sightings=tuple(seen),
        overlaps=tuple(Overlap(T0 + t, "m1", runs) for t, runs in (overlaps or [])),
        alive_at_end=frozenset(keys[p] for p in alive or []),
        alive_after_shutdown=None if after_shutdown is None else frozenset(keys[p] for p in after_shutdown),
        requests=tuple(requests or ()),
        faults=tuple(faults or ()),
    )


def expect(data: dict[str, Any]) -> ExpectItem:
    return ExpectItem.model_validate(data)


def steady(model: str = "m1", within: float = 10) -> SteadyItem:
    return SteadyItem.model_validate({"healthy": {"model": model, "within": within}})


def crash_loop(delays: list[float], *, failed: bool = True, first: float = 0.5) -> list[Event]:
    """A server that crashes 1 s after each healthy start, restarted after each of `delays`."""
    events, t, run = [], first, 1
    for delay in [*delays, None]:
        events += [
            ev(t, "spawned", "starting", f"run {run}", "crash" if run > 1 else None),
            ev(t + 0.3, "healthy", "healthy"),
            ev(t + 1.3, "exited", "healthy", "exit code 1", "crash"),
        ]
        if delay is None:
            if failed:
                events.append(ev(t + 1.3, "failed", "failed", "restart limit reached", "crash"))
            break
        events.append(ev(t + 1.3, "backoff", "backoff", f"{delay:g}", "crash"))
        t, run = t + 1.3 + delay, run + 1
    return events
