"""The per-model state machine, driven event by event with explicit `now` values (a virtual clock).

Every delay is asserted exactly. Regression tests for an item of docs/design/defects.md carry its number in their name.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from supervisor.core.machine import Machine
from supervisor.core.machine_types import (
    Action,
    Boot,
    Desired,
    Diagnosed,
    Event,
    Exited,
    GroupGone,
    IllegalEvent,
    Kill,
    Probe,
    ProbeDone,
    Record,
    RestartRequested,
    Settings,
    ShutdownRequested,
    Snapshot,
    Spawn,
    Spawned,
    SpawnFailed,
    StartRequested,
    Step,
    StopRequested,
    Teardown,
    Terminate,
    Tick,
    next_deadline,
)
from supervisor.core.policy import Backoff, Budget, RestartPolicy
from supervisor.core.states import Cause, EventKind, ExitStatus, State

CRASH = ExitStatus(1)


def make_settings(**overrides: object) -> Settings:
    """The documented defaults (docs/design/contract.md section 2), with overrides."""
    values: dict[str, object] = {
        "restart_policy": RestartPolicy.ON_FAILURE,
        "success_exit_codes": frozenset(),
        "backoff": Backoff(5, 2, 300, 0.0, 600),
        "budget": Budget(3, 600),
        "has_probe": True,
        "startup_timeout": 900,
        "startup_probe_interval": 1,
        "health_check_interval": 10,
        "health_check_timeout": 5,
        "health_failure_threshold": 3,
        "stop_timeout": 30,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Driver:
    """Feeds events to a Machine at given times and keeps the snapshot and every action."""

    machine: Machine
    snap: Snapshot = field(default_factory=Snapshot)
    now: float = 0.0
    actions: list[Action] = field(default_factory=list)
    last: Step | None = None

    def feed(self, event: Event, at: float | None = None) -> Step:
        if at is not None:
            self.now = at
        step = self.machine.handle(self.snap, event, self.now)
        self.snap, self.last = step.snapshot, step
        self.actions.extend(step.actions)
        return step

    def boot(self, at: float = 0.0) -> None:
        """Boot and let the runtime report the spawn."""
        step = self.feed(Boot(), at)
        assert step.actions == (Spawn(1, None),)
        self.feed(Spawned(1, 101))

    def spawned(self) -> None:
        """Report the spawn the last step asked for."""
        assert self.last is not None
        spawn = [a for a in self.last.actions if isinstance(a, Spawn)]
        assert len(spawn) == 1, self.last.actions
        self.feed(Spawned(spawn[0].run, 100 + spawn[0].run))

    def healthy(self, at: float | None = None) -> None:
        """Tick until the start-up probe is due, and answer it with success."""
        due = self.snap.next_probe_at
        assert due is not None
        step = self.feed(Tick(), due if at is None else at)
        assert Probe(self.snap.run, self.machine.settings.health_check_timeout) in step.actions
        self.feed(ProbeDone(self.snap.run, ok=True, message=None))
        assert self.snap.state is State.HEALTHY

    def probe(self, ok: bool, message: str | None = "connection refused") -> Step:
        """Tick at the next probe's due time and answer it."""
        due = self.snap.next_probe_at
        assert due is not None
        step = self.feed(Tick(), due)
        assert any(isinstance(a, Probe) for a in step.actions), step.actions
        return self.feed(ProbeDone(self.snap.run, ok=ok, message=None if ok else message))

    def crash(self, at: float | None = None, status: ExitStatus = CRASH) -> None:
        """The main process exits unrequested and its whole group is gone at the same moment."""
        run = self.snap.run
        self.feed(Exited(run, status), at)
        self.feed(GroupGone(run))

    def respawn(self) -> float:
        """Tick exactly at the scheduled restart; return the delay that was waited."""
        assert self.snap.state is State.BACKOFF
        assert self.snap.restart_at is not None
        decided = self.now
        early = self.machine.handle(self.snap, Tick(), self.snap.restart_at - 1e-6)
        assert not any(isinstance(a, Spawn) for a in early.actions), "spawned before the delay passed"
        self.feed(Tick(), self.snap.restart_at)
        self.spawned()
        return self.now - decided

    def kinds(self) -> list[EventKind]:
        return [a.kind for a in self.actions if isinstance(a, Record)]

    def records(self, kind: EventKind) -> list[Record]:
        return [a for a in self.actions if isinstance(a, Record) and a.kind is kind]

    def spawns(self) -> list[Spawn]:
        return [a for a in self.actions if isinstance(a, Spawn)]


def driver(rng: random.Random | None = None, **overrides: object) -> Driver:
    return Driver(Machine(make_settings(**overrides), rng))


# --- the backoff schedule ---------------------------------------------------------------------------


def test_default_schedule_is_5_10_20_up_to_the_cap() -> None:
    """A crash loop under the defaults waits exactly 5, 10, 20, 40, 80, 160, then 300 s for ever."""
    d = driver(budget=Budget(None, 600))
    d.boot()
    delays = []
    for _ in range(9):
        d.crash(d.now + 1)
        delays.append(d.respawn())
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert [r.detail for r in d.records(EventKind.BACKOFF)] == ["5", "10", "20", "40", "80", "160", "300", "300", "300"]
    assert d.snap.restart_count == 9


def test_jittered_schedule_is_seeded_and_bounded() -> None:
    """With backoff_jitter the delays come from the seeded RNG: reproducible, inside +-jitter of the base."""
    backoff = Backoff(5, 2, 300, jitter=0.2)

    def schedule(seed: int) -> list[float]:
        d = driver(random.Random(seed), backoff=backoff, budget=Budget(None, None))
        d.boot()
        delays = []
        for _ in range(8):
            d.crash(d.now + 1)
            delays.append(d.respawn())
        return delays

    first = schedule(1)
    assert first == schedule(1)
    assert first != schedule(2)
    for attempt, delay in enumerate(first):
        low, high = backoff.bounds(attempt)
        assert low <= delay <= high
    assert any(delay != backoff.base_delay(n) for n, delay in enumerate(first))


@pytest.mark.parametrize(("healthy_for", "third_delay"), [(599.999, 20), (600, 5), (5000, 5)])
def test_backoff_resets_after_backoff_reset_after_healthy_seconds(healthy_for: float, third_delay: float) -> None:
    """A run healthy for backoff_reset_after seconds earns the first delay again (docs/design/defects.md #14)."""
    d = driver(budget=Budget(None, None))
    d.boot()
    d.healthy()
    d.crash(d.now + 1)
    assert d.respawn() == 5
    d.healthy()
    d.crash(d.now + 1)
    assert d.respawn() == 10
    d.healthy()
    d.crash(d.now + healthy_for)
    assert d.respawn() == third_delay


