"""What the harness saw while a scenario ran: the data the pure checks judge and the reports draw.

Everything here is plain frozen values with Unix times, recorded from outside the supervisor (its API and
psutil), so a recorded `Observation` can be saved as JSON, loaded back, and judged again in a unit test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

JsonScalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a model's timeline as served by `GET .../events` (`reason` is optional there)."""

    model: str
    seq: int
    time: float
    kind: str
    state: str
    detail: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A model's status (`GET /api/llm/models`) at the Unix time the harness received it."""

    time: float
    model: str
    fields: dict[str, JsonScalar]

    @property
    def state(self) -> str | None:
        value = self.fields.get("state")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Sighting:
    """A process seen belonging to a model's run: the run's main pid or one of its descendants.

    (pid, create_time) names a process even if the pid is reused later.
    """

    model: str
    pid: int
    create_time: float
    run_pid: int
    name: str
    first_seen: float

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.create_time)


@dataclass(frozen=True, slots=True)
class Overlap:
    """At `time`, processes of more than one run of `model` were alive at once."""

    time: float
    model: str
    run_pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Container:
    """A container of the scenario's run, as the Docker engine listed it (container models only)."""

    model: str
    id: str  # the first 12 hex digits
    name: str
    status: str  # the engine's: created | running | paused | exited | dead | ...
    pid: int | None  # host pid of its main process while it runs


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One fault (or cleanup) step as the harness carried it out."""

    index: int
    action: str
    model: str | None
    description: str
    started: float
    ended: float | None  # when its `for` ran out and it was reverted; None if it lasts to the end
    outcome: str  # done | skipped | error
    message: str = ""


@dataclass(frozen=True, slots=True)
class Observation:
    """The whole record of one scenario run."""

    launched_at: float  # supervisor started (local) or observation began (remote)
    steady_at: float | None  # steady state held; None if it never did
    faults_end: float | None  # every fault step done and reverted
    ended_at: float  # observation stopped, before the harness's own clean-up
    events: tuple[Event, ...] = ()
    snapshots: tuple[Snapshot, ...] = ()
    sightings: tuple[Sighting, ...] = ()
    overlaps: tuple[Overlap, ...] = ()
    alive_at_end: frozenset[tuple[int, float]] = frozenset()
    # Processes still alive after the supervisor was asked to shut down; None where not checked.
    alive_after_shutdown: frozenset[tuple[int, float]] | None = None
    processes_visible: bool = True  # psutil could see the model processes (local target)
    # The scenario's containers when the observation ended, and after the supervisor's shutdown (None: not
    # checked, no container models).
    containers_at_end: tuple[Container, ...] = ()
    containers_after_shutdown: tuple[Container, ...] | None = None
    faults: tuple[FaultRecord, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def model_events(self, model: str) -> list[Event]:
        return sorted((e for e in self.events if e.model == model), key=lambda e: (e.time, e.seq))

    def model_snapshots(self, model: str) -> list[Snapshot]:
        return sorted((s for s in self.snapshots if s.model == model), key=lambda s: s.time)

    def models(self) -> list[str]:
        return sorted({e.model for e in self.events} | {s.model for s in self.snapshots})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["alive_at_end"] = sorted(self.alive_at_end)
        if self.alive_after_shutdown is not None:
            data["alive_after_shutdown"] = sorted(self.alive_after_shutdown)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observation:
        after = data.get("alive_after_shutdown")
        shut = data.get("containers_after_shutdown")
        return cls(
            launched_at=data["launched_at"],
            steady_at=data.get("steady_at"),
            faults_end=data.get("faults_end"),
            ended_at=data["ended_at"],
            events=tuple(Event(**e) for e in data.get("events", [])),
            snapshots=tuple(Snapshot(**s) for s in data.get("snapshots", [])),
            sightings=tuple(Sighting(**s) for s in data.get("sightings", [])),
            overlaps=tuple(Overlap(o["time"], o["model"], tuple(o["run_pids"])) for o in data.get("overlaps", [])),
            alive_at_end=frozenset((int(p), float(t)) for p, t in data.get("alive_at_end", [])),
            alive_after_shutdown=None if after is None else frozenset((int(p), float(t)) for p, t in after),
            processes_visible=data.get("processes_visible", True),
            containers_at_end=tuple(Container(**c) for c in data.get("containers_at_end", [])),
            containers_after_shutdown=None if shut is None else tuple(Container(**c) for c in shut),
            faults=tuple(FaultRecord(**f) for f in data.get("faults", [])),
            notes=tuple(data.get("notes", [])),
        )
