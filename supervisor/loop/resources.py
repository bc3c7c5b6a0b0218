"""What the fleet's runs hold (memory, CPU time, GPU memory), what the host has left, and which processes runs
left behind: read from the owners' snapshots on the event loop, measured in a worker thread.

The owner of a GPU process is the model (`model/replica` for a model of several replicas) whose run's
processes include it, else `foreign`. Leftovers are processes marked with this supervisor's instance whose
run is over: the unit's current run is another one, or it is stopped or failed with no process expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.states import State
from supervisor.loop import memory_watch
from supervisor.loop.model import SupervisedModel, unit_name
from supervisor.runtime.gpu import GpuReading
from supervisor.runtime.usage import (
    NOTHING,
    Host,
    MarkedProcess,
    Usage,
    host_figures,
    marked_processes,
    run_pids,
    usage_of,
)

log = logging.getLogger(__name__)

FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class LiveRun:
    """A run of a replica that may have processes, as the owner's snapshot says."""

    model_id: str
    label: str  # the model id, or "model/replica" for a model of several replicas
    pid: int  # its main process


@dataclass(frozen=True, slots=True)
class ModelUsage:
    rss: int
    gpu: int | None  # None where NVML gave no figures
    cpu_seconds: float


@dataclass(frozen=True, slots=True)
class FleetUsage:
    runs: tuple[tuple[LiveRun, Usage], ...]
    gpu: GpuReading

    def owner_of(self, pid: int) -> str:
        return next((run.label for run, usage in self.runs if pid in usage.pids), FOREIGN)

    def by_model(self) -> dict[str, ModelUsage]:
        """Usage summed over each model's replicas (models without a live run are absent)."""
        totals: dict[str, ModelUsage] = {}
        for run, usage in self.runs:
            gpu = None if self.gpu.error is not None else self.gpu.memory_of(set(usage.pids))
            before = totals.get(run.model_id, ModelUsage(0, None if gpu is None else 0, 0.0))
            totals[run.model_id] = ModelUsage(
                before.rss + usage.rss,
                None if gpu is None or before.gpu is None else before.gpu + gpu,
                before.cpu_seconds + usage.cpu_seconds,
            )
        return totals


def live_runs(models: Mapping[str, SupervisedModel]) -> list[LiveRun]:
    """Every replica's current run that has (or may still have) processes."""
    found = []
    for model in models.values():
        for replica in model.replicas:
            snap, run = replica.owner.snapshot, replica.owner.run
            if run is None or run.number != snap.run or not (snap.live or snap.group_alive) or run.handle.pid is None:
                continue
            label = model.id if len(model.replicas) == 1 else f"{model.id}/{replica.index}"
            found.append(LiveRun(model.id, label, run.handle.pid))
    return found


def current_runs(models: Mapping[str, SupervisedModel]) -> dict[str, int | None]:
    """unit -> the run whose processes belong there now; None where no process is expected (stopped, failed)."""
    current: dict[str, int | None] = {}
    for model in models.values():
        for replica in model.replicas:
            snap = replica.owner.snapshot
            quiet = snap.state in (State.STOPPED, State.FAILED) and not snap.live and not snap.group_alive
            current[unit_name(model.id, replica.index)] = None if quiet else snap.run
    return current


def sample_usage(runs: list[LiveRun]) -> FleetUsage:
    """Measure each run's processes and read the GPUs (blocking: call in a worker thread)."""
    measured = []
    for run in runs:
        pids = run_pids(run.pid)
        measured.append((run, usage_of(pids) if pids else NOTHING))
    return FleetUsage(tuple(measured), memory_watch.NVML.read())


def find_leftovers(instance: str, current: dict[str, int | None]) -> list[MarkedProcess]:
    """Processes of this supervisor's runs that are over (blocking: call in a worker thread)."""
    return [p for p in marked_processes(instance) if current.get(p.unit) != p.run]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    usage: FleetUsage
    host: Host
    leftovers: list[MarkedProcess]


async def diagnose(models: Mapping[str, SupervisedModel], instance: str, state_dir: Path) -> Diagnosis:
    """Everything /api/diagnostics shows that needs measuring, measured off the event loop."""
    runs, current = live_runs(models), current_runs(models)

    def measure() -> Diagnosis:
        return Diagnosis(sample_usage(runs), host_figures(state_dir), find_leftovers(instance, current))

    return await asyncio.to_thread(measure)


class UsageCache:
    """Per-model usage for /metrics, which is rendered on the event loop and so must not measure: each read
    asks for a refresh in a worker thread (at most one at a time, at most every `min_age` seconds) and
    answers with the latest finished one, so the figures are at most one scrape old."""

    def __init__(self, models: Callable[[], Mapping[str, SupervisedModel]], min_age: float = 1.0) -> None:
        self._models = models
        self._min_age = min_age
        self._latest: dict[str, ModelUsage] = {}
        self._gpu_error: str | None = None
        self._taken_at = -float("inf")
        self._task: asyncio.Task[None] | None = None

    def latest(self) -> tuple[dict[str, ModelUsage], str | None]:
        """Usage by model, and why GPU figures are missing (None when NVML answered)."""
        self._refresh_soon()
        return self._latest, self._gpu_error

    def _refresh_soon(self) -> None:
        if self._task is not None and not self._task.done():
            return
        if time.monotonic() - self._taken_at < self._min_age:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to refresh with
            self._task = asyncio.get_running_loop().create_task(self._refresh(), name="usage-refresh")

    async def _refresh(self) -> None:
        self._taken_at = time.monotonic()
        try:
            usage = await asyncio.to_thread(sample_usage, live_runs(self._models()))
        except Exception:  # a measuring bug must not break /metrics: the last figures stay
            log.exception("measuring the models' memory failed")
            return
        self._latest, self._gpu_error = usage.by_model(), usage.gpu.error