def test_prior_art_14_backoff_resets_without_an_endpoint() -> None:
    """Without probes a running process counts as healthy from its spawn, so the reset applies too."""
    d = driver(has_probe=False, budget=Budget(None, None))
    d.boot()
    for expected in (5, 10, 20):
        d.crash(d.now + 1)
        assert d.respawn() == expected
    d.crash(d.now + 600)
    assert d.respawn() == 5


# --- the restart budget -----------------------------------------------------------------------------


def test_budget_exhausted_leaves_the_model_failed() -> None:
    """max_restarts 3 within 600 s: three restarts, then the fourth crash makes the model failed."""
    d = driver()
    d.boot()
    for _ in range(3):
        d.crash(d.now + 1)
        d.respawn()
    d.crash(d.now + 1)
    assert d.snap.state is State.FAILED
    assert d.snap.restart_count == 3
    [failed] = d.records(EventKind.FAILED)
    assert failed.detail == "restart limit reached: 3 restarts within 600s"
    assert failed.reason == "crash"
    assert d.feed(Tick(), d.now + 10**6).actions == ()
    assert len(d.spawns()) == 4


@pytest.mark.parametrize(("third_crash_at", "state"), [(100.999, State.FAILED), (101.0, State.BACKOFF)])
def test_restarts_older_than_the_window_stop_counting(third_crash_at: float, state: State) -> None:
    """With max_restarts 2 in 100 s, a restart exactly 100 s old no longer counts against the budget."""
    d = driver(has_probe=False, backoff=Backoff(1, 1, 300), budget=Budget(2, 100))
    d.boot()
    d.crash(1.0)  # restart decided at 1
    d.respawn()
    d.crash(3.0)  # restart decided at 3
    d.respawn()
    d.crash(third_crash_at)
    assert d.snap.state is state


def test_null_window_counts_the_whole_life() -> None:
    """restart_window null: restarts a day apart still exhaust max_restarts (FluidMCP's semantics)."""
    d = driver(has_probe=False, budget=Budget(2, None))
    d.boot()
    for _ in range(2):
        d.crash(d.now + 86_400)
        d.respawn()
    d.crash(d.now + 86_400)
    assert d.snap.state is State.FAILED
    assert d.records(EventKind.FAILED)[0].detail == "restart limit reached: 2 restarts within its lifetime"


def test_null_max_restarts_is_unlimited() -> None:
    """max_restarts null: a crash loop is restarted for ever, never failed (docs/design/defects.md #13)."""
    d = driver(has_probe=False, backoff=Backoff(1, 1, 1), budget=Budget(None, 600))
    d.boot()
    for _ in range(200):
        d.crash(d.now + 0.01)
        d.respawn()
    assert d.snap.state is State.HEALTHY
    assert (d.snap.run, d.snap.restart_count) == (201, 200)


def _exit_code_1(d: Driver) -> None:
    d.crash(d.now + 1)


def _spawn_failure(d: Driver) -> None:
    d.feed(StopRequested(), d.now + 1)
    d.feed(Exited(d.snap.run, ExitStatus(None, 15)))
    d.feed(GroupGone(d.snap.run))
    d.feed(StartRequested())
    d.feed(SpawnFailed(d.snap.run, "no such file: vllm"))


def _startup_timeout(d: Driver) -> None:
    d.feed(Tick(), d.snap.spawned_at + 900)  # type: ignore[operator]
    d.feed(Exited(d.snap.run, ExitStatus(None, 15)))
    d.feed(GroupGone(d.snap.run))


def _unhealthy(d: Driver) -> None:
    d.healthy()
    for _ in range(3):
        d.probe(ok=False)
    d.feed(Exited(d.snap.run, ExitStatus(None, 15)))
    d.feed(GroupGone(d.snap.run))


@pytest.mark.parametrize("end", [_exit_code_1, _spawn_failure, _startup_timeout, _unhealthy])
def test_prior_art_13_max_restarts_0_means_never(end: Callable[[Driver], None]) -> None:
    """max_restarts 0 is "never restart": the first failure of any kind leaves the model failed."""
    d = driver(budget=Budget(0, 600))
    d.boot()
    end(d)
    assert d.snap.state is State.FAILED
    assert d.snap.restart_count == 0
    assert d.records(EventKind.BACKOFF) == []
    assert d.records(EventKind.FAILED)[0].detail == "restart limit reached: 0 restarts within 600s"


def test_prior_art_14_start_of_failed_begins_a_fresh_budget() -> None:
    """An operator's start of a failed model resets the budget, the count and the backoff."""
    d = driver(budget=Budget(2, None))
    d.boot()
    for _ in range(2):
        d.crash(d.now + 1)
        d.respawn()
    d.crash(d.now + 1)
    assert d.snap.state is State.FAILED
    assert d.feed(Boot(), d.now + 5).actions == ()  # a supervisor restart does not revive it
    assert d.snap.state is State.FAILED
    step = d.feed(StartRequested(), d.now + 5)
    assert step.reply is not None
    assert step.reply.accepted
    assert d.snap.state is State.STARTING
    assert (d.snap.restart_count, d.snap.restart_times, d.snap.attempt) == (0, (), 0)
    d.spawned()
    d.crash(d.now + 1)
    assert d.respawn() == 5  # the schedule starts over
    d.crash(d.now + 1)
    assert d.respawn() == 10
    d.crash(d.now + 1)
    assert d.snap.state is State.FAILED


def test_restart_of_failed_also_begins_a_fresh_budget() -> None:
    """An operator's restart of a failed model is a fresh start too."""
    d = driver(budget=Budget(0, None))
    d.boot()
    d.crash(1)
    assert d.snap.state is State.FAILED
    step = d.feed(RestartRequested(), 2)
    assert step.actions[-1] == Spawn(2, "manual")
    assert step.reply is not None
    assert step.reply.message == "restarting"
    assert d.snap.restart_times == ()


# --- every restart policy against every exit kind ---------------------------------------------------


def _exit(code: int | None, signal: int | None = None, oom: bool = False) -> Callable[[Driver], None]:
    def end(d: Driver) -> None:
        d.crash(d.now + 1, ExitStatus(code, signal, oom))

    return end


