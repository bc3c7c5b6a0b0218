"""The per-model state machine: `Machine.handle(snapshot, event, now) -> Step(snapshot, actions, reply)`.

Everything that decides what happens to a model lives here, and nothing here does IO or reads a clock:
the loop feeds it events (operator requests, exits, probe results, findings, the passing of time) and
carries out the actions it returns (spawn, terminate, kill, probe, record an event). An event that cannot
happen in the current state raises `IllegalEvent` and changes nothing.

States and the edges between them (each edge is named where it happens below):

    stopped --start--> starting --probe ok--> healthy --threshold probe failures--> unhealthy
    starting/healthy/unhealthy --exit--> backoff | failed | stopped
    starting --startup timeout--> stopping ; unhealthy --(policy restarts)--> stopping
    healthy/unhealthy --stalled (requests made no progress)--> unhealthy --(policy restarts)--> stopping
    starting/healthy/unhealthy --over max_memory or max_gpu_memory--> stopping (cause memory_limit)
    stopping --group gone--> stopped | starting (restart) | backoff | failed
    backoff --delay passed and old group gone--> starting

A run is over only when its whole process group is gone (`GroupGone`); a new run never starts before that,
so orphaned engine processes of the last run cannot hold the GPU the next one needs (docs/design/defects.md #5).
"""

from __future__ import annotations

import random
from dataclasses import replace

from supervisor.core.machine_types import (
    LIVE,
    Action,
    Boot,
    Desired,
    Diagnosed,
    Event,
    Exited,
    GroupGone,
    IllegalEvent,
    Kill,
    MemorySampled,
    Probe,
    ProbeDone,
    Record,
    Reply,
    RestartRequested,
    Settings,
    ShutdownRequested,
    Snapshot,
    Spawned,
    SpawnFailed,
    Stalled,
    StartRequested,
    Step,
    StopRequested,
    Teardown,
    Tick,
)
from supervisor.core.policy import wants_restart
from supervisor.core.states import Cause, EventKind, State
from supervisor.core.steps import (
    diagnosed_step,
    explained,
    fresh_budget,
    kill_actions,
    memory_step,
    retry_step,
    spawn_step,
    stalled_step,
    teardown_step,
)


