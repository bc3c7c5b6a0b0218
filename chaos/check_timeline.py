"""Reading an `Observation` for the checks: a model's (or replica's) states over time, its events since the
steady state, and the wording of verdict labels and times. Pure, like checks.py: no IO, no clock."""

from __future__ import annotations

from chaos.expectations import ExpectItem, expectation_replica
from chaos.timeline import Event, Observation

# The state a model of several replicas shows, as the supervisor's status does: its most alive replica's.
STATE_RANK = ("healthy", "starting", "unhealthy", "stopping", "backoff", "failed", "stopped")


def state_points(obs: Observation, model: str, replica: int | None = None) -> list[tuple[float, str]]:
    """(time, state) changes: the supervisor's own event times when it serves events, else the polls.

    With `replica`, that replica's own states. Without, the model's: for a model of several replicas each
    event changes one replica's state, and the model is in its most alive replica's state (STATE_RANK).
    """
    events = replica_events(obs, model, replica)
    if events and (replica is not None or len({e.replica for e in events}) == 1):
        return [(e.time, e.state) for e in events]
    if events:
        return _model_state(events)
    snaps = obs.model_snapshots(model)
    if replica is None:
        return [(s.time, s.state) for s in snaps if s.state is not None]
    return [(s.time, str(s.replicas[replica].get("state"))) for s in snaps if replica < len(s.replicas)]


def _model_state(events: list[Event]) -> list[tuple[float, str]]:
    current: dict[int, str] = {}
    points: list[tuple[float, str]] = []
    for event in events:
        current[event.replica] = event.state
        best = min(current.values(), key=lambda s: STATE_RANK.index(s) if s in STATE_RANK else len(STATE_RANK))
        points.append((event.time, best))
    return points


def replica_events(obs: Observation, model: str, replica: int | None) -> list[Event]:
    """The model's events, or only one replica's."""
    events = obs.model_events(model)
    return events if replica is None else [e for e in events if e.replica == replica]


def first_in_state(
    obs: Observation, model: str, state: str, lo: float, hi: float, *, replica: int | None = None
) -> float | None:
    """The first moment in [lo, hi] the model (or replica) was in `state` (lo itself if it already was)."""
    points = state_points(obs, model, replica)
    before = [s for t, s in points if t <= lo]
    if before and before[-1] == state:
        return lo
    return next((t for t, s in points if lo < t <= hi and s == state), None)


def describe_model(obs: Observation, model: str) -> str:
    """A one-line account of where a model got to, for failure messages."""
    events = obs.model_events(model)
    snaps = obs.model_snapshots(model)
    parts = [f"last state {snaps[-1].state!r}" if snaps else "no status was ever served"]
    failed = [e for e in events if e.kind == "probe_failed"]
    if failed:
        parts.append(f"{len(failed)} failed probes (last: {failed[-1].detail!r})")
    spawns = [e for e in events if e.kind == "spawned"]
    if len(spawns) > 1:
        parts.append(f"spawned {len(spawns)} times")
    if snaps and snaps[-1].fields.get("health_message"):
        parts.append(f"health_message {snaps[-1].fields['health_message']!r}")
    return "; ".join(parts)


def _rel(obs: Observation, t: float) -> str:
    return f"+{t - obs.launched_at:.2f}s"


def _label(item: ExpectItem) -> str:
    replica = expectation_replica(item.expectation)
    if item.model and replica is not None:
        return f"{item.kind}({item.model}, replica {replica})"
    return f"{item.kind}({item.model})" if item.model else item.kind


def _who(model: str, replica: int | None) -> str:
    return model if replica is None else f"{model} replica {replica}"


def _reference(obs: Observation, since: str = "faults") -> float:
    if since == "start":
        return obs.launched_at
    return obs.faults_end or obs.steady_at or obs.launched_at


def _since(obs: Observation, t: float) -> str:
    return "start" if t == obs.launched_at else "the faults"


def _after_steady(obs: Observation, model: str, replica: int | None = None) -> list[Event]:
    """The model's events from the steady state on: what the faults and the recovery caused."""
    return [e for e in replica_events(obs, model, replica) if obs.steady_at is None or e.time >= obs.steady_at]


def _restart_spawns(obs: Observation, model: str, replica: int | None = None) -> list[Event]:
    """`spawned` events during the observation, less each replica's very first start."""
    started: set[int] = set()
    restarts = []
    for event in (e for e in replica_events(obs, model, replica) if e.kind == "spawned"):
        if event.replica in started and event.time >= obs.launched_at:
            restarts.append(event)
        started.add(event.replica)
    return restarts