EXIT_KINDS: dict[str, tuple[Callable[[Driver], None], frozenset[int], bool, Cause | None]] = {
    # name: (how the run ends, success_exit_codes, clean, failure_cause)
    "exit 1": (_exit(1), frozenset(), False, Cause.CRASH),
    "exit 0, no success codes": (_exit(0), frozenset(), False, Cause.CRASH),
    "exit 0 in success codes": (_exit(0), frozenset({0}), True, None),
    "exit 3 in success codes": (_exit(3), frozenset({0, 3}), True, None),
    "exit 1 not in success codes": (_exit(1), frozenset({0, 3}), False, Cause.CRASH),
    "SIGKILL": (_exit(None, 9), frozenset({0}), False, Cause.CRASH),
    "SIGSEGV": (_exit(None, 11), frozenset({0}), False, Cause.CRASH),
    "oom-killed": (_exit(137, None, oom=True), frozenset(), False, Cause.OOM),
    "spawn failure": (_spawn_failure, frozenset(), False, Cause.CRASH),
    "startup timeout": (_startup_timeout, frozenset(), False, Cause.STARTUP_TIMEOUT),
}

POLICY_RESTARTS = {
    RestartPolicy.NO: lambda clean: False,
    RestartPolicy.ON_FAILURE: lambda clean: not clean,
    RestartPolicy.ALWAYS: lambda clean: True,
    RestartPolicy.UNLESS_STOPPED: lambda clean: True,
}


@pytest.mark.parametrize("policy", list(RestartPolicy))
@pytest.mark.parametrize("kind", list(EXIT_KINDS))
def test_every_policy_against_every_exit_kind(policy: RestartPolicy, kind: str) -> None:
    """Each policy restarts (into backoff) or stops after each kind of unrequested end, with its cause."""
    end, codes, clean, cause = EXIT_KINDS[kind]
    d = driver(restart_policy=policy, success_exit_codes=codes)
    d.boot()
    end(d)
    assert d.snap.failure_cause == cause
    if POLICY_RESTARTS[policy](clean):
        assert d.snap.state is State.BACKOFF
        assert d.snap.restart_count == 1
        assert d.snap.restart_reason == ("exit" if clean else cause)
        assert d.respawn() == 5
    else:
        assert d.snap.state is State.STOPPED
        assert d.snap.desired is Desired.STOPPED
        assert d.snap.restart_count == 0
        assert d.feed(Tick(), d.now + 10**6).actions == ()


@pytest.mark.parametrize("policy", list(RestartPolicy))
def test_every_policy_against_an_unhealthy_run(policy: RestartPolicy) -> None:
    """health_failure_threshold failures make the run unhealthy; every policy but `no` stops and restarts it."""
    d = driver(restart_policy=policy)
    d.boot()
    d.healthy()
    for _ in range(3):
        d.probe(ok=False)
    assert d.records(EventKind.UNHEALTHY)[0].detail == "3 consecutive probe failures"
    if policy is RestartPolicy.NO:
        assert d.snap.state is State.UNHEALTHY  # left running, for the operator to look at
        assert not any(isinstance(a, Terminate | Kill) for a in d.actions)
        d.probe(ok=True)
        assert d.snap.state is State.HEALTHY
        return
    assert d.snap.state is State.STOPPING
    assert d.snap.failure_cause is Cause.UNHEALTHY
    assert d.actions[-1] == Terminate(1)
    d.feed(Exited(1, ExitStatus(None, 15)), d.now + 2)
    assert d.snap.state is State.STOPPING  # the run is over only when its group is gone
    d.feed(GroupGone(1))
    assert d.snap.state is State.BACKOFF
    assert d.snap.restart_reason == "unhealthy"
    assert d.respawn() == 5


def test_prior_art_4_exit_0_is_restarted_under_on_failure() -> None:
    """vLLM exits 0 after its engine dies; with empty success_exit_codes that is a failure and restarts."""
    d = driver()
    d.boot()
    d.healthy()
    d.crash(d.now + 30, ExitStatus(0))
    assert d.snap.state is State.BACKOFF
    assert d.records(EventKind.EXITED)[-1].detail == "exit code 0"
    assert d.records(EventKind.EXITED)[-1].reason == "crash"
    d.respawn()
    assert d.spawns()[-1] == Spawn(2, "crash")


def test_clean_exit_under_always_restarts_with_reason_exit() -> None:
    """Under `always`, even a clean exit is restarted, counted, and recorded as reason "exit"."""
    d = driver(restart_policy=RestartPolicy.ALWAYS, success_exit_codes=frozenset({0}))
    d.boot()
    d.crash(1, ExitStatus(0))
    assert d.records(EventKind.EXITED)[-1].reason is None
    assert d.snap.failure_cause is None
    d.respawn()
    assert d.spawns()[-1] == Spawn(2, "exit")


def test_prior_art_3_instant_crash_is_counted() -> None:
    """A process that dies the moment it starts is counted like any other crash, up to the budget."""
    d = driver(budget=Budget(2, 600))
    d.boot()
    d.crash(d.now)  # dies in the same instant it was spawned
    assert d.snap.restart_count == 1
    d.respawn()
    d.crash(d.now)
    d.respawn()
    d.crash(d.now)
    assert d.snap.state is State.FAILED
    assert len(d.spawns()) == 3


def test_prior_art_3_spawn_failure_is_counted() -> None:
    """A command that cannot even be started is a crash, counted and retried on the schedule until failed."""
    d = driver(budget=Budget(2, 600))
    d.feed(Boot(), 0)
    delays = []
    for _ in range(2):
        d.feed(SpawnFailed(d.snap.run, "no such file: vllm"))
        assert d.snap.state is State.BACKOFF
        decided = d.now
        d.feed(Tick(), d.snap.restart_at)
        delays.append(d.now - decided)
    d.feed(SpawnFailed(d.snap.run, "no such file: vllm"))
    assert delays == [5, 10]
    assert d.snap.state is State.FAILED
    assert d.records(EventKind.EXITED)[0].detail == "spawn failed: no such file: vllm"
    assert not d.snap.live
    assert not d.snap.group_alive


def test_exit_cause_comes_from_the_diagnosis() -> None:
    """A run whose output was diagnosed (port in use) fails with that cause, not a bare crash."""
    d = driver()
    d.boot()
    d.feed(Diagnosed(1, Cause.PORT_IN_USE, "port_in_use", has_cuda_oom=False), 0.5)
    d.crash(1)
    assert d.snap.failure_cause is Cause.PORT_IN_USE
    assert d.snap.restart_reason == "port_in_use"
    assert d.records(EventKind.EXITED)[-1].reason == "port_in_use"


def test_crash_reaps_the_orphaned_group() -> None:
    """When the main process dies by itself, the rest of its group is killed at once (docs/design/defects.md #5)."""
    d = driver()
    d.boot()
    step = d.feed(Exited(1, CRASH), 3)
    assert Kill(1) in step.actions
    assert step.actions.index(Kill(1)) < len(step.actions) - 1  # reaped before the backoff is recorded


# --- start-up and probes ----------------------------------------------------------------------------