class Machine:
    """Decides, for one model, what each event means. Holds only its settings and the jitter RNG."""

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random(0)

    def handle(self, snap: Snapshot, event: Event, now: float) -> Step:
        match event:
            case Tick():
                return self._tick(snap, now)
            case ProbeDone():
                return self._probe_done(snap, event, now)
            case Diagnosed():
                return diagnosed_step(snap, event)
            case Stalled():
                return stalled_step(self.settings, snap, event, now)
            case MemorySampled():
                return memory_step(self.settings, snap, event, now)
            case Spawned():
                return self._spawned(snap, event, now)
            case SpawnFailed():
                return self._spawn_failed(snap, event, now)
            case Exited():
                return self._exited(snap, event, now)
            case GroupGone():
                return self._group_gone(snap, event, now)
            case StartRequested():
                return self._start_requested(snap, now)
            case StopRequested():
                return self._stop_requested(snap, event, now)
            case RestartRequested():
                return self._restart_requested(snap, event, now)
            case ShutdownRequested():
                return self._shutdown_requested(snap, now)
            case Boot():
                return self._boot(snap, now)
            case _:
                raise IllegalEvent(f"not an event: {event!r}")

    # --- operator requests -----------------------------------------------------------------------

    def _boot(self, snap: Snapshot, now: float) -> Step:
        if snap.state is State.FAILED:
            return Step(snap)  # failed stays failed across a supervisor restart until an operator acts
        if snap.state is not State.STOPPED or snap.group_alive:
            raise IllegalEvent(f"boot in state {snap.state}")
        # The journal's desired state decides, under every policy: an operator's stop survives a supervisor
        # restart, `always` included (unlike Docker's `always`: a GPU freed at 3 a.m. must stay free).
        if snap.desired is Desired.RUNNING:
            return spawn_step(self.settings, snap, now, reason=None)
        return Step(snap)

    def _start_requested(self, snap: Snapshot, now: float) -> Step:
        if snap.state in LIVE:
            return Step(snap, reply=Reply(True, f"already {snap.state}"))
        record = Record(EventKind.START_REQUESTED, snap.state)
        snap = replace(snap, desired=Desired.RUNNING)
        if snap.state is State.STOPPING:
            return self._redirect_teardown(snap, record, "starts once the current run has stopped")
        if snap.state is State.BACKOFF:
            # edge: backoff -> starting, cutting the delay short
            step = spawn_step(self.settings, snap, now, reason="manual", first=(record,))
            return replace(step, reply=Reply(True, "starting now"))
        # edge: stopped/failed -> starting; an operator's start begins a fresh budget (docs/design/defects.md #14)
        step = spawn_step(self.settings, fresh_budget(snap), now, reason=None, first=(record,))
        return replace(step, reply=Reply(True, "starting"))

    def _restart_requested(self, snap: Snapshot, event: RestartRequested, now: float) -> Step:
        asked = now if event.requested_at is None else event.requested_at
        if (
            snap.state in LIVE
            and snap.restart_reason == "manual"
            and snap.spawned_at is not None
            and asked <= snap.spawned_at
        ):
            # Concurrent restarts coalesce: the current run began after this request (docs/design/defects.md #7).
            return Step(snap, reply=Reply(True, f"run {snap.run} began after this restart was asked for"))
        record = Record(EventKind.RESTART_REQUESTED, snap.state)
        snap = replace(snap, desired=Desired.RUNNING)
        if snap.state in LIVE:
            # edge: live -> stopping, then straight to starting once the group is gone
            step = teardown_step(self.settings, snap, now, Teardown.RESTART, first=(record,))
            return replace(step, reply=Reply(True, "restart begun"))
        if snap.state is State.STOPPING:
            if snap.teardown is Teardown.RESTART:
                return Step(snap, reply=Reply(True, "restart already in progress"))
            return self._redirect_teardown(snap, record, "restarts once the current run has stopped")
        if snap.state is State.BACKOFF:
            step = spawn_step(self.settings, snap, now, reason="manual", first=(record,))
            return replace(step, reply=Reply(True, "restarting now"))
        step = spawn_step(self.settings, fresh_budget(snap), now, reason="manual", first=(record,))
        return replace(step, reply=Reply(True, "restarting"))

    def _redirect_teardown(self, snap: Snapshot, record: Record, message: str) -> Step:
        snap = replace(snap, teardown=Teardown.RESTART, restart_reason="manual")
        return Step(snap, (record,), Reply(True, message))

    def _stop_requested(self, snap: Snapshot, event: StopRequested, now: float) -> Step:
        # A stop is a desired state that no policy overrides until the next start (docs/design/defects.md #9).
        record = Record(EventKind.STOP_REQUESTED, snap.state, "force" if event.force else None)
        snap = replace(snap, desired=Desired.STOPPED)
        if snap.state in LIVE:
            step = teardown_step(self.settings, snap, now, Teardown.STOP, force=event.force, first=(record,))
            return replace(step, reply=Reply(True, "stopping"))
        if snap.state is State.STOPPING:
            snap = replace(snap, teardown=Teardown.STOP, restart_reason=None)
            actions: tuple[Action, ...] = (record,)
            if event.force and snap.group_alive:
                snap = replace(snap, kill_at=None)
                actions += kill_actions(snap.run, "forced")
            return Step(snap, actions, Reply(True, "stopping"))
        if snap.state in (State.BACKOFF, State.FAILED):
            # edge: backoff/failed -> stopped; the scheduled restart is cancelled
            snap = replace(snap, state=State.STOPPED, restart_at=None, restart_reason=None)
            return Step(snap, (record, Record(EventKind.STOPPED, State.STOPPED)), Reply(True, "stopped"))
        return Step(snap, reply=Reply(True, "already stopped"))

    def _shutdown_requested(self, snap: Snapshot, now: float) -> Step:
        if snap.state in LIVE:
            return teardown_step(self.settings, snap, now, Teardown.SHUTDOWN)
        if snap.state is State.STOPPING and snap.teardown is not Teardown.STOP:
            return Step(replace(snap, teardown=Teardown.SHUTDOWN, restart_reason=None))
        if snap.state is State.BACKOFF:
            snap = replace(snap, state=State.STOPPED, restart_at=None, restart_reason=None)
            return Step(snap, (Record(EventKind.STOPPED, State.STOPPED, "supervisor shutdown"),))
        return Step(snap)

    # --- the run's life ----------------------------------------------------------------------------

    def _spawned(self, snap: Snapshot, event: Spawned, now: float) -> Step:
        self._expect_pending_spawn(snap, event.run)
        snap = replace(snap, live=True, group_alive=True)
        spawned = Record(EventKind.SPAWNED, State.STARTING, f"run {event.run} pid {event.pid}", snap.restart_reason)
        if self.settings.has_probe:
            return Step(snap, (spawned,))
        # Without an endpoint there is nothing to probe: a live process is all "healthy" can mean.
        snap = replace(snap, state=State.HEALTHY, healthy_since=now, startup_deadline=None, failure_cause=None)
        return Step(snap, (spawned, Record(EventKind.HEALTHY, State.HEALTHY, "process running (no endpoint)")))

    def _spawn_failed(self, snap: Snapshot, event: SpawnFailed, now: float) -> Step:
        self._expect_pending_spawn(snap, event.run)
        # A run that could not even start is a crash like any other and is counted (docs/design/defects.md #3).
        return self._ended(snap, now, clean=False, cause=event.cause, detail=f"spawn failed: {event.message}")

    def _exited(self, snap: Snapshot, event: Exited, now: float) -> Step:
        if event.run != snap.run or not snap.live:
            raise IllegalEvent(f"exit of run {event.run} while run {snap.run} live={snap.live}")
        status = event.status
        snap = replace(snap, live=False, last_exit=status, probe_in_flight=False, next_probe_at=None)
        if snap.state is State.STOPPING:
            # A requested exit is not a failure, whatever its code (docs/design/defects.md #9); one we caused
            # because the run had failed (unhealthy, start-up timeout) carries that failure's cause.
            failure = snap.failure_cause if snap.teardown is Teardown.FAILURE else None
            reason = failure.value if failure else None
            return Step(snap, (Record(EventKind.EXITED, State.STOPPING, status.describe(), reason),))
        clean = status.signal is None and status.code in self.settings.success_exit_codes
        cause = snap.run_cause or (Cause.OOM if status.oom_killed else Cause.CRASH)
        retried = (
            None
            if clean or event.retry is None
            else retry_step(self.settings, snap, now, cause, detail=status.describe(), why=event.retry)
        )
        if retried is not None:
            return retried
        # Whatever the run left behind (engine children) is an orphan now: reap the whole group.
        return self._ended(snap, now, clean=clean, cause=cause, detail=status.describe(), first=(Kill(snap.run),))

    def _ended(
        self, snap: Snapshot, now: float, *, clean: bool, cause: Cause, detail: str, first: tuple[Action, ...] = ()
    ) -> Step:
        """A run ended by itself: decide what follows; its `exited` entry shows the state that led to."""
        step = self._after_failure(snap, now, clean=clean, cause=cause, first=first)
        reason = None if clean else cause.value  # a success exit code is no failure
        exited = Record(EventKind.EXITED, step.snapshot.state, detail, reason)
        return replace(step, actions=(exited, *step.actions))

    def _group_gone(self, snap: Snapshot, event: GroupGone, now: float) -> Step:
        if event.run != snap.run or snap.live or not snap.group_alive:
            raise IllegalEvent(f"group of run {event.run} gone while run {snap.run} live={snap.live}")
        snap = replace(snap, group_alive=False, kill_at=None)
        if snap.state is State.STOPPING:
            teardown, snap = snap.teardown, replace(snap, teardown=None)
            if teardown is Teardown.RESTART:
                return spawn_step(self.settings, snap, now, reason="manual")
            if teardown is Teardown.FAILURE:
                return self._after_failure(snap, now, clean=False, cause=snap.failure_cause or Cause.CRASH)
            # edge: stopping -> stopped
            return Step(replace(snap, state=State.STOPPED), (Record(EventKind.STOPPED, State.STOPPED),))
        return self._tick(snap, now)

    def _after_failure(
        self, snap: Snapshot, now: float, *, clean: bool, cause: Cause, first: tuple[Action, ...] = ()
    ) -> Step:
        """A run ended without being asked to: restart per policy, budget and backoff, or give up."""
        health_ended = now if snap.unhealthy_since is None else snap.unhealthy_since
        healthy_for = None if snap.healthy_since is None else health_ended - snap.healthy_since
        snap = replace(
            snap,
            failure_cause=None if clean else cause,
            healthy_since=None,
            unhealthy_since=None,
            startup_deadline=None,
            next_probe_at=None,
            probe_in_flight=False,
            consecutive_failures=0,
            teardown=None,
        )
        if snap.desired is Desired.STOPPED or not wants_restart(self.settings.restart_policy, clean=clean):
            # edge: -> stopped; policy `no`, or a clean exit under on-failure
            why = "clean exit" if clean else f"restart_policy {self.settings.restart_policy}"
            snap = replace(snap, state=State.STOPPED, desired=Desired.STOPPED)
            return Step(snap, (*first, Record(EventKind.STOPPED, State.STOPPED, why)))
        budget = self.settings.budget
        recent = budget.recent(snap.restart_times, now)
        if not budget.allows(recent, now):
            # edge: -> failed; stays failed until an operator starts it (docs/design/defects.md #14)
            window = "its lifetime" if budget.window is None else f"{budget.window:g}s"
            detail = f"restart limit reached: {len(recent)} restarts within {window}"
            snap = replace(snap, state=State.FAILED, restart_times=recent)
            return Step(snap, (*first, Record(EventKind.FAILED, State.FAILED, detail, cause.value)))
        attempt = 0 if self.settings.backoff.should_reset(healthy_for) else snap.attempt
        delay = self.settings.backoff.delay(attempt, self._rng)
        # edge: -> backoff; the restart is counted now, when it is decided (docs/design/defects.md #3)
        snap = replace(
            snap,
            state=State.BACKOFF,
            attempt=attempt + 1,
            # An unlimited budget needs no history (and a long-lived model would grow it for ever).
            restart_times=(*recent, now) if budget.max_restarts is not None else (),
            restart_count=snap.restart_count + 1,
            restart_at=now + delay,
            restart_reason="exit" if clean else cause.value,
        )
        backoff = Record(EventKind.BACKOFF, State.BACKOFF, format(round(delay, 3), "g"), snap.restart_reason)
        return Step(snap, (*first, backoff))

    # --- time --------------------------------------------------------------------------------------

    def _tick(self, snap: Snapshot, now: float) -> Step:
        actions: list[Action] = []
        if snap.state is State.STOPPING and snap.kill_at is not None and snap.kill_at <= now:
            # the stop's grace passed: SIGKILL to the whole group (a run never healthy was still loading)
            snap = replace(snap, kill_at=None)
            grace = "startup_stop_timeout" if snap.healthy_since is None and self.settings.has_probe else "stop_timeout"
            actions += kill_actions(snap.run, f"{grace} passed")
        if snap.state is State.STARTING and snap.startup_deadline is not None and snap.startup_deadline <= now:
            # edge: starting -> stopping; never became healthy within startup_timeout
            snap = replace(snap, failure_cause=explained(snap, Cause.STARTUP_TIMEOUT))
            detail = f"not healthy within {self.settings.startup_timeout:g}s"
            first = (*actions, Record(EventKind.STARTUP_TIMEOUT, State.STARTING, detail))
            return teardown_step(self.settings, snap, now, Teardown.FAILURE, first=first)
        restart_due = snap.restart_at is not None and snap.restart_at <= now
        if snap.state is State.BACKOFF and restart_due and not snap.group_alive:
            return spawn_step(self.settings, snap, now, reason=snap.restart_reason, first=tuple(actions))
        if (
            snap.state in LIVE
            and snap.live
            and not snap.probe_in_flight
            and snap.next_probe_at is not None
            and snap.next_probe_at <= now
        ):
            snap = replace(snap, probe_in_flight=True, probe_started_at=now, next_probe_at=None)
            actions.append(Probe(snap.run, self.settings.health_check_timeout))
        return Step(snap, tuple(actions))

    def _probe_done(self, snap: Snapshot, event: ProbeDone, now: float) -> Step:
        message = None if event.ok else event.message
        if event.manual:
            return Step(replace(snap, last_probe_at=now, health_message=message))
        if event.run != snap.run or snap.state not in LIVE or not snap.probe_in_flight:
            return Step(snap)  # a probe of a run that has since ended: nothing to learn
        s = self.settings
        interval = s.startup_probe_interval if snap.state is State.STARTING else s.health_check_interval
        started = snap.probe_started_at if snap.probe_started_at is not None else now
        if event.ok and snap.state is State.HEALTHY:
            # The common case at rest, in one copy of the snapshot: a healthy model answered again.
            return Step(
                replace(
                    snap,
                    probe_in_flight=False,
                    next_probe_at=max(now, started + interval),
                    last_probe_at=now,
                    health_message=None,
                    consecutive_failures=0,
                )
            )
        snap = replace(
            snap,
            probe_in_flight=False,
            next_probe_at=max(now, started + interval),
            last_probe_at=now,
            health_message=message,
        )
        if event.ok:
            # edge: starting/unhealthy -> healthy
            snap = replace(
                snap,
                state=State.HEALTHY,
                healthy_since=now,
                unhealthy_since=None,
                startup_deadline=None,
                consecutive_failures=0,
                failure_cause=None,
                free_retries=0,
                next_probe_at=now + s.health_check_interval,
            )
            return Step(snap, (Record(EventKind.HEALTHY, State.HEALTHY),))
        if snap.state is State.STARTING:
            # Still loading: failures before the first success never count (docs/design/defects.md #2).
            return Step(snap)
        failures = snap.consecutive_failures + 1
        snap = replace(snap, consecutive_failures=failures)
        failed = Record(EventKind.PROBE_FAILED, snap.state, event.message)
        if snap.state is State.UNHEALTHY or failures < s.health_failure_threshold:
            return Step(snap, (failed,))
        # edge: healthy -> unhealthy, then -> stopping when the policy restarts it
        snap = replace(snap, state=State.UNHEALTHY, unhealthy_since=now)
        unhealthy = Record(EventKind.UNHEALTHY, State.UNHEALTHY, f"{failures} consecutive probe failures")
        if not wants_restart(s.restart_policy, clean=False):
            return Step(snap, (failed, unhealthy))
        snap = replace(snap, failure_cause=explained(snap, Cause.UNHEALTHY))
        return teardown_step(self.settings, snap, now, Teardown.FAILURE, first=(failed, unhealthy))

    @staticmethod
    def _expect_pending_spawn(snap: Snapshot, run: int) -> None:
        if snap.state is not State.STARTING or snap.run != run or snap.live:
            raise IllegalEvent(f"spawn result for run {run} in state {snap.state} (run {snap.run})")
