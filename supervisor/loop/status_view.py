"""Build the API's `ModelStatus` from an owner's snapshot. Pure reading: nothing here probes or counts."""

from __future__ import annotations

from dataclasses import replace

from supervisor.config.schema import ModelConfig
from supervisor.core.clock import Clock
from supervisor.core.diagnosis import command_advice
from supervisor.core.states import Cause, State
from supervisor.core.views import ModelStatus, ReplicaStatus
from supervisor.loop.model import Replica
from supervisor.loop.owner import ModelOwner

# What an operator can do about a failure that the output did not explain better.
GENERIC_ADVICE: dict[Cause, str] = {
    Cause.CRASH: "The server exited on its own; read the last log lines for the traceback.",
    Cause.UNHEALTHY: (
        "The server stopped answering its health probe (hung engine or overload); check the logs, and raise "
        "health_check_timeout or health_failure_threshold if it is only slow under load."
    ),
    Cause.STARTUP_TIMEOUT: (
        "The server did not become healthy within startup_timeout; large models load for minutes, so raise "
        "startup_timeout if the logs show loading progress, otherwise look for a stuck download or a crash loop."
    ),
    Cause.OOM: "The GPU ran out of memory; lower --gpu-memory-utilization or --max-model-len, or use a smaller model.",
    Cause.PORT_IN_USE: "Another process holds the server's port; stop it or give this model another --port.",
    Cause.STALLED: (
        "Requests made no progress (no output within progress_timeout, or the inference probe timed out) while "
        "the server may still have answered /health: a hung engine. Check the logs and the GPU; raise "
        "progress_timeout if long prompts legitimately take longer before their first token."
    ),
    Cause.ENGINE_DEAD: "vLLM's engine died; the logs before this point show why (often OOM or a worker crash).",
    Cause.MEMORY_LIMIT: (
        "The run's processes held more memory than max_memory (resident) or max_gpu_memory allows, so the run "
        "was stopped; if it grows steadily it leaks, otherwise raise the limit (the timeline entry gives the figures)."
    ),
}

CONTAINER_OOM_ADVICE = (
    "The container went over its memory limit and the kernel killed it (Docker's OOMKilled): this is host "
    "memory, not the GPU's. Raise docker.mem_limit, or lower what the server keeps in host memory "
    "(e.g. vLLM's --swap-space or --cpu-offload-gb)."
)


def build_status(model_id: str, cfg: ModelConfig, owner: ModelOwner, clock: Clock, offset: float) -> ModelStatus:
    """`offset` turns monotonic times into Unix times; fixed per supervisor life so reads agree exactly."""
    snap = owner.snapshot
    now = clock.now()

    def wall(mono: float | None) -> float | None:
        return None if mono is None else mono + offset

    cause = snap.failure_cause
    finding = owner.last_finding
    exit_status = snap.last_exit
    advice = None
    if cause is not None and finding is not None and finding.cause is cause:
        advice = finding.advice  # what the output said, e.g. which knob to turn for this OOM
    elif cause is Cause.OOM and exit_status is not None and exit_status.oom_killed:
        advice = CONTAINER_OOM_ADVICE
    elif cause is Cause.COMMAND_NOT_FOUND:
        advice = command_advice(cfg.command)  # names the command, which a fixed text cannot
    elif cause is not None:
        advice = GENERIC_ADVICE[cause]
    exit_code = None
    if exit_status is not None:
        exit_code = -exit_status.signal if exit_status.signal is not None else exit_status.code
    live = snap.live
    return ModelStatus(
        id=model_id,
        state=snap.state,
        is_running=live,
        is_healthy=snap.state is State.HEALTHY,
        health_message=None if snap.state is State.STOPPED else snap.health_message,  # a stopped model has no health
        restart_policy=str(cfg.restart_policy),
        restart_count=snap.restart_count,
        max_restarts=cfg.max_restarts,
        consecutive_health_failures=snap.consecutive_failures,
        uptime_seconds=(now - snap.spawned_at) if live and snap.spawned_at is not None else None,
        last_restart_time=wall(snap.last_restart_at),
        last_health_check_time=wall(snap.last_probe_at),
        has_cuda_oom=snap.has_cuda_oom,
        pid=owner.run.handle.pid if live and owner.run is not None else None,
        last_exit_code=exit_code,
        failure_cause=cause,
        failure_advice=advice,
        next_restart_at=wall(snap.restart_at) if snap.state is State.BACKOFF else None,
        desired=snap.desired.value,
        adaptations=tuple(owner.adapter.changes),
        effective_args=owner.adapter.shown_args(),
    )


# The state a model of several replicas shows: that of its most alive replica.
STATE_RANK = (
    State.HEALTHY,
    State.STARTING,
    State.UNHEALTHY,
    State.STOPPING,
    State.BACKOFF,
    State.FAILED,
    State.STOPPED,
)


def replica_status(replica: Replica, status: ModelStatus) -> ReplicaStatus:
    return ReplicaStatus(
        index=replica.index,
        port=replica.cfg.ports[0] if replica.cfg.ports else None,
        state=status.state,
        pid=status.pid,
        is_healthy=status.is_healthy,
        restart_count=status.restart_count,
        last_exit_code=status.last_exit_code,
        failure_cause=status.failure_cause,
        in_flight=replica.in_flight,
        draining=replica.draining,
    )


def model_status(model_id: str, cfg: ModelConfig, replicas: list[Replica], clock: Clock, offset: float) -> ModelStatus:
    """A model's status: its one replica's, or the replicas' together. FluidMCP's fields keep their meaning:
    healthy while a replica is, the restart count summed; the lead replica (the first healthy one, else the
    first running) speaks for the rest."""
    own = [build_status(model_id, replica.cfg, replica.owner, clock, offset) for replica in replicas]
    listed = tuple(replica_status(r, s) for r, s in zip(replicas, own, strict=True))
    if len(own) == 1:
        return replace(own[0], replicas=listed)
    lead = next((s for s in own if s.is_healthy), None) or next((s for s in own if s.is_running), own[0])
    failed = next((s for s in own if s.failure_cause is not None), lead)
    restarts_at = [s.next_restart_at for s in own if s.next_restart_at is not None]
    return replace(
        lead,
        state=min((s.state for s in own), key=STATE_RANK.index),
        is_running=any(s.is_running for s in own),
        is_healthy=any(s.is_healthy for s in own),
        restart_count=sum(s.restart_count for s in own),
        last_restart_time=max((s.last_restart_time for s in own if s.last_restart_time), default=None),
        last_health_check_time=max((s.last_health_check_time for s in own if s.last_health_check_time), default=None),
        has_cuda_oom=any(s.has_cuda_oom for s in own),
        last_exit_code=failed.last_exit_code,
        failure_cause=failed.failure_cause,
        failure_advice=failed.failure_advice,
        next_restart_at=min(restarts_at, default=None),
        replicas=listed,
    )