def test_prior_art_2_slow_start_is_not_killed_before_startup_timeout() -> None:
    """A model that fails every start-up probe for 899 s is neither killed nor charged, then turns healthy."""
    d = driver()
    d.boot()
    for second in range(1, 899):
        step = d.probe(ok=False)
        assert d.now == second
        assert d.snap.state is State.STARTING
        assert d.snap.consecutive_failures == 0
        assert EventKind.PROBE_FAILED not in [a.kind for a in step.actions if isinstance(a, Record)]
    assert not any(isinstance(a, Terminate | Kill) for a in d.actions)
    assert d.feed(Tick(), 899).actions == (Probe(1, 5),)
    d.feed(ProbeDone(1, ok=True, message=None), 899.5)
    assert d.snap.state is State.HEALTHY
    assert d.snap.healthy_since == 899.5
    assert d.snap.startup_deadline is None


def test_startup_timeout_stops_the_run_and_restarts_it() -> None:
    """Not healthy within startup_timeout: SIGTERM to the group, then a counted restart once it is gone."""
    d = driver(startup_timeout=30)
    d.boot()
    early = d.machine.handle(d.snap, Tick(), 29.999)
    assert early.snapshot.state is State.STARTING
    step = d.feed(Tick(), 30)
    assert d.snap.state is State.STOPPING
    assert d.snap.failure_cause is Cause.STARTUP_TIMEOUT
    assert [a.kind for a in step.actions if isinstance(a, Record)] == [EventKind.STARTUP_TIMEOUT, EventKind.STOPPING]
    assert step.actions[-1] == Terminate(1)
    assert d.records(EventKind.STARTUP_TIMEOUT)[0].detail == "not healthy within 30s"
    d.feed(Exited(1, ExitStatus(None, 15)), 31)
    d.feed(GroupGone(1))
    assert d.snap.state is State.BACKOFF
    assert d.snap.restart_reason == "startup_timeout"
    assert d.snap.restart_count == 1


def test_startup_probes_run_every_startup_probe_interval() -> None:
    """Start-up probes are due startup_probe_interval after spawn and after each answer."""
    d = driver(startup_probe_interval=2.5)
    d.boot(at=100)
    assert d.snap.next_probe_at == 102.5
    assert d.feed(Tick(), 102.4).actions == ()
    assert d.feed(Tick(), 102.5).actions == (Probe(1, 5),)
    d.feed(ProbeDone(1, ok=False, message="refused"), 102.6)
    assert d.snap.next_probe_at == 105.0
    assert d.snap.health_message == "refused"


@pytest.mark.parametrize("interval", [2.5, 7, 10, 60])
def test_prior_art_13_health_check_interval_sets_the_probe_schedule(interval: float) -> None:
    """Once healthy, liveness probes run every health_check_interval, with health_check_timeout."""
    d = driver(health_check_interval=interval, health_check_timeout=1.5)
    d.boot()
    d.healthy()
    became = d.now
    times = []
    for _ in range(4):
        assert d.feed(Tick(), d.snap.next_probe_at - 0.001).actions == ()  # type: ignore[operator]
        step = d.probe(ok=True)
        assert Probe(1, 1.5) in d.actions
        times.append(d.now)
        assert step.actions == ()
    assert times == [became + interval * k for k in range(1, 5)]


def test_slow_probe_is_followed_by_the_next_at_once() -> None:
    """A probe that took longer than the interval is followed right away, never scheduled in the past."""
    d = driver(health_check_interval=10)
    d.boot()
    d.healthy()
    d.feed(Tick(), d.snap.next_probe_at)
    started = d.now
    d.feed(ProbeDone(1, ok=True, message=None), started + 3)
    assert d.snap.next_probe_at == started + 10
    d.feed(Tick(), d.snap.next_probe_at)
    d.feed(ProbeDone(1, ok=True, message=None), d.now + 12)
    assert d.snap.next_probe_at == d.now


def test_threshold_consecutive_failures_make_the_model_unhealthy() -> None:
    """Two failures are tolerated, a success forgives them, and the third in a row makes it unhealthy."""
    d = driver()
    d.boot()
    d.healthy()
    d.probe(ok=False)
    d.probe(ok=False)
    assert (d.snap.state, d.snap.consecutive_failures) == (State.HEALTHY, 2)
    d.probe(ok=True)
    assert d.snap.consecutive_failures == 0
    d.probe(ok=False)
    d.probe(ok=False)
    assert d.snap.state is State.HEALTHY
    step = d.probe(ok=False, message="timed out")
    assert d.snap.state is State.STOPPING
    kinds = [a.kind for a in step.actions if isinstance(a, Record)]
    assert kinds == [EventKind.PROBE_FAILED, EventKind.UNHEALTHY, EventKind.STOPPING]
    assert d.records(EventKind.PROBE_FAILED)[-1].detail == "timed out"
    assert len(d.records(EventKind.PROBE_FAILED)) == 5


def test_threshold_one_fails_on_the_first_probe() -> None:
    """health_failure_threshold 1: one failed liveness probe is enough."""
    d = driver(health_failure_threshold=1)
    d.boot()
    d.healthy()
    d.probe(ok=False)
    assert d.snap.state is State.STOPPING


def test_unhealthy_under_no_keeps_counting_and_recovers() -> None:
    """Under `no` an unhealthy run keeps being probed, failures add up, and a success makes it healthy."""
    d = driver(restart_policy=RestartPolicy.NO)
    d.boot()
    d.healthy()
    for _ in range(5):
        d.probe(ok=False)
    assert (d.snap.state, d.snap.consecutive_failures) == (State.UNHEALTHY, 5)
    assert len(d.records(EventKind.UNHEALTHY)) == 1
    d.probe(ok=True)
    assert (d.snap.state, d.snap.consecutive_failures) == (State.HEALTHY, 0)
    assert d.snap.failure_cause is None


def test_manual_probe_is_reported_never_counted() -> None:
    """An operator's one-off health check updates the message and time, never the failure counter."""
    d = driver()
    d.boot()
    d.healthy()
    for _ in range(5):
        step = d.feed(ProbeDone(1, ok=False, message="503", manual=True), d.now + 1)
        assert step.actions == ()
        assert d.snap.last_probe_at == d.now
        assert d.snap.health_message == "503"
    assert (d.snap.state, d.snap.consecutive_failures) == (State.HEALTHY, 0)
    d.feed(ProbeDone(1, ok=True, message=None, manual=True), d.now + 1)
    assert d.snap.health_message is None


