"""The steps that several transitions of the machine share (start a run, tear one down, kill one, begin a
fresh budget, name a failure's cause) and the handling of what is learnt about a serving run (a stall, a
finding in its output). Pure, like the machine."""

from __future__ import annotations

from dataclasses import replace

from supervisor.core.machine_types import (
    FREE_RETRY_LIMIT,
    LIVE,
    Action,
    Desired,
    Diagnosed,
    Kill,
    MemorySampled,
    Record,
    Settings,
    Snapshot,
    Spawn,
    Stalled,
    Step,
    Teardown,
    Terminate,
)
from supervisor.core.policy import wants_restart
from supervisor.core.states import Cause, EventKind, State


def spawn_step(
    settings: Settings, snap: Snapshot, now: float, *, reason: str | None, first: tuple[Action, ...] = ()
) -> Step:
    """Start the next run, or wait in backoff (delay 0) while the last run's processes are being reaped."""
    if snap.group_alive:
        # The last run's processes are still being reaped; start as soon as they are gone.
        snap = replace(snap, state=State.BACKOFF, restart_at=now, restart_reason=reason)
        return Step(snap, (*first, Record(EventKind.BACKOFF, State.BACKOFF, "0", reason)))
    s = settings
    run = snap.run + 1
    snap = replace(
        snap,
        state=State.STARTING,
        run=run,
        live=False,
        spawned_at=now,
        healthy_since=None,
        unhealthy_since=None,
        last_restart_at=now if reason is not None else snap.last_restart_at,
        consecutive_failures=0,
        probe_in_flight=False,
        next_probe_at=now + s.startup_probe_interval if s.has_probe else None,
        startup_deadline=now + s.startup_timeout if s.has_probe else None,
        kill_at=None,
        restart_at=None,
        restart_reason=reason,
        teardown=None,
        health_message=None,
        run_cause=None,
        has_cuda_oom=False,
        last_exit=None,
    )
    return Step(snap, (*first, Spawn(run, reason)))


def teardown_step(
    settings: Settings,
    snap: Snapshot,
    now: float,
    why: Teardown,
    *,
    force: bool = False,
    first: tuple[Action, ...] = (),
) -> Step:
    """Stop the live run: SIGTERM to its group (SIGKILL after stop_timeout), or SIGKILL at once when forced.

    A run still loading has nothing to drain, and vLLM ignores SIGTERM while it loads: it gets
    startup_stop_timeout, when that is the shorter."""
    loading = snap.state is State.STARTING
    grace = min(settings.startup_stop_timeout, settings.stop_timeout) if loading else settings.stop_timeout
    snap = replace(
        snap,
        state=State.STOPPING,
        teardown=why,
        next_probe_at=None,
        startup_deadline=None,
        probe_in_flight=False,
        kill_at=None if force else now + grace,
    )
    stopping = Record(EventKind.STOPPING, State.STOPPING, why.value)
    return Step(snap, (*first, stopping, *(kill_actions(snap.run, "forced") if force else (Terminate(snap.run),))))


def kill_actions(run: int, why: str) -> tuple[Action, Action]:
    """SIGKILL to the whole group of `run`, and its timeline entry."""
    return Kill(run), Record(EventKind.KILLED, State.STOPPING, why)


def fresh_budget(snap: Snapshot) -> Snapshot:
    return replace(snap, restart_times=(), attempt=0, restart_count=0, free_retries=0)


def retry_step(settings: Settings, snap: Snapshot, now: float, cause: Cause, *, detail: str, why: str) -> Step | None:
    """A failed run whose cause the owner removed restarts at once, spending no budget; None when the policy,
    the operator's stop or FREE_RETRY_LIMIT says otherwise (the normal failure path then applies)."""
    wanted = snap.desired is Desired.RUNNING and wants_restart(settings.restart_policy, clean=False)
    if not wanted or snap.free_retries >= FREE_RETRY_LIMIT:
        return None
    snap = replace(
        snap,
        failure_cause=cause,
        free_retries=snap.free_retries + 1,
        healthy_since=None,
        unhealthy_since=None,
        startup_deadline=None,
        consecutive_failures=0,
        teardown=None,
    )
    # edge: -> backoff (delay 0, uncounted) until the old group is gone, then -> starting
    exited = Record(EventKind.EXITED, State.BACKOFF, f"{detail}; restarting at once: {why}", cause.value)
    snap = replace(snap, state=State.BACKOFF, restart_at=now, restart_reason=cause.value)
    return Step(snap, (exited, Kill(snap.run), Record(EventKind.BACKOFF, State.BACKOFF, "0", cause.value)))


