"""Pydantic shapes of the management API's answers, so /openapi.json says exactly what is sent.

Field names follow FluidMCP's API (docs/design/contract.md section 4), which users already script against.

The models restate the fields of `ModelStatus`, `TimelineEvent` and `HealthCheckReport` (supervisor.status)
instead of being generated from them: a generated model is invisible to mypy and would lose the descriptions
/openapi.json shows. tests/supervisor/test_api.py checks that the field lists still match.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from supervisor.core.states import Cause, EventKind, State


class _FromAttributes(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class ErrorDetail(BaseModel):
    detail: str = Field(description="Why the request was refused, in one sentence")


class ReplicaStatusOut(_FromAttributes):
    index: int
    port: int | None = Field(description="The replica's own port, where the model lists ports")
    state: State
    pid: int | None
    is_healthy: bool
    restart_count: int
    last_exit_code: int | None
    failure_cause: Cause | None
    in_flight: int = Field(description="Requests the gateway has in flight on this replica")
    draining: bool = Field(description="Out of the gateway's routing during a rolling restart")


class ArgChangeOut(_FromAttributes):
    """One argument smart recovery changed (docs/recovery.md)."""

    flag: str = Field(examples=["--max-model-len"])
    from_: str | None = Field(
        validation_alias="before", serialization_alias="from", description="The value before; null: not given"
    )
    to: str = Field(validation_alias="after", examples=["21440"])
    reason: str = Field(examples=["vLLM's estimate"])
    time: float = Field(description="Unix time of the change")


class ModelStatusOut(_FromAttributes):
    id: str
    state: State
    is_running: bool
    is_healthy: bool
    health_message: str | None
    restart_policy: str
    restart_count: int = Field(description="Automatic restarts inside the current budget window")
    max_restarts: int | None
    consecutive_health_failures: int
    uptime_seconds: float | None = Field(description="Seconds since the current run was spawned")
    last_restart_time: float | None = Field(description="Unix time of the latest restart")
    last_health_check_time: float | None = Field(description="Unix time of the latest probe")
    has_cuda_oom: bool = Field(description="The current (or last) run reported CUDA out of memory")
    pid: int | None
    last_exit_code: int | None
    failure_cause: Cause | None
    failure_advice: str | None = Field(description="What an operator can do about failure_cause")
    next_restart_at: float | None = Field(description="Unix time of the scheduled restart while in backoff")
    desired: str = Field(description="'running' or 'stopped': what the operator asked for")
    replicas: list[ReplicaStatusOut] = Field(
        default=[], description="Each replica's own run; a model of one replica lists one"
    )
    adaptations: list[ArgChangeOut] = Field(
        default=[], description="Arguments smart recovery changed (adapt: true); empty: the configured args"
    )
    effective_args: list[str] | None = Field(
        default=None, description="The args the current or next run gets, secret values masked"
    )


class ModelList(BaseModel):
    models: list[ModelStatusOut]
    total: int


class ActionResponse(BaseModel):
    message: str
    accepted: bool
    restart_count: int
    uptime_seconds: float | None
    status: ModelStatusOut = Field(description="The model right after the request was processed")


class LogsResponse(BaseModel):
    model_id: str
    lines: list[str] = Field(description="Oldest first; secrets redacted")
    total_lines: int = Field(description="Lines available across the current and rotated log files")
    returned_lines: int


class HealthCheckResponse(_FromAttributes):
    model_id: str
    is_healthy: bool
    health_message: str | None
    consecutive_health_failures: int
    last_health_check_time: float | None
    has_cuda_oom: bool


class EventOut(_FromAttributes):
    seq: int = Field(description="Global, increasing sequence number; pass the last one as ?since=")
    time: float = Field(description="Unix time")
    model_id: str
    kind: EventKind
    state: State = Field(description="The model's state after the event")
    detail: str | None
    reason: str | None = Field(
        default=None, description="spawned: why (manual or a failure cause); exited: the failure cause"
    )
    replica: int = Field(default=0, description="The replica the event is about (0 for a model of one replica)")