def test_probe_results_of_a_finished_run_are_ignored() -> None:
    """A probe answer that arrives after its run ended (or for an older run) changes nothing."""
    d = driver()
    d.boot()
    d.healthy()
    d.feed(Tick(), d.snap.next_probe_at)  # a probe is in flight when the run crashes
    d.crash(d.now + 1)
    before = d.snap
    assert d.feed(ProbeDone(1, ok=False, message="refused")) == Step(before)
    d.respawn()
    before = d.snap
    assert d.feed(ProbeDone(1, ok=True, message=None)) == Step(before)
    assert d.feed(ProbeDone(2, ok=True, message=None)) == Step(before)  # none in flight for run 2


def test_without_an_endpoint_a_live_process_is_healthy() -> None:
    """No base_url: the model is healthy as soon as it runs, and nothing is ever probed or timed."""
    d = driver(has_probe=False)
    d.feed(Boot(), 0)
    step = d.feed(Spawned(1, 4242), 0.1)
    assert d.snap.state is State.HEALTHY
    assert [a.kind for a in step.actions if isinstance(a, Record)] == [EventKind.SPAWNED, EventKind.HEALTHY]
    assert step.actions[0] == Record(EventKind.SPAWNED, State.STARTING, "run 1 pid 4242", None)
    assert next_deadline(d.snap) is None
    assert d.feed(Tick(), 10**6).actions == ()


# --- operator requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(RestartPolicy))
@pytest.mark.parametrize("force", [False, True])
def test_prior_art_9_stop_sticks_and_is_not_a_crash(policy: RestartPolicy, force: bool) -> None:
    """After an operator's stop (forced or not) no policy restarts the model, and nothing is counted."""
    d = driver(restart_policy=policy)
    d.boot()
    d.healthy()
    step = d.feed(StopRequested(force=force), 50)
    assert step.reply is not None
    assert step.reply.accepted
    assert d.snap.state is State.STOPPING
    assert (Kill(1) if force else Terminate(1)) in step.actions
    d.feed(Exited(1, ExitStatus(None, 9 if force else 15)), 50.5)
    d.feed(GroupGone(1))
    assert d.snap.state is State.STOPPED
    assert d.snap.desired is Desired.STOPPED
    assert (d.snap.restart_count, d.snap.restart_times, d.snap.failure_cause) == (0, (), None)
    assert d.feed(Tick(), 10**6).actions == ()
    assert len(d.spawns()) == 1
    assert EventKind.FAILED not in d.kinds()
    assert EventKind.BACKOFF not in d.kinds()


def test_stop_escalates_to_sigkill_after_stop_timeout() -> None:
    """SIGTERM first; if a serving run's group is still there stop_timeout later, SIGKILL to the whole group."""
    d = driver(stop_timeout=30)
    d.boot()
    d.healthy(at=5)
    d.feed(StopRequested(), 10)
    assert d.snap.kill_at == 40
    assert next_deadline(d.snap) == 40
    assert d.feed(Tick(), 39.999).actions == ()
    step = d.feed(Tick(), 40)
    assert step.actions == (Kill(1), Record(EventKind.KILLED, State.STOPPING, "stop_timeout passed"))
    assert d.snap.kill_at is None
    d.feed(Exited(1, ExitStatus(None, 9)), 40.1)
    assert d.snap.state is State.STOPPING
    d.feed(GroupGone(1), 40.2)
    assert d.snap.state is State.STOPPED


@pytest.mark.parametrize("event", [StopRequested(), ShutdownRequested(), RestartRequested(requested_at=9)])
def test_a_stop_while_loading_escalates_after_startup_stop_timeout(event: Event) -> None:
    """A loading run has nothing to drain and vLLM ignores SIGTERM while it loads: SIGKILL after
    startup_stop_timeout (5 s by default), not the full stop_timeout."""
    d = driver(stop_timeout=30)
    d.boot()
    d.feed(event, 10)
    assert d.snap.kill_at == 15
    assert d.feed(Tick(), 14.999).actions == ()
    step = d.feed(Tick(), 15)
    assert step.actions == (Kill(1), Record(EventKind.KILLED, State.STOPPING, "startup_stop_timeout passed"))


def test_a_start_up_timeout_also_kills_after_startup_stop_timeout() -> None:
    """A server that never became healthy is stopped at startup_timeout and killed startup_stop_timeout later."""
    d = driver(startup_timeout=60, stop_timeout=30, startup_stop_timeout=2)
    d.boot()
    d.feed(Tick(), 60)
    assert (d.snap.state, d.snap.kill_at) == (State.STOPPING, 62)


def test_stop_during_backoff_cancels_the_restart() -> None:
    """A stop while a restart is scheduled cancels it, even under `always`."""
    d = driver(restart_policy=RestartPolicy.ALWAYS)
    d.boot()
    d.crash(1)
    step = d.feed(StopRequested(), 2)
    assert d.snap.state is State.STOPPED
    assert d.snap.restart_at is None
    assert step.reply is not None
    assert step.reply.message == "stopped"
    assert d.feed(Tick(), 100).actions == ()


def test_stop_of_failed_makes_it_stopped() -> None:
    """Stopping a failed model records that it is now simply stopped."""
    d = driver(budget=Budget(0, 600))
    d.boot()
    d.crash(1)
    d.feed(StopRequested(), 2)
    assert d.snap.state is State.STOPPED
    assert d.kinds()[-2:] == [EventKind.STOP_REQUESTED, EventKind.STOPPED]


def test_stop_of_stopped_is_a_no_op() -> None:
    """A stop of a stopped model is accepted and changes nothing but the desired state."""
    d = driver()
    step = d.feed(StopRequested(), 0)
    assert step.reply is not None
    assert step.reply.message == "already stopped"
    assert step.actions == ()
    assert d.snap.state is State.STOPPED


def test_stop_during_a_restart_teardown_wins() -> None:
    """Stop while an operator restart is tearing the run down: it ends stopped, not restarted."""
    d = driver()
    d.boot()
    d.feed(RestartRequested(), 1)
    d.feed(StopRequested(), 2)
    assert d.snap.teardown is Teardown.STOP
    d.feed(Exited(1, ExitStatus(None, 15)), 3)
    d.feed(GroupGone(1))
    assert d.snap.state is State.STOPPED
    assert len(d.spawns()) == 1


def test_force_stop_while_stopping_kills_now() -> None:
    """A forced stop during a graceful one sends SIGKILL at once and cancels the timed kill."""
    d = driver()
    d.boot()
    d.feed(StopRequested(), 1)
    step = d.feed(StopRequested(force=True), 2)
    assert Kill(1) in step.actions
    assert d.snap.kill_at is None
    assert step.actions[0] == Record(EventKind.STOP_REQUESTED, State.STOPPING, "force")


