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


class LastFailureOut(_FromAttributes):
    cause: str = Field(description="The failure cause (crash, oom, unhealthy, ...)")
    time: float = Field(description="Unix time the failed run ended")
    exit_code: int | None = Field(description="The run's exit code; negative: the signal that ended it")


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
    last_failure: LastFailureOut | None = Field(
        default=None, description="The latest failure, kept after the model recovered (none since the start)"
    )
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


# --- GET /api/status, GET /api/diagnostics, POST /api/heal (supervisor.api.routes_health) -------------------


class ModelCountsOut(BaseModel):
    total: int
    healthy: int
    unhealthy: int
    starting: int
    backoff: int
    stopping: int
    stopped: int
    failed: int


class RecoveriesOut(BaseModel):
    attempted: int = Field(description="Runs spawned after a failed run of the same replica (policy, heal or operator)")
    succeeded: int = Field(description="Attempts whose replica became healthy before it failed again")
    success_rate: float | None = Field(description="succeeded / attempted; null before the first attempt")


class SupervisorStatusOut(BaseModel):
    version: str
    uptime_seconds: float = Field(description="Seconds since the supervisor process started")
    models: ModelCountsOut = Field(description="How many models are in each state")
    restarts_total: int = Field(description="Runs spawned to replace an earlier one, in the whole timeline")
    recoveries: RecoveriesOut


class HostMemoryOut(BaseModel):
    total: int = Field(description="Bytes")
    available: int = Field(description="Bytes Linux calls available (MemAvailable), not total - free")


class DiskOut(BaseModel):
    path: str = Field(description="The supervisor's state directory")
    free: int | None = Field(description="Bytes free there; null when it cannot be read")


class HostOut(BaseModel):
    cpu_percent: float
    load_average: list[float] = Field(description="1, 5 and 15 minutes")
    memory: HostMemoryOut
    disk: DiskOut


class GpuProcessOut(BaseModel):
    pid: int
    used_memory: int | None = Field(description="Bytes; null where the driver does not say")
    owner: str = Field(description="The model (model/replica for one of several replicas) it belongs to, or foreign")


class GpuOut(BaseModel):
    index: int
    name: str
    memory_total: int
    memory_used: int
    processes: list[GpuProcessOut]


class FindingOut(_FromAttributes):
    finding: str = Field(examples=["cuda_oom"])
    cause: Cause
    advice: str
    replica: int


class ModelMemoryOut(BaseModel):
    rss: int = Field(description="Bytes of resident memory, summed over the processes of the model's runs")
    gpu: int | None = Field(description="Bytes of GPU memory those processes hold; null without NVML")


class ModelDiagnosticsOut(BaseModel):
    id: str
    state: State
    failure_cause: Cause | None
    failure_advice: str | None
    findings: list[FindingOut] = Field(description="What the current (or last) run's output showed")
    memory: ModelMemoryOut


class LeftoverOut(BaseModel):
    pid: int
    model: str
    replica: int
    run: int = Field(description="The run it was started for, which is over")
    name: str
    rss: int


class DiagnosticsOut(BaseModel):
    host: HostOut
    gpus: list[GpuOut]
    gpu_error: str | None = Field(description="Why there are no GPU figures (no package, driver or GPU)")
    models: list[ModelDiagnosticsOut]
    leftovers: list[LeftoverOut] = Field(description="Processes of this supervisor's runs that are over")


class HealActionOut(_FromAttributes):
    model: str = Field(description="The model (model/replica), or 'pid N' for a leftover process")
    action: str = Field(description="started, stopped_leftover, or none (left alone; reason says why)")
    reason: str


class HealOut(BaseModel):
    actions: list[HealActionOut]
