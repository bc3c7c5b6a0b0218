"""Read-only views of a model that the API, metrics, journal and CLI share.

They are plain frozen values built by the supervisor from its state; building one never runs a probe or
moves a counter (docs/design/defects.md #6).
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.core.states import Cause, EventKind, State


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One entry of a model's timeline. `time` is Unix time so outside tools can line it up."""

    seq: int
    time: float
    model_id: str
    kind: EventKind
    state: State
    detail: str | None = None
    # For `spawned`: why this run started (None: first start, "manual", or a Cause value).
    # For `exited`: the failure cause value; None for a requested stop or an exit in success_exit_codes.
    # For `backoff` and `failed`: the cause that led there ("exit" after a success exit under always).
    reason: str | None = None
    replica: int = 0  # which replica of the model the event is about (0 for a model of one replica)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica of a model: its own run, restarts and backoff, and what the gateway sends it."""

    index: int
    port: int | None
    state: State
    pid: int | None
    is_healthy: bool
    restart_count: int
    last_exit_code: int | None
    failure_cause: Cause | None
    in_flight: int  # requests the gateway has in flight on it
    draining: bool  # out of routing (a rolling restart), finishing what it has


@dataclass(frozen=True, slots=True)
class ArgChange:
    """One argument smart recovery changed for the model's runs (docs/recovery.md); `time` is Unix time."""

    flag: str
    before: str | None  # None: the flag was not given
    after: str
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class LastFailure:
    """The model's most recent failure, kept after it recovers; `time` is Unix time, `cause` a Cause value."""

    cause: str
    time: float
    exit_code: int | None  # negative: the signal that ended the run; None: no exit (the run never started)


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """The fields of docs/design/contract.md section 4 (FluidMCP's, plus ours)."""

    id: str
    state: State
    is_running: bool
    is_healthy: bool
    health_message: str | None
    restart_policy: str
    restart_count: int
    max_restarts: int | None
    consecutive_health_failures: int
    uptime_seconds: float | None
    last_restart_time: float | None
    last_health_check_time: float | None
    has_cuda_oom: bool
    pid: int | None
    last_exit_code: int | None
    failure_cause: Cause | None
    failure_advice: str | None
    next_restart_at: float | None
    desired: str
    last_failure: LastFailure | None = None  # still shown once the model is healthy again
    replicas: tuple[ReplicaStatus, ...] = ()
    adaptations: tuple[ArgChange, ...] = ()  # in force for the next or current run; none: configured args
    effective_args: tuple[str, ...] | None = None  # the args the next or current run gets (None: not known)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The answer to start/stop/restart: refused when `accepted` is False (API 409, CLI exit 1)."""

    accepted: bool
    message: str
    status: ModelStatus  # right after the model's owner acted on the request
    changed: bool = True  # False for a request that had nothing to do (start of a running model)


@dataclass(frozen=True, slots=True)
class HealthCheckReport:
    """The POST .../health-check answer (docs/design/contract.md section 4)."""

    model_id: str
    is_healthy: bool
    health_message: str | None
    consecutive_health_failures: int
    last_health_check_time: float | None
    has_cuda_oom: bool
