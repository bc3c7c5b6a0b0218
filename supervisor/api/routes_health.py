"""GET /api/status, GET /api/diagnostics and POST /api/heal (docs/design/contract.md section 10): the
supervisor as a whole, what it and the host hold, and one recovery pass on request.

Status reads only statuses and the timeline. Diagnostics measures processes, the host and the GPUs in a
worker thread (supervisor.loop.resources), so a slow /proc or NVML never holds up the models' probes.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
from fastapi import APIRouter

from supervisor import __version__
from supervisor.api.facade import SupervisorFacade
from supervisor.api.schemas import (
    DiagnosticsOut,
    DiskOut,
    ErrorDetail,
    FindingOut,
    GpuOut,
    GpuProcessOut,
    HealActionOut,
    HealOut,
    HostMemoryOut,
    HostOut,
    LeftoverOut,
    ModelCountsOut,
    ModelDiagnosticsOut,
    ModelMemoryOut,
    RecoveriesOut,
    SupervisorStatusOut,
)
from supervisor.core.states import State
from supervisor.loop.heal import count_recoveries, heal, restarts_total
from supervisor.loop.model import parse_unit
from supervisor.loop.resources import Diagnosis, diagnose

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "Missing, malformed or wrong bearer token"}
}


def health_router(supervisor: SupervisorFacade) -> APIRouter:
    """The three routes; the caller adds the API's authentication."""
    router = APIRouter(prefix="/api", tags=["supervisor"])

    @router.get("/status", response_model=SupervisorStatusOut, responses=_AUTH)
    async def get_status() -> SupervisorStatusOut:
        """Counts of models per state, restarts and recoveries over the timeline, the supervisor's uptime."""
        return status_summary(supervisor)

    @router.get("/diagnostics", response_model=DiagnosticsOut, responses=_AUTH)
    async def get_diagnostics() -> DiagnosticsOut:
        """Host figures, GPUs and their processes by owner, each model's failure, findings and memory, leftovers."""
        state_dir = supervisor.log_dir().parent
        diagnosis = await diagnose(supervisor.models(), supervisor.instance, state_dir)
        return diagnostics(supervisor, diagnosis)

    @router.post("/heal", response_model=HealOut, responses=_AUTH)
    async def post_heal() -> HealOut:
        """One recovery pass: failed models with a transient cause start afresh, leftover processes are
        stopped; a stopped model is never started."""
        actions = await heal(supervisor.models(), supervisor.instance, closing=supervisor.closing)
        return HealOut(actions=[HealActionOut.model_validate(a) for a in actions])

    return router


def status_summary(supervisor: SupervisorFacade) -> SupervisorStatusOut:
    statuses = supervisor.statuses()
    counts = {state: sum(1 for s in statuses if s.state is state) for state in State}
    events = [e for model_id in supervisor.model_ids() for e in supervisor.events(model_id)]
    recoveries = count_recoveries(events)
    return SupervisorStatusOut(
        version=__version__,
        uptime_seconds=max(0.0, time.time() - psutil.Process().create_time()),
        models=ModelCountsOut(total=len(statuses), **{state.value: n for state, n in counts.items()}),
        restarts_total=restarts_total(events),
        recoveries=RecoveriesOut(
            attempted=recoveries.attempted, succeeded=recoveries.succeeded, success_rate=recoveries.success_rate
        ),
    )


def diagnostics(supervisor: SupervisorFacade, diagnosis: Diagnosis) -> DiagnosticsOut:
    usage, host = diagnosis.usage, diagnosis.host
    by_model = usage.by_model()
    no_gpu = usage.gpu.error is not None
    models = []
    for status in supervisor.statuses():
        model = supervisor.models().get(status.id)
        findings = [
            FindingOut(finding=f.finding, cause=f.cause, advice=f.advice, replica=replica.index)
            for replica in (model.replicas if model else [])
            if replica.owner.run is not None
            for f in replica.owner.run.diagnosis.findings
        ]
        measured = by_model.get(status.id)
        gpu = None if no_gpu else (measured.gpu if measured and measured.gpu is not None else 0)
        memory = ModelMemoryOut(rss=measured.rss if measured else 0, gpu=gpu)
        models.append(
            ModelDiagnosticsOut(
                id=status.id,
                state=status.state,
                failure_cause=status.failure_cause,
                failure_advice=status.failure_advice,
                findings=findings,
                memory=memory,
            )
        )
    gpus = [
        GpuOut(
            index=gpu.index,
            name=gpu.name,
            memory_total=gpu.memory_total,
            memory_used=gpu.memory_used,
            processes=[
                GpuProcessOut(pid=p.pid, used_memory=p.used_memory, owner=usage.owner_of(p.pid)) for p in gpu.processes
            ],
        )
        for gpu in usage.gpu.gpus
    ]
    leftovers = []
    for proc in diagnosis.leftovers:
        model_id, replica = parse_unit(proc.unit)
        leftovers.append(
            LeftoverOut(pid=proc.pid, model=model_id, replica=replica, run=proc.run, name=proc.name, rss=proc.rss)
        )
    return DiagnosticsOut(
        host=HostOut(
            cpu_percent=host.cpu_percent,
            load_average=list(host.load_average),
            memory=HostMemoryOut(total=host.memory_total, available=host.memory_available),
            disk=DiskOut(path=host.disk_path, free=host.disk_free),
        ),
        gpus=gpus,
        gpu_error=usage.gpu.error,
        models=models,
        leftovers=leftovers,
    )