def test_force_stop_after_the_main_process_exited_kills_the_rest() -> None:
    """Forced stop while only orphans remain: they are killed; once everything is gone, nothing to kill."""
    d = driver()
    d.boot()
    d.feed(StopRequested(), 1)
    d.feed(Exited(1, ExitStatus(None, 15)), 2)
    assert Kill(1) in d.feed(StopRequested(force=True), 3).actions


def test_start_during_a_stop_restarts_once_the_run_is_gone() -> None:
    """Start while stopping: the stop completes, then a new run starts without another request."""
    d = driver()
    d.boot()
    d.feed(StopRequested(), 1)
    step = d.feed(StartRequested(), 2)
    assert step.reply is not None
    assert step.reply.message == "starts once the current run has stopped"
    assert d.snap.desired is Desired.RUNNING
    d.feed(Exited(1, ExitStatus(None, 15)), 3)
    step = d.feed(GroupGone(1))
    assert step.actions[-1] == Spawn(2, "manual")


def test_start_of_a_live_model_changes_nothing() -> None:
    """Starting a model that already runs is accepted and does nothing."""
    d = driver()
    d.boot()
    d.healthy()
    step = d.feed(StartRequested(), d.now + 1)
    assert step.actions == ()
    assert step.reply is not None
    assert step.reply.message == "already healthy"


@pytest.mark.parametrize("request_event", [StartRequested(), RestartRequested()])
def test_request_during_backoff_spawns_now(request_event: Event) -> None:
    """A start or restart while a restart is scheduled spawns at once, keeping the budget."""
    d = driver()
    d.boot()
    d.crash(1)
    assert d.snap.restart_at == 6
    step = d.feed(request_event, 2)
    assert step.actions[-1] == Spawn(2, "manual")
    assert d.snap.state is State.STARTING
    assert d.snap.restart_count == 1
    assert d.snap.last_restart_at == 2


def test_restart_of_a_live_model_waits_for_the_group() -> None:
    """An operator restart stops the run and starts the next once the old group is gone (docs/design/defects.md #5)."""
    d = driver()
    d.boot()
    d.healthy()
    step = d.feed(RestartRequested(), 10)
    assert step.reply is not None
    assert step.reply.message == "restart begun"
    assert step.actions[-1] == Terminate(1)
    d.feed(Exited(1, ExitStatus(None, 15)), 11)
    assert d.feed(Tick(), 12).actions == ()
    step = d.feed(GroupGone(1), 13)
    assert step.actions == (Spawn(2, "manual"),)
    assert d.snap.restart_count == 0  # an operator's restart is not charged to the budget


def test_prior_art_7_concurrent_restarts_coalesce() -> None:
    """Restarts that arrive while one is under way make one new run, not two."""
    d = driver()
    d.boot()
    d.healthy()
    d.feed(RestartRequested(), 10)
    second = d.feed(RestartRequested(), 10)
    assert second.actions == ()
    assert second.reply is not None
    assert second.reply.message == "restart already in progress"
    d.feed(Exited(1, ExitStatus(None, 15)), 11)
    d.feed(GroupGone(1), 11)
    third = d.feed(RestartRequested(), 11)
    assert third.actions == ()
    assert third.reply is not None
    assert third.reply.accepted
    assert d.spawns() == [Spawn(1, None), Spawn(2, "manual")]
    assert [a for a in d.actions if isinstance(a, Terminate)] == [Terminate(1)]


def test_restart_during_a_failure_teardown_becomes_an_operator_restart() -> None:
    """Restart while an unhealthy run is being stopped: next run starts at once, not after a backoff."""
    d = driver()
    d.boot()
    d.healthy()
    for _ in range(3):
        d.probe(ok=False)
    assert d.snap.teardown is Teardown.FAILURE
    step = d.feed(RestartRequested(), d.now)
    assert step.reply is not None
    assert step.reply.message == "restarts once the current run has stopped"
    d.feed(Exited(1, ExitStatus(None, 15)))
    assert d.feed(GroupGone(1)).actions[-1] == Spawn(2, "manual")


@pytest.mark.parametrize(("request_event", "reason"), [(StartRequested(), None), (RestartRequested(), "manual")])
def test_prior_art_5_start_while_the_old_group_lives_waits_for_it(request_event: Event, reason: str | None) -> None:
    """A crashed run's orphans still alive: an operator start is deferred until the group is gone."""
    d = driver(restart_policy=RestartPolicy.NO)
    d.boot()
    d.feed(Exited(1, CRASH), 1)  # group still alive: engine children being reaped
    assert d.snap.state is State.STOPPED
    assert d.snap.group_alive
    step = d.feed(request_event, 2)
    assert not any(isinstance(a, Spawn) for a in step.actions)
    assert d.snap.state is State.BACKOFF
    assert d.feed(Tick(), 3).actions == ()
    step = d.feed(GroupGone(1), 4)
    assert step.actions == (Spawn(2, reason),)
    assert d.snap.state is State.STARTING


def test_prior_art_5_automatic_restart_waits_for_the_old_group() -> None:
    """With restart_delay 0 the next run still waits until every process of the last one is gone."""
    d = driver(backoff=Backoff(0, 2, 300))
    d.boot()
    d.feed(Exited(1, CRASH), 1)
    assert (d.snap.state, d.snap.restart_at) == (State.BACKOFF, 1)
    for later in (1, 2, 50):
        assert d.feed(Tick(), later).actions == ()
    step = d.feed(GroupGone(1), 60)
    assert step.actions == (Spawn(2, "crash"),)


def test_next_deadline_is_never_due_while_only_the_old_group_can_unblock() -> None:
    """In backoff with the old group alive, no Tick can start the run, so no deadline may be due.

    A due deadline that a Tick cannot act on makes the owner loop Tick again at once, forever, without
    yielding to the event loop: the watcher that would report GroupGone never runs (supervisor hangs).
    """
    d = driver(backoff=Backoff(0, 2, 300))
    d.boot()
    d.feed(Exited(1, CRASH), 1)
    tick = d.machine.handle(d.snap, Tick(), 1)
    assert tick == Step(d.snap)  # a Tick changes nothing here ...
    deadline = next_deadline(d.snap)
    assert deadline is None or deadline > 1  # ... so the loop must not be told to Tick now


def test_prior_art_11_new_run_clears_the_cuda_oom_flag() -> None:
    """has_cuda_oom belongs to one run: set by its OOM line, cleared when the next run starts."""
    d = driver()
    d.boot()
    step = d.feed(Diagnosed(1, Cause.OOM, "cuda_oom", has_cuda_oom=True), 2)
    assert step.actions == (Record(EventKind.OOM_DETECTED, State.STARTING, "cuda_oom", "oom"),)
    again = d.feed(Diagnosed(1, Cause.OOM, "cuda_oom", has_cuda_oom=True), 2.1)
    assert again.actions[0].kind is EventKind.DIAGNOSED  # type: ignore[union-attr]
    d.crash(3)
    assert d.snap.failure_cause is Cause.OOM
    assert d.snap.has_cuda_oom
    d.respawn()
    assert not d.snap.has_cuda_oom
    assert d.snap.run_cause is None
    assert d.snap.failure_cause is Cause.OOM  # the last failure is still reported until healthy
    d.healthy()
    assert d.snap.failure_cause is None


