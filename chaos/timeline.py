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
    replica: int = 0  # which replica of the model (0 for a model of one replica, and in older journals)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A model's status (`GET /api/llm/models`) at the Unix time the harness received it: its scalar fields,
    and each replica's (`replicas`, in index order; empty where the supervisor lists none)."""

    time: float
    model: str
    fields: dict[str, JsonScalar]
    replicas: tuple[dict[str, JsonScalar], ...] = ()

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
    replica: int = 0  # the replica whose run it belongs to

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.create_time)


@dataclass(frozen=True, slots=True)
class Overlap:
    """At `time`, processes of more than one run of `model` (of one of its replicas) were alive at once."""

    time: float
    model: str
    run_pids: tuple[int, ...]
    replica: int = 0


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
    applied: float | None = None  # when the harness had carried it out (the signal sent, the toxic set)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One OpenAI request of the scenario's `load`, sent through the gateway, as its client saw it.

    Facts only: whether it counts as failed is decided by the pure `chaos.traffic.failure`, so a recorded
    journal is judged again the same way.
    """

    model: str  # the model the body named
    path: str  # /v1/completions or /v1/chat/completions
    stream: bool
    started: float  # Unix time it was sent
    latency: float  # seconds until the answer ended, broke, or the client gave up
    status: int | None = None  # None: no answer head arrived
    first_byte: float | None = None  # seconds until the first byte of the body
    # Streamed: the last event was `data: [DONE]`. Not streamed: the body was a completion (has `choices`).
    done: bool = False
    finished: bool = False  # some choice carried a finish_reason (an answer cut short has none)
    chunks: int = 0  # data events before [DONE]
    stray_lines: int = 0  # stream lines that were neither `data: ...` nor blank, or data after [DONE]
    stray_sample: str | None = None  # the first such line (cut at 200 characters), to see what it was
    error_event: str | None = None  # the message of an `{"error": ...}` event or body
    timed_out: bool = False  # the client's timeout ran out first
    transport_error: str | None = None  # the connection failed (refused, reset, closed mid-answer)
    served_by: str | None = None  # x-llm-supervisor-model: the model that answered
    fallback: str | None = None  # x-llm-supervisor-fallback: why a fallback answered
    request_id: str | None = None  # x-request-id

    @property
    def ended(self) -> float:
        return self.started + self.latency


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
    requests: tuple[RequestRecord, ...] = ()  # the scenario's `load`, in the order they were sent

    def model_events(self, model: str) -> list[Event]:
        return sorted((e for e in self.events if e.model == model), key=lambda e: (e.time, e.seq))

    def model_snapshots(self, model: str) -> list[Snapshot]:
        return sorted((s for s in self.snapshots if s.model == model), key=lambda s: s.time)

    @property
    def first_fault_at(self) -> float | None:
        """When the first fault step began (None: no fault was carried out)."""
        return min((f.started for f in self.faults), default=None)

    @property
    def first_fault_applied(self) -> float | None:
        """When the first fault had taken effect: a request sent later cannot have been under way before it."""
        return min((f.applied or f.started for f in self.faults), default=None)

    def current_runs(self) -> dict[tuple[str, int], object]:
        """(model, replica) -> the pid of its run at the last poll (None when none ran)."""
        runs: dict[tuple[str, int], object] = {}
        for snap in sorted(self.snapshots, key=lambda s: s.time):
            runs[(snap.model, 0)] = snap.fields.get("pid")
            for index, replica in enumerate(snap.replicas):
                runs[(snap.model, index)] = replica.get("pid")
        return runs

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
            snapshots=tuple(_snapshot(s) for s in data.get("snapshots", [])),
            sightings=tuple(Sighting(**s) for s in data.get("sightings", [])),
            overlaps=tuple(
                Overlap(o["time"], o["model"], tuple(o["run_pids"]), o.get("replica", 0))
                for o in data.get("overlaps", [])
            ),
            alive_at_end=frozenset((int(p), float(t)) for p, t in data.get("alive_at_end", [])),
            alive_after_shutdown=None if after is None else frozenset((int(p), float(t)) for p, t in after),
            processes_visible=data.get("processes_visible", True),
            containers_at_end=tuple(Container(**c) for c in data.get("containers_at_end", [])),
            containers_after_shutdown=None if shut is None else tuple(Container(**c) for c in shut),
            faults=tuple(FaultRecord(**f) for f in data.get("faults", [])),
            notes=tuple(data.get("notes", [])),
            requests=tuple(RequestRecord(**r) for r in data.get("requests", [])),
        )


def _snapshot(data: dict[str, Any]) -> Snapshot:
    return Snapshot(data["time"], data["model"], data["fields"], tuple(data.get("replicas", ())))
