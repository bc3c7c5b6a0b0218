"""One asyncio task per model: the only place where a model's snapshot changes.

Everything that can happen to a model becomes an event in its inbox: operator requests (with a future for
the reply), exits and group-gone notices from the run's watcher, probe results, diagnosis findings, and the
passing of time. The owner hands each to the pure `Machine` and carries out the returned actions. Because
one task serializes all of them, concurrent API calls cannot race (docs/design/defects.md #7), and because every wait is
a task of its own, one model's probe, backoff or stop never delays another (docs/design/defects.md #8).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from supervisor.core.clock import Clock, Timer
from supervisor.core.diagnosis import Finding, RunDiagnosis, classify_line
from supervisor.core.machine import Machine
from supervisor.core.machine_types import (
    LIVE,
    Action,
    Diagnosed,
    Event,
    Exited,
    GroupGone,
    Kill,
    Probe,
    ProbeDone,
    Record,
    Reply,
    RestartRequested,
    Snapshot,
    Spawn,
    Spawned,
    SpawnFailed,
    StartRequested,
    Terminate,
    Tick,
    next_deadline,
)
from supervisor.core.states import Cause, State
from supervisor.loop.adapter import Adapter, ExitPlan
from supervisor.loop.memory_watch import has_memory_limit, watch_memory
from supervisor.probe import ProbeResult
from supervisor.runtime.base import Run, Runtime, SpawnError, Stream
from supervisor.runtime.gpu import Nvml

log = logging.getLogger(__name__)

# One probe of the model's server within a timeout budget; it reports failure and never raises.
Prober = Callable[[float], Awaitable[ProbeResult]]


@dataclass
class _Request:
    event: Event
    reply: asyncio.Future[Reply] | None = None


@dataclass
class RunView:
    """What the owner knows about the current run beyond the snapshot: its handle and diagnosis."""

    number: int
    handle: Run
    diagnosis: RunDiagnosis
    notes: tuple[str, ...] = ()  # what smart recovery found out about the run's end (holders), for the advice
    exit_handled: asyncio.Event = field(default_factory=asyncio.Event)  # the machine has decided what follows


class OwnerReports(Protocol):
    """Where an owner reports outward. It hands over everything a report needs, so nothing reads it back."""

    def record(self, model_id: str, record: Record, snapshot: Snapshot, run: RunView | None) -> None:
        """A timeline entry, with the snapshot it left and the current run (to persist and to mark the log)."""

    def probed(self, model_id: str, result: ProbeResult) -> None:
        """A probe's outcome (start-up, liveness or manual)."""

    def line(self, model_id: str, stream: Stream, text: str) -> None:
        """One line of the run's output."""


_NVML = Nvml()  # one NVML handle for every model (initialised on first use)


def with_notes(finding: Finding | None, notes: tuple[str, ...]) -> Finding | None:
    """The finding with what smart recovery found out (holders named, waits skipped) added to its advice."""
    if finding is None or not notes:
        return finding
    return replace(finding, advice=" ".join((finding.advice, *notes)))