def test_late_output_of_an_earlier_run_is_ignored() -> None:
    """A diagnosis that arrives for a run that is no longer the current one changes nothing."""
    d = driver()
    d.boot()
    d.crash(1)
    d.respawn()
    before = d.snap
    assert d.feed(Diagnosed(1, Cause.OOM, "cuda_oom", has_cuda_oom=True)) == Step(before)


# --- boot and shutdown ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(RestartPolicy))
@pytest.mark.parametrize("desired", list(Desired))
def test_boot_follows_the_desired_state(policy: RestartPolicy, desired: Desired) -> None:
    """On supervisor start a model runs if it was wanted running: an operator's stop holds under every policy."""
    d = driver(restart_policy=policy)
    d.snap = Snapshot(desired=desired)
    step = d.feed(Boot(), 0)
    starts = desired is Desired.RUNNING
    assert step.actions == ((Spawn(1, None),) if starts else ())
    assert d.snap.state is (State.STARTING if starts else State.STOPPED)
    if starts:
        assert d.snap.desired is Desired.RUNNING


def test_shutdown_stops_the_run_but_keeps_it_wanted() -> None:
    """Supervisor shutdown stops a live model without recording an operator stop, so a reboot restarts it."""
    d = driver(restart_policy=RestartPolicy.UNLESS_STOPPED)
    d.boot()
    d.healthy()
    step = d.feed(ShutdownRequested(), 5)
    assert step.actions[-1] == Terminate(1)
    assert d.snap.teardown is Teardown.SHUTDOWN
    d.feed(Exited(1, ExitStatus(None, 15)), 6)
    d.feed(GroupGone(1))
    assert (d.snap.state, d.snap.desired) == (State.STOPPED, Desired.RUNNING)
    assert d.snap.restart_count == 0
    assert d.feed(Boot(), 100).actions == (Spawn(2, None),)


def test_shutdown_during_backoff_cancels_the_restart() -> None:
    """Shutdown in backoff: stopped at once, the scheduled restart dropped."""
    d = driver()
    d.boot()
    d.crash(1)
    step = d.feed(ShutdownRequested(), 2)
    assert step.actions == (Record(EventKind.STOPPED, State.STOPPED, "supervisor shutdown"),)
    assert d.snap.restart_at is None
    assert d.feed(Tick(), 1000).actions == ()


@pytest.mark.parametrize(("first", "teardown"), [(RestartRequested(), Teardown.RESTART), (None, Teardown.FAILURE)])
def test_shutdown_during_a_teardown_does_not_restart(first: Event | None, teardown: Teardown) -> None:
    """Shutdown while a restart or failure teardown runs: the run ends stopped, nothing is spawned."""
    d = driver()
    d.boot()
    if first is None:
        d.feed(Tick(), 900)  # start-up timeout
    else:
        d.feed(first, 1)
    assert d.snap.teardown is teardown
    d.feed(ShutdownRequested())
    assert d.snap.teardown is Teardown.SHUTDOWN
    d.feed(Exited(1, ExitStatus(None, 15)))
    d.feed(GroupGone(1))
    assert d.snap.state is State.STOPPED
    assert len(d.spawns()) == 1


@pytest.mark.parametrize("state", [State.STOPPED, State.FAILED])
def test_shutdown_of_an_idle_model_changes_nothing(state: State) -> None:
    """Nothing runs, nothing to do."""
    d = driver()
    d.snap = Snapshot(state=state)
    assert d.feed(ShutdownRequested(), 0) == Step(Snapshot(state=state))


def test_shutdown_during_an_operator_stop_keeps_the_stop() -> None:
    """Shutdown while an operator stop runs leaves it an operator stop (the model stays wanted stopped)."""
    d = driver()
    d.boot()
    d.feed(StopRequested(), 1)
    before = d.snap
    assert d.feed(ShutdownRequested(), 2) == Step(before)


def test_failure_while_wanted_stopped_stays_stopped() -> None:
    """A run that fails while the model is wanted stopped (e.g. restored from the journal) is not restarted."""
    d = driver(restart_policy=RestartPolicy.ALWAYS)
    d.snap = Snapshot(state=State.HEALTHY, desired=Desired.STOPPED, run=4, live=True, group_alive=True)
    d.feed(Exited(4, CRASH), 10)
    assert d.snap.state is State.STOPPED
    assert d.records(EventKind.STOPPED)[0].detail == "restart_policy always"


def test_clean_exit_under_on_failure_is_recorded_as_such() -> None:
    """A clean exit under on-failure ends stopped with the reason in the timeline."""
    d = driver(success_exit_codes=frozenset({0}))
    d.boot()
    d.crash(1, ExitStatus(0))
    assert d.records(EventKind.STOPPED)[0].detail == "clean exit"


# --- illegal events ---------------------------------------------------------------------------------


def _booted() -> Driver:
    d = driver()
    d.boot()
    return d


def _healthy() -> Driver:
    d = _booted()
    d.healthy()
    return d


def _exited_group_alive() -> Driver:
    d = driver(restart_policy=RestartPolicy.NO)
    d.boot()
    d.feed(Exited(1, CRASH), 1)
    return d


def _pending_spawn() -> Driver:
    d = driver()
    d.feed(Boot(), 0)
    return d


ILLEGAL: list[tuple[str, Callable[[], Driver], Event]] = [
    ("boot while healthy", _healthy, Boot()),
    ("boot while the old group lives", _exited_group_alive, Boot()),
    ("spawned twice", _booted, Spawned(1, 1)),
    ("spawned for another run", _pending_spawn, Spawned(2, 1)),
    ("spawn failed while live", _healthy, SpawnFailed(1, "x")),
    ("spawn result while stopped", driver, Spawned(1, 1)),
    ("exit of an earlier run", _healthy, Exited(0, CRASH)),
    ("exit before the spawn", _pending_spawn, Exited(1, CRASH)),
    ("exit twice", _exited_group_alive, Exited(1, CRASH)),
    ("group gone while the leader lives", _healthy, GroupGone(1)),
    ("group gone of another run", _exited_group_alive, GroupGone(2)),
    ("group gone when there is none", driver, GroupGone(0)),
]


