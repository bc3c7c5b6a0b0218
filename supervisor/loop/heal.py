"""Self-healing on request (POST /api/heal, `llm-supervisor recover`): one recovery pass over the fleet, and
the count of recoveries read from the timeline (GET /api/status).

A pass starts, with a fresh restart budget, each replica that is `failed` with a transient cause (a crash,
a hang, a dead engine, a start-up that timed out: things a new run may not meet again), and stops processes
of this supervisor's runs that are over (leftovers). It never starts a stopped model (an operator's stop, or
a policy that does not restart), and leaves a failure a restart cannot fix (OOM, port in use, memory limit)
to the operator, saying why.

A recovery attempt is the first run spawned after a run of the same replica failed (an `exited` entry with a
cause), whoever started it (the restart policy, heal, an operator); it succeeded when that replica became
healthy before it failed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from supervisor.core.machine_types import StartRequested
from supervisor.core.states import Cause, EventKind, State
from supervisor.core.views import TimelineEvent
from supervisor.loop.model import SupervisedModel
from supervisor.loop.resources import current_runs, find_leftovers
from supervisor.runtime.usage import stop_processes

TRANSIENT = frozenset({Cause.CRASH, Cause.UNHEALTHY, Cause.STALLED, Cause.ENGINE_DEAD, Cause.STARTUP_TIMEOUT})
# SIGTERM to a leftover process, then SIGKILL after this long.
LEFTOVER_STOP_TIMEOUT = 5.0
# How long heal waits for a model's owner to take a start (it answers in milliseconds while it exists).
ANSWER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class HealAction:
    model: str  # the model id, "model/replica" for one replica of several, or "pid N" for a leftover
    action: str  # started | stopped_leftover | none
    reason: str


async def heal(models: Mapping[str, SupervisedModel], instance: str, *, closing: bool) -> list[HealAction]:
    """One recovery pass; what was done (and what was deliberately not) to each model that needed care."""
    if closing:
        return [HealAction("*", "none", "the supervisor is shutting down")]
    actions = []
    for model in list(models.values()):
        for replica in model.replicas:
            name = model.id if len(model.replicas) == 1 else f"{model.id}/{replica.index}"
            snap = replica.owner.snapshot
            if snap.state is State.STOPPED:
                actions.append(HealAction(name, "none", "stopped: heal never starts a stopped model"))
            elif snap.state is State.FAILED and snap.failure_cause in TRANSIENT:
                cause = snap.failure_cause.value
                try:
                    async with asyncio.timeout(ANSWER_TIMEOUT):
                        reply = await replica.owner.request(StartRequested())
                except TimeoutError:  # e.g. a reload removed the model meanwhile: its owner answers no more
                    actions.append(HealAction(name, "none", f"no answer within {ANSWER_TIMEOUT:g} s"))
                    continue
                reason = f"failed ({cause}): started with a fresh restart budget" if reply.accepted else reply.message
                actions.append(HealAction(name, "started" if reply.accepted else "none", reason))
            elif snap.state is State.FAILED:
                cause = snap.failure_cause.value if snap.failure_cause else "unknown"
                why = f"failed ({cause}): a restart does not fix this cause; see failure_advice"
                actions.append(HealAction(name, "none", why))
    current = current_runs(models)
    leftovers = await asyncio.to_thread(find_leftovers, instance, current)
    if leftovers:
        pids = [p.pid for p in leftovers]
        stopped = set(await asyncio.to_thread(stop_processes, instance, pids, LEFTOVER_STOP_TIMEOUT))
        for proc in leftovers:
            if proc.pid in stopped:
                reason = f"left behind by run {proc.run} of {proc.unit} ({proc.name})"
                actions.append(HealAction(f"pid {proc.pid}", "stopped_leftover", reason))
    return actions


@dataclass(frozen=True, slots=True)
class Recoveries:
    attempted: int
    succeeded: int

    @property
    def success_rate(self) -> float | None:
        """succeeded / attempted; None before the first attempt."""
        return None if self.attempted == 0 else self.succeeded / self.attempted


def count_recoveries(events: Iterable[TimelineEvent]) -> Recoveries:
    """Recovery attempts and successes in a timeline (any models, oldest first)."""
    failed: set[tuple[str, int]] = set()  # replicas whose last run failed, not yet spawned again
    trying: set[tuple[str, int]] = set()  # replicas in a recovery attempt, not yet healthy
    attempted = succeeded = 0
    for event in events:
        key = (event.model_id, event.replica)
        if event.kind == EventKind.EXITED and event.reason is not None:
            failed.add(key)
            trying.discard(key)
        elif event.kind == EventKind.SPAWNED and key in failed:
            failed.discard(key)
            trying.add(key)
            attempted += 1
        elif event.kind == EventKind.HEALTHY and key in trying:
            trying.discard(key)
            succeeded += 1
    return Recoveries(attempted, succeeded)


def restarts_total(events: Iterable[TimelineEvent]) -> int:
    """Runs spawned to replace an earlier one (the sum of llm_supervisor_restarts_total over its reasons)."""
    return sum(1 for e in events if e.kind == EventKind.SPAWNED and e.reason is not None)
