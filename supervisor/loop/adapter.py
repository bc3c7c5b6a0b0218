"""One model's smart recovery (docs/recovery.md), as its owner uses it: what to do when a run has ended
before its exit is reported (adapt the args, free the port), and before the next run starts (free the GPU).

It holds the model's configured arguments and the changes in force, so the status can show both and an
operator's start can return to the configured ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from supervisor.core import adapt
from supervisor.core.clock import Clock
from supervisor.core.diagnosis import RunDiagnosis
from supervisor.core.machine_types import Record
from supervisor.core.states import EventKind, State
from supervisor.core.views import ArgChange
from supervisor.loop import recovery
from supervisor.runtime.base import Runtime
from supervisor.runtime.gpu import Nvml
from supervisor.runtime.usage import INSTANCE_ENV
from supervisor.store.redact import REDACTED, secrets_from_argv

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExitPlan:
    """What was done about an ended run before its exit is reported."""

    retry: str | None  # why the next run may start at once without budget; None: the normal path
    notes: tuple[str, ...]  # for failure_advice
    change: adapt.Adaptation | None  # the args change for the next run, recorded once the exit is handled


class Adapter:
    def __init__(self, unit: str, runtime: Runtime, floors: adapt.Floors | None, nvml: Nvml, clock: Clock) -> None:
        self._unit = unit
        self._runtime = runtime
        self._floors = floors
        self._nvml = nvml
        self._clock = clock
        self.configured = recovery.runtime_args(runtime)
        self.changes: list[ArgChange] = []

    def _us(self, run: int) -> recovery.Us:
        # Process runs carry this supervisor's instance: a run of another supervisor with the same model id
        # is never taken for ours.
        env = getattr(self._runtime, "env", None)
        instance = env.get(INSTANCE_ENV) if isinstance(env, dict) else None
        return recovery.Us(self._unit, run, instance)

    @property
    def effective(self) -> tuple[str, ...] | None:
        return recovery.runtime_args(self._runtime)

    def shown_args(self) -> tuple[str, ...] | None:
        """The effective args with the values of secret-looking flags masked (vLLM's --api-key)."""
        args = self.effective
        if args is None:
            return None
        secrets = set(secrets_from_argv(args))
        shown = []
        for arg in args:
            flag, eq, value = arg.partition("=")
            shown.append(REDACTED if arg in secrets else f"{flag}={REDACTED}" if eq and value in secrets else arg)
        return tuple(shown)

    async def at_exit(self, run: int, diagnosis: RunDiagnosis) -> ExitPlan:
        """A run failed: name the port's holder (stop it if it is our leftover), pick an args change."""
        primary = diagnosis.primary
        finding = None if primary is None else primary.finding
        notes: list[str] = []
        args = self.effective
        if finding == "port_in_use" and args is not None:
            port = await recovery.free_port(args, self._us(run))
            notes += [port.note] if port.note else []
            if port.freed:
                return ExitPlan("stopped our leftover holding the port", tuple(notes), None)
        if diagnosis.torch_holders:
            named = recovery.describe_torch_holders(diagnosis.torch_holders, self._us(run))
            notes += [named] if named else []
        change = await self._choose(finding, diagnosis, run, notes) if args is not None else None
        return ExitPlan(None if change is None else change.detail, tuple(notes), change)

    async def _choose(
        self, finding: str | None, diagnosis: RunDiagnosis, run: int, notes: list[str]
    ) -> adapt.Adaptation | None:
        args = self.effective
        if self._floors is None or args is None:
            return None
        if finding == "kv_cache_too_small" and diagnosis.estimate is not None:
            change = adapt.adapt_max_model_len(args, diagnosis.estimate, self._floors)
            if change is None:
                notes.append(
                    f"Not adapted: vLLM's estimate {diagnosis.estimate} is no lower than the current "
                    f"--max-model-len or is below adapt_min_max_model_len {self._floors.max_model_len}."
                )
            return change
        if finding == "gpu_memory_held" and diagnosis.free_memory is not None:
            return await self._fit_gpu(args, diagnosis.free_memory, run, self._floors, notes)
        return None

    async def _fit_gpu(
        self,
        args: tuple[str, ...],
        free_memory: tuple[float, float],
        run: int,
        floors: adapt.Floors,
        notes: list[str],
    ) -> adapt.Adaptation | None:
        # Only memory that will not come back is adapted to: our own leftovers are stopped before the
        # restart (a configuration shrunk because the last run was still releasing VRAM would stay small).
        found = await asyncio.to_thread(recovery.read_gpu_holders, self._nvml)
        if found.reading.error is not None:
            notes.append(
                f"--gpu-memory-utilization not adapted: whose memory it is cannot be told ({found.reading.error})."
            )
            return None
        foreign = found.of(lambda owner: owner != "own", self._us(run))
        if not foreign:
            return None
        reclaim = sum(held for _, held in found.of(lambda owner: owner == "own", self._us(run))) / 1024**3
        free, total = free_memory
        return adapt.adapt_gpu_memory_utilization(args, free + reclaim, total, floors)

    def commit(self, change: adapt.Adaptation, state: State) -> Record:
        """Apply the change to the next run's args; the `adapted` timeline entry."""
        args = self.effective
        assert args is not None
        recovery.set_runtime_args(self._runtime, adapt.apply(args, change))
        self.changes.append(ArgChange(change.flag, change.before, change.after, change.reason, self._clock.wall()))
        log.warning("%s: %s", self._unit, change.detail)
        return Record(EventKind.ADAPTED, state, change.detail, change.flag)

    def reset(self, state: State, why: str) -> Record | None:
        """Back to the configured args (an operator's start); the timeline entry, or None if nothing changed."""
        if not self.changes or self.configured is None:
            return None
        recovery.set_runtime_args(self._runtime, self.configured)
        self.changes.clear()
        return Record(EventKind.ADAPTED, state, f"configured args restored ({why})")

    async def before_restart(
        self, run: int, diagnosis: RunDiagnosis, still_wanted: Callable[[], bool]
    ) -> tuple[str, ...]:
        """After an OOM finding, before the next run: our leftovers off the GPU, its memory released."""
        if not diagnosis.has_cuda_oom:
            return ()
        return await recovery.release_gpu(self._nvml, self._us(run), self._clock, still_wanted)