@pytest.mark.parametrize(("setup", "event"), [(s, e) for _, s, e in ILLEGAL], ids=[n for n, _, _ in ILLEGAL])
def test_illegal_event_raises_and_changes_nothing(setup: Callable[[], Driver], event: Event) -> None:
    """An event the current state cannot accept raises IllegalEvent; the snapshot and RNG are untouched."""
    d = setup()
    before = d.snap
    rng_state = d.machine._rng.getstate()
    with pytest.raises(IllegalEvent):
        d.machine.handle(d.snap, event, d.now + 1)
    assert d.snap == before
    assert d.machine._rng.getstate() == rng_state


def test_group_gone_twice_is_illegal_after_a_stop() -> None:
    """Once a run's group is reported gone, a second report is illegal."""
    d = _booted()
    d.feed(StopRequested(), 1)
    d.feed(Exited(1, ExitStatus(None, 15)))
    d.feed(GroupGone(1))
    with pytest.raises(IllegalEvent):
        d.machine.handle(d.snap, GroupGone(1), 2)


# --- next_deadline ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snap", "expected"),
    [
        (Snapshot(), None),
        (Snapshot(state=State.STOPPING, live=True, group_alive=True, kill_at=40.0), 40.0),
        (Snapshot(state=State.STOPPING, group_alive=False, kill_at=40.0), None),
        (Snapshot(state=State.STARTING, live=True, group_alive=True, startup_deadline=900.0, next_probe_at=1.0), 1.0),
        (Snapshot(state=State.STARTING, startup_deadline=900.0, next_probe_at=1.0), 900.0),  # spawn pending
        (
            Snapshot(state=State.STARTING, live=True, startup_deadline=900.0, next_probe_at=1.0, probe_in_flight=True),
            900.0,
        ),
        (Snapshot(state=State.HEALTHY, live=True, next_probe_at=5.0, probe_in_flight=True), None),
        (Snapshot(state=State.HEALTHY, live=True, next_probe_at=5.0), 5.0),
        (Snapshot(state=State.UNHEALTHY, live=True, next_probe_at=7.0), 7.0),
        (Snapshot(state=State.BACKOFF, restart_at=12.0), 12.0),
        (Snapshot(state=State.BACKOFF, group_alive=True, restart_at=12.0), None),
        (Snapshot(state=State.FAILED, restart_at=12.0, kill_at=3.0, next_probe_at=1.0), None),
    ],
)
def test_next_deadline_is_the_earliest_pending_timer(snap: Snapshot, expected: float | None) -> None:
    """The loop sleeps until the earliest timer a Tick could act on; none while only IO can move things."""
    assert next_deadline(snap) == expected


def test_next_deadline_follows_a_run() -> None:
    """Through a run's life, next_deadline names exactly the moment the next Tick acts."""
    d = driver(startup_timeout=30, startup_probe_interval=1, health_check_interval=10)
    d.feed(Boot(), 0)
    d.spawned()
    assert next_deadline(d.snap) == 1
    d.feed(Tick(), 1)
    assert next_deadline(d.snap) == 30  # probe in flight: only the start-up deadline remains
    d.feed(ProbeDone(1, ok=True, message=None), 1.2)
    assert next_deadline(d.snap) == 11.2
    d.crash(12)
    assert next_deadline(d.snap) == 17
    d.feed(StopRequested(), 13)
    assert next_deadline(d.snap) is None


def test_restart_asked_after_the_manual_run_began_restarts_again() -> None:
    """Coalescing covers requests made before the new run began; a later restart of a starting run acts."""
    d = driver()
    d.boot()
    d.healthy()
    d.feed(RestartRequested(requested_at=10), 10)
    d.feed(Exited(1, ExitStatus(None, 15)), 11)
    d.feed(GroupGone(1), 11)
    d.spawned()
    early = d.feed(RestartRequested(requested_at=10.5), 12)  # asked while run 1 was still stopping
    assert early.actions == ()
    late = d.feed(RestartRequested(requested_at=12), 12)  # asked after run 2 began: a new request
    assert Terminate(2) in late.actions
    assert d.snap.state is State.STOPPING


def test_time_spent_unhealthy_does_not_earn_a_backoff_reset() -> None:
    """Only healthy time counts towards backoff_reset_after: probing and stopping an unhealthy run do not."""
    d = driver(budget=Budget(None, None), backoff=Backoff(5, 2, 300, 0.0, 60), health_check_interval=10)
    d.boot()
    d.healthy()
    d.crash(d.now + 1)
    assert d.respawn() == 5
    d.healthy()
    healthy_at = d.now
    for _ in range(3):  # three failed probes, 10 s apart: unhealthy 30 s after the last good one
        d.probe(ok=False)
    assert d.snap.state is State.STOPPING
    assert d.snap.unhealthy_since is not None
    assert d.snap.unhealthy_since - healthy_at < 60
    d.feed(Tick(), d.now + 30)  # stop_timeout passes: killed 60+ s after health began
    d.feed(Exited(2, ExitStatus(None, 9)))
    d.feed(GroupGone(2))
    assert d.now - healthy_at >= 60
    assert d.snap.restart_at is not None
    assert d.snap.restart_at - d.now == 10  # the schedule went on (5, 10): no reset was earned


def test_something_that_is_not_an_event_is_refused() -> None:
    """A value that is no event raises IllegalEvent and leaves the snapshot as it was."""
    d = driver()
    before = d.snap
    with pytest.raises(IllegalEvent, match="not an event"):
        d.feed("stop please")  # type: ignore[arg-type]
    assert d.snap is before


@pytest.mark.parametrize(
    ("finding", "cause", "expected"),
    [("engine_dead", Cause.ENGINE_DEAD, Cause.ENGINE_DEAD), ("nccl_failure", Cause.CRASH, Cause.UNHEALTHY)],
)
def test_unhealthy_run_keeps_the_cause_its_output_named(finding: str, cause: Cause, expected: Cause) -> None:
    """A dead engine turns probes to 503 before it exits: the cause stays engine_dead, not unhealthy."""
    d = driver()
    d.boot()
    d.healthy()
    d.feed(Diagnosed(1, cause, finding, has_cuda_oom=False))
    for _ in range(3):
        d.probe(ok=False, message="HTTP 503 from /health")
    assert d.snap.state is State.STOPPING
    assert d.snap.failure_cause is expected


def test_startup_timeout_of_a_run_that_printed_an_oom_is_an_oom() -> None:
    """A run that printed a CUDA OOM and then never became healthy failed because of the OOM."""
    d = driver(startup_timeout=60)
    d.boot()
    d.feed(Diagnosed(1, Cause.OOM, "cuda_oom", has_cuda_oom=True), 5)
    d.feed(Tick(), 60)
    assert d.snap.state is State.STOPPING
    assert d.snap.failure_cause is Cause.OOM