class ModelOwner:
    def __init__(
        self,
        model_id: str,
        machine: Machine,
        runtime: Runtime,
        clock: Clock,
        *,
        probe: Prober | None,
        reports: OwnerReports,
        snapshot: Snapshot | None = None,
        nvml: Nvml | None = None,
    ) -> None:
        self.model_id = model_id
        self.machine = machine
        self.snapshot = snapshot or Snapshot()
        self.run: RunView | None = None
        # The primary finding of the last run that ended (docs/design/defects.md #11: none when it printed nothing); its
        # advice explains failure_cause when the causes match.
        self.last_finding: Finding | None = None
        self._runtime = runtime
        self._clock = clock
        # Smart recovery (docs/recovery.md): the configured args, the changes in force, the holders named.
        self.adapter = Adapter(model_id, runtime, machine.settings.adapt, nvml or _NVML, clock)
        self._adapting: dict[int, ExitPlan] = {}  # run -> what was done about its end, until the exit is handled
        self._probe = probe
        self._reports = reports
        self._inbox: asyncio.Queue[_Request] = asyncio.Queue()
        self._timer: Timer | None = None  # posts a Tick at the earliest deadline of the snapshot
        self._timer_at: float | None = None
        self._helpers: set[asyncio.Task[None]] = set()
        self._settled = asyncio.Event()
        self._update_settled()

    # --- the outside world's entry points ---------------------------------------------------------

    def post(self, event: Event) -> None:
        """Deliver an event that needs no answer (from watchers, probes, output)."""
        self._inbox.put_nowait(_Request(event))

    async def request(self, event: Event) -> Reply:
        """Deliver an operator request and wait until the owner has acted on it."""
        if isinstance(event, RestartRequested) and event.requested_at is None:
            event = RestartRequested(requested_at=self._clock.now())
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Request(event, reply))
        return await reply

    async def wait_settled(self) -> None:
        """Return once no process of this model is alive and nothing is pending."""
        await self._settled.wait()

    # --- the loop ---------------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            while True:
                request = await self._next(next_deadline(self.snapshot))
                event = request.event if request else Tick()
                ended = self.run if isinstance(event, Exited) and self.run and self.run.number == event.run else None
                try:
                    reply = await self._apply(event)
                except Exception as exc:
                    # One failed event (a bug, an illegal event) must never end this model's supervision.
                    log.exception("%s: handling %s failed", self.model_id, type(event).__name__)
                    reply = Reply(False, f"internal error: {exc}")
                if ended is not None:
                    ended.exit_handled.set()  # handled or not, the run's watcher goes on
                if request and request.reply and not request.reply.done():
                    request.reply.set_result(reply or Reply(True, "done"))
        finally:
            self._arm(None)
            for task in list(self._helpers):
                task.cancel()

    async def _next(self, deadline: float | None) -> _Request | None:
        """The next event, or None (a Tick) once `deadline` passed. The deadline is a timer callback that
        posts a Tick, so a wait costs no task: at rest a model wakes only for its probes."""
        if not self._inbox.empty():
            return self._inbox.get_nowait()
        if deadline is not None and deadline <= self._clock.now():
            return None
        self._arm(deadline)
        return await self._inbox.get()

    def _arm(self, deadline: float | None) -> None:
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._clock.call_at(deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer, self._timer_at = None, None
        self.post(Tick())

    async def _apply(self, event: Event) -> Reply | None:
        if isinstance(event, Exited) and self.run is not None and self.run.number == event.run:
            self.last_finding = with_notes(self.run.diagnosis.primary, self.run.notes)
        restarted_by_operator = isinstance(event, StartRequested) and self.snapshot.state not in LIVE
        step = self.machine.handle(self.snapshot, event, self._clock.now())
        self.snapshot = step.snapshot
        actions = list(step.actions)
        # The args change before any spawn of this step; its entry follows the request or the exit it answers.
        if restarted_by_operator and (back := self.adapter.reset(self.snapshot.state, "operator start")):
            actions.insert(1 if actions and isinstance(actions[0], Record) else 0, back)
        plan = self._adapting.pop(event.run, None) if isinstance(event, Exited) else None
        if plan is not None and plan.change is not None and self.snapshot.state is State.BACKOFF:
            actions.append(self.adapter.commit(plan.change, State.BACKOFF))
        follow_ups: list[Event] = []
        for action in actions:
            follow_up = await self._execute(action)
            if follow_up is not None:
                follow_ups.append(follow_up)
        self._update_settled()
        for follow_up in follow_ups:
            await self._apply(follow_up)
        return step.reply

    async def _execute(self, action: Action) -> Event | None:
        match action:
            case Record():
                self._reports.record(self.model_id, action, self.snapshot, self.run)
            case Spawn():
                return await self._spawn(action)
            case Terminate() if self.run and self.run.number == action.run:
                self.run.handle.terminate()
            case Kill() if self.run and self.run.number == action.run:
                self.run.handle.kill()
            case Probe():
                self._start_helper(self._run_probe(action))
        return None

    async def _spawn(self, action: Spawn) -> Event:
        diagnosis = RunDiagnosis()
        number = action.run

        def sink(stream: Stream, text: str) -> None:
            self._reports.line(self.model_id, stream, text)
            finding = diagnosis.observe(text)
            if finding is not None:  # lines may arrive before spawn() returns (Docker attaches first)
                cause = diagnosis.primary_cause
                assert cause is not None  # a finding always gives the run a cause
                self.post(Diagnosed(number, cause, finding.finding, diagnosis.has_cuda_oom))

        started = time.perf_counter()
        try:
            handle = await self._runtime.spawn(self.model_id, number, sink)
        except Exception as exc:  # whatever stops a start is a failed start, counted like a crash
            message = str(exc) if isinstance(exc, SpawnError) else f"{type(exc).__name__}: {exc}"
            log.warning("%s: run %d could not start: %s", self.model_id, number, message)
            # The runtime's message may name a known cause (a port taken by another container).
            finding = classify_line(message)
            return SpawnFailed(number, message, finding.cause if finding else Cause.CRASH)
        log.debug("%s: spawned run %d in %.1f ms", self.model_id, number, (time.perf_counter() - started) * 1e3)
        self.run = RunView(number, handle, diagnosis)
        self._start_helper(self._watch(number, handle))
        if has_memory_limit(self.machine.settings):
            run = self.run  # the watch ends once this run is no longer the live one
            live = lambda: self.run is run and self.snapshot.live  # noqa: E731
            watch = watch_memory(self.post, live, number, handle.pid, self.machine.settings, self._clock, self.model_id)
            self._start_helper(watch)
        return Spawned(number, handle.pid)

    async def _watch(self, number: int, handle: Run) -> None:
        """Report the run's exit the moment it happens, then the end of its whole group."""
        status = await handle.wait_exit()
        retry = None
        run = self.run
        if run is not None and run.number == number and self.snapshot.state is not State.STOPPING:
            plan = await self.adapter.at_exit(number, run.diagnosis)
            run.notes, retry = plan.notes, plan.retry
            self._adapting[number] = plan
        self.post(Exited(number, status, retry))
        await handle.wait_gone()
        if run is not None and run.number == number:
            await run.exit_handled.wait()  # whether a restart follows is decided with the exit
            if self.snapshot.state is State.BACKOFF:
                wanted = lambda: self.snapshot.state is State.BACKOFF  # noqa: E731 (a stop ends the wait)
                notes = await self.adapter.before_restart(number, run.diagnosis, wanted)
                if notes:
                    self.last_finding = with_notes(self.last_finding, notes)
        self.post(GroupGone(number))

    async def _run_probe(self, action: Probe) -> None:
        assert self._probe is not None  # the machine only asks for probes when there is an endpoint
        result = await self._probe(action.timeout)
        self._reports.probed(self.model_id, result)
        self.post(ProbeDone(action.run, result.ok, result.message))

    def _start_helper(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helper_done)

    def _helper_done(self, task: asyncio.Task[None]) -> None:
        self._helpers.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: internal task failed: %r", self.model_id, exc, exc_info=exc)

    def _update_settled(self) -> None:
        snap = self.snapshot
        quiet = snap.state in (State.STOPPED, State.FAILED) and not snap.live and not snap.group_alive
        if quiet:
            self._settled.set()
        else:
            self._settled.clear()
