"""A hand-written fake of the Supervisor facade for API, metrics and CLI tests (no processes, no clock).

It keeps the facade's promises that the management plane relies on: reads are pure, unknown ids raise a
KeyError subclass, actions answer with accepted/message/status, observers see every event in order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from supervisor.config.reload_plan import ReloadPlan
from supervisor.core.states import Cause, EventKind, State
from supervisor.core.views import ActionResult, HealthCheckReport, ModelStatus, TimelineEvent
from supervisor.loop.model import SupervisedModel
from supervisor.loop.observer import Observer


class FakeUnknownModel(KeyError):
    """Like supervisor.supervisor.UnknownModel."""


@dataclass(frozen=True)
class FakeSettings:
    token_env: str = "LLM_SUPERVISOR_TOKEN"


@dataclass(frozen=True)
class FakeConfig:
    supervisor: FakeSettings = field(default_factory=FakeSettings)


def make_status(model_id: str, state: State = State.HEALTHY, **overrides: object) -> ModelStatus:
    """A plausible status of a model in `state`."""
    running = state in (State.STARTING, State.HEALTHY, State.UNHEALTHY, State.STOPPING)
    base = ModelStatus(
        id=model_id,
        state=state,
        is_running=running,
        is_healthy=state == State.HEALTHY,
        health_message=None,
        restart_policy="on-failure",
        restart_count=0,
        max_restarts=3,
        consecutive_health_failures=0,
        uptime_seconds=12.5 if running else None,
        last_restart_time=None,
        last_health_check_time=1_700_000_000.0 if running else None,
        has_cuda_oom=False,
        pid=4242 if running else None,
        last_exit_code=None,
        failure_cause=None,
        failure_advice=None,
        next_restart_at=None,
        desired="stopped" if state == State.STOPPED else "running",
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


class FakeSupervisor:
    """Models with scripted statuses; actions flip states and emit events like the real one."""

    def __init__(self, model_ids: list[str], log_dir: Path, token_env: str = "LLM_SUPERVISOR_TOKEN") -> None:
        self.config = FakeConfig(FakeSettings(token_env))
        self._statuses = {mid: make_status(mid) for mid in model_ids}
        self._events: list[TimelineEvent] = []
        self._observers: list[Observer] = []
        self._log_dir = log_dir
        self.calls: list[tuple[str, str]] = []  # (action, model_id), to prove GETs call no action
        self.restart_options: list[tuple[int | None, bool]] = []  # (replica, rolling) of each restart
        self.probes = 0
        self.refuse_next: str | None = None
        self.reload_outcome: ReloadPlan | Exception = ReloadPlan(unchanged=tuple(model_ids))

    # -- reads --------------------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        return list(self._statuses)

    def status(self, model_id: str) -> ModelStatus:
        try:
            return self._statuses[model_id]
        except KeyError:
            raise FakeUnknownModel(model_id) from None

    def statuses(self) -> list[ModelStatus]:
        return list(self._statuses.values())

    def events(self, model_id: str, since: int = 0, limit: int | None = None) -> list[TimelineEvent]:
        self.status(model_id)
        found = [e for e in self._events if e.model_id == model_id and e.seq > since]
        return found[-limit:] if limit else found

    def log_dir(self) -> Path:
        return self._log_dir

    def models(self) -> Mapping[str, SupervisedModel]:
        return {}  # no real replicas: diagnostics and heal find nothing to measure or start

    instance = "fake"
    closing = False

    async def reload(self) -> ReloadPlan:
        self.calls.append(("reload", ""))
        if isinstance(self.reload_outcome, Exception):
            raise self.reload_outcome
        return self.reload_outcome

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    # -- scripting ----------------------------------------------------------------------------------
    def set_status(self, model_id: str, state: State, **overrides: object) -> None:
        self._statuses[model_id] = make_status(model_id, state, **overrides)

    def emit(
        self, model_id: str, kind: EventKind, state: State, detail: str | None = None, reason: str | None = None
    ) -> TimelineEvent:
        event = TimelineEvent(
            seq=len(self._events) + 1,
            time=time.time(),
            model_id=model_id,
            kind=kind,
            state=state,
            detail=detail,
            reason=reason,
        )
        self._events.append(event)
        self.set_status(model_id, state, restart_count=self._statuses[model_id].restart_count)
        for obs in self._observers:
            obs.on_event(event)
        return event

    def probe(self, model_id: str, ok: bool, duration: float) -> None:
        for obs in self._observers:
            obs.on_probe(model_id, ok, duration)

    # -- actions ------------------------------------------------------------------------------------
    def _refused(self, model_id: str) -> ActionResult | None:
        if self.refuse_next is None:
            return None
        message, self.refuse_next = self.refuse_next, None
        return ActionResult(False, message, self.status(model_id))

    async def start_model(self, model_id: str) -> ActionResult:
        self.status(model_id)
        self.calls.append(("start", model_id))
        if refused := self._refused(model_id):
            return refused
        self.emit(model_id, EventKind.START_REQUESTED, State.STARTING)
        self.emit(model_id, EventKind.SPAWNED, State.STARTING)
        self.emit(model_id, EventKind.HEALTHY, State.HEALTHY)
        return ActionResult(True, f"start of '{model_id}' begun", self.status(model_id))

    async def stop_model(self, model_id: str, force: bool = False) -> ActionResult:
        self.status(model_id)
        self.calls.append(("stop-force" if force else "stop", model_id))
        if refused := self._refused(model_id):
            return refused
        if self._statuses[model_id].state == State.STOPPED:
            return ActionResult(False, f"model '{model_id}' is already stopped", self.status(model_id))
        self.emit(model_id, EventKind.STOP_REQUESTED, State.STOPPING)
        self.emit(model_id, EventKind.EXITED, State.STOPPING, detail="signal 15")
        self.emit(model_id, EventKind.STOPPED, State.STOPPED)
        return ActionResult(True, f"stop of '{model_id}' begun", self.status(model_id))

    async def restart_model(self, model_id: str, replica: int | None = None, rolling: bool = False) -> ActionResult:
        self.status(model_id)
        self.calls.append(("restart", model_id))
        self.restart_options.append((replica, rolling))
        if refused := self._refused(model_id):
            return refused
        count = self._statuses[model_id].restart_count + 1
        self.emit(model_id, EventKind.RESTART_REQUESTED, State.STOPPING)
        self.emit(model_id, EventKind.SPAWNED, State.STARTING, reason="manual")
        self._statuses[model_id] = replace(self._statuses[model_id], restart_count=count)
        return ActionResult(True, f"restart of '{model_id}' begun", self.status(model_id))

    async def health_check(self, model_id: str) -> HealthCheckReport:
        status = self.status(model_id)
        self.calls.append(("health-check", model_id))
        self.probes += 1
        self.probe(model_id, status.is_healthy, 0.003)
        return HealthCheckReport(
            model_id=model_id,
            is_healthy=status.is_healthy,
            health_message=None if status.is_healthy else "connection refused",
            consecutive_health_failures=status.consecutive_health_failures,
            last_health_check_time=time.time(),
            has_cuda_oom=status.has_cuda_oom,
        )


def crash_script(sup: FakeSupervisor, model_id: str) -> None:
    """A run dies of OOM, backs off, is restarted, becomes healthy (what the real loop would emit)."""
    sup.emit(model_id, EventKind.OOM_DETECTED, State.HEALTHY, detail="torch.OutOfMemoryError")
    sup.emit(model_id, EventKind.EXITED, State.BACKOFF, detail="exit code 1", reason=Cause.OOM.value)
    sup.emit(model_id, EventKind.BACKOFF, State.BACKOFF, detail="5")
    sup.emit(model_id, EventKind.SPAWNED, State.STARTING, reason=Cause.OOM.value)
    sup.emit(model_id, EventKind.HEALTHY, State.HEALTHY)