def explained(snap: Snapshot, symptom: Cause) -> Cause:
    """The run's own output names the cause better than the symptom seen from outside (a dead engine turns
    probes to 503 before the process exits); a bare crash finding does not."""
    return snap.run_cause if snap.run_cause not in (None, Cause.CRASH) else symptom


# Teardowns someone asked for; a failure's teardown (unhealthy, start-up timeout, stall) is not one.
ASKED_TO_STOP = frozenset({Teardown.STOP, Teardown.RESTART, Teardown.SHUTDOWN})


def stalled_step(settings: Settings, snap: Snapshot, event: Stalled, now: float) -> Step:
    """Requests to the run made no progress while it served: unhealthy, cause stalled, restart per policy."""
    if event.run != snap.run or snap.state not in (State.HEALTHY, State.UNHEALTHY) or not snap.live:
        return Step(snap)  # a run that has ended, or one not yet serving, has no requests to stall
    # edge: healthy/unhealthy -> unhealthy (stalled), then -> stopping when the policy restarts it
    snap = replace(snap, state=State.UNHEALTHY, unhealthy_since=snap.unhealthy_since or now)
    unhealthy = Record(EventKind.UNHEALTHY, State.UNHEALTHY, event.detail, Cause.STALLED.value)
    if not wants_restart(settings.restart_policy, clean=False):
        return Step(snap, (unhealthy,))
    snap = replace(snap, failure_cause=explained(snap, Cause.STALLED))
    return teardown_step(settings, snap, now, Teardown.FAILURE, first=(unhealthy,))


def diagnosed_step(snap: Snapshot, event: Diagnosed) -> Step:
    """A finding in the run's output: it names the run's cause; a CUDA OOM is recorded as such once."""
    if event.run != snap.run:
        return Step(snap)  # a late line of an earlier run says nothing about this one
    if snap.state is State.STOPPING and snap.teardown in ASKED_TO_STOP:
        # vLLM prints EngineDeadError while it obeys a stop: what a run says as it is told to stop is
        # no finding about it.
        return Step(snap)
    newly_oom = event.has_cuda_oom and not snap.has_cuda_oom
    snap = replace(snap, run_cause=event.cause, has_cuda_oom=snap.has_cuda_oom or event.has_cuda_oom)
    kind = EventKind.OOM_DETECTED if newly_oom else EventKind.DIAGNOSED
    return Step(snap, (Record(kind, snap.state, event.finding, event.cause.value),))


def memory_step(settings: Settings, snap: Snapshot, event: MemorySampled, now: float) -> Step:
    """A memory sample of the live run: over max_memory or max_gpu_memory, the run is torn down as a failure
    with cause memory_limit (restarted per policy and budget, like PM2's max_memory_restart); else nothing."""
    if event.run != snap.run or not snap.live or snap.state not in LIVE:
        return Step(snap)  # a sample of a run that has ended, or one already being stopped
    over = []
    if settings.max_memory is not None and event.rss > settings.max_memory:
        over.append(f"resident memory {mib(event.rss)} over max_memory {mib(settings.max_memory)}")
    if settings.max_gpu_memory is not None and event.gpu is not None and event.gpu > settings.max_gpu_memory:
        over.append(f"GPU memory {mib(event.gpu)} over max_gpu_memory {mib(settings.max_gpu_memory)}")
    if not over:
        return Step(snap)
    # edge: starting/healthy/unhealthy -> stopping; the limit, not the output, is why this run ends
    snap = replace(snap, failure_cause=Cause.MEMORY_LIMIT)
    record = Record(EventKind.MEMORY_LIMIT, snap.state, "; ".join(over), Cause.MEMORY_LIMIT.value)
    return teardown_step(settings, snap, now, Teardown.FAILURE, first=(record,))


def mib(size: int) -> str:
    """A byte count as operators read it in a timeline entry."""
    return f"{size / (1 << 20):.1f} MiB"
