"""Model-based tests of the state machine: random histories checked against a simple model.

`MachineModel` drives `Machine` the way the owner loop and a runtime would: operator requests at any time,
spawn results right after a Spawn, exits only of a live run, group-gone only after the exit, probe answers
only for probes that were asked for, output findings, and time passing up to (or past) the next deadline.
After every step it checks what must always hold: a stop is never followed by an automatic restart, failed
stays failed until an operator acts, at most one run is alive, no run spawns while the previous group lives,
and the restart budget holds in every window. Two property tests drive plain crash loops to check the
schedule and the budget through the machine.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from hypothesis import given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from supervisor.core.machine import Machine
from supervisor.core.machine_types import (
    LIVE,
    Action,
    Boot,
    Desired,
    Diagnosed,
    Event,
    Exited,
    GroupGone,
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
    StopRequested,
    Terminate,
    Tick,
    next_deadline,
)
from supervisor.core.policy import Backoff, Budget, RestartPolicy
from supervisor.core.states import Cause, EventKind, ExitStatus, State

# Small, varied values so that budgets run out, windows expire and deadlines pass within a few dozen steps.
SETTINGS = st.builds(
    Settings,
    restart_policy=st.sampled_from(RestartPolicy),
    success_exit_codes=st.sampled_from([frozenset(), frozenset({0}), frozenset({0, 3})]),
    backoff=st.builds(
        Backoff,
        initial=st.sampled_from([0.0, 0.5, 2.0, 5.0]),
        multiplier=st.sampled_from([1.0, 1.5, 2.0]),
        cap=st.sampled_from([0.0, 1.0, 10.0, 300.0]),
        jitter=st.sampled_from([0.0, 0.1, 0.5]),
        reset_after=st.sampled_from([0.5, 5.0, 600.0]),
    ),
    budget=st.builds(
        Budget,
        max_restarts=st.sampled_from([None, 0, 1, 2, 3]),
        window=st.sampled_from([None, 1.0, 10.0, 600.0]),
    ),
    has_probe=st.sampled_from([True, True, False]),
    startup_timeout=st.sampled_from([3.0, 900.0]),
    startup_probe_interval=st.sampled_from([0.5, 1.0]),
    health_check_interval=st.sampled_from([1.0, 10.0]),
    health_check_timeout=st.sampled_from([0.5, 5.0]),
    health_failure_threshold=st.sampled_from([1, 2]),
    stop_timeout=st.sampled_from([0.0, 1.0, 30.0]),
)
EXITS = st.sampled_from(
    [
        ExitStatus(0),
        ExitStatus(1),
        ExitStatus(3),
        ExitStatus(None, 9),
        ExitStatus(None, 15),
        ExitStatus(137, None, True),
    ]
)
DURATIONS = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 30.0, 700.0]), st.floats(0, 10))
OPERATOR = (StartRequested, StopRequested, RestartRequested)
# Starts and restarts twice as likely as stops, so that histories spend their steps on running models.
REQUESTS: list[Event] = [
    StartRequested(),
    StartRequested(),
    RestartRequested(),
    RestartRequested(),
    StopRequested(),
    StopRequested(force=True),
    ShutdownRequested(),
]
EPS = 1e-9


class MachineModel(RuleBasedStateMachine):
    """The machine, a simulated runtime around it, and the few facts a user relies on."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.snap = Snapshot()
        # The simulated runtime: what is really running.
        self.pending_spawn: int | None = None  # a Spawn was asked for; its result comes next
        self.process: int | None = None  # the run whose main process is alive
        self.group: int | None = None  # the run of which some process is alive
        self.probes: list[int] = []  # runs with a probe in flight
        self.killed: set[int] = set()
        self.last_run = 0
        # The model: what the operator asked for, and the automatic restarts decided since the last fresh budget.
        self.stopped_by_operator = False
        self.shutting_down = False
        self.decisions: list[float] = []

    # --- feeding events ----------------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        before = self.snap
        self._operator_intent(event, before)
        step = self.machine.handle(before, event, self.now)
        note(f"t={self.now:g} {event} : {before.state} -> {step.snapshot.state} {step.actions}")
        self.snap = step.snapshot
        if before.state is State.FAILED and self.snap.state is not State.FAILED:
            assert isinstance(event, OPERATOR), f"left failed on {event}"
        for action in step.actions:
            self._execute(action, event)

    def _operator_intent(self, event: Event, before: Snapshot) -> None:
        if isinstance(event, StopRequested):
            self.stopped_by_operator = True
        elif isinstance(event, StartRequested | RestartRequested):
            self.stopped_by_operator = self.shutting_down = False
            if before.state in (State.STOPPED, State.FAILED):
                self.decisions = []  # an operator's start begins a fresh budget (docs/design/defects.md #14)
        elif isinstance(event, ShutdownRequested):
            self.shutting_down = True
        elif isinstance(event, Boot):
            self.shutting_down = False
            if self.config.restart_policy is RestartPolicy.ALWAYS:
                self.stopped_by_operator = False  # `always` comes back after a supervisor restart, as in Docker

    def _execute(self, action: Action, event: Event) -> None:
        match action:
            case Spawn():
                assert self.pending_spawn is None, "two spawns at once"
                assert self.process is None, "two live runs"
                assert self.group is None, "spawned while the previous group is alive (docs/design/defects.md #5)"
                assert not self.stopped_by_operator, "restarted after an operator stop (docs/design/defects.md #9)"
                assert not self.shutting_down, "restarted during supervisor shutdown"
                assert action.run == self.snap.run == self.last_run + 1
                if action.reason not in (None, "manual"):
                    policy = self.config.restart_policy
                    assert policy is not RestartPolicy.NO, "policy `no` restarted automatically"
                    assert not (policy is RestartPolicy.ON_FAILURE and action.reason == "exit"), "clean exit restarted"
                assert not self.snap.has_cuda_oom, "stale OOM flag (docs/design/defects.md #11)"
                assert self.snap.run_cause is None, "stale diagnosis of the last run"
                self.last_run = action.run
                self.pending_spawn = action.run
            case Terminate() | Kill():
                assert action.run == self.group, f"{action} but the live group is run {self.group}"
                if isinstance(action, Kill):
                    self.killed.add(action.run)
            case Probe():
                assert action.run == self.process, f"{action} while run {self.process} is alive"
                assert action.timeout == self.config.health_check_timeout
                self.probes.append(action.run)
            case Record(kind=EventKind.BACKOFF) if isinstance(event, Exited | GroupGone | SpawnFailed):
                self.decisions.append(self.now)  # an automatic restart, decided (and counted) now
                budget = self.config.budget
                assert budget.max_restarts is None or self._in_window(self.now) <= budget.max_restarts
            case Record(kind=EventKind.FAILED):
                limit = self.config.budget.max_restarts
                assert limit is not None, "failed with an unlimited budget"
                assert self._in_window(self.now) == limit, "failed before the budget was spent"
            case _:
                pass

    def _in_window(self, now: float) -> int:
        window = self.config.budget.window
        return sum(1 for t in self.decisions if window is None or now - t < window)

    # --- the world ----------------------------------------------------------------------------------

    @initialize(
        config=SETTINGS, seed=st.integers(0, 2**16), desired=st.sampled_from([Desired.RUNNING] * 3 + [Desired.STOPPED])
    )
    def boot(self, config: Settings, seed: int, desired: Desired) -> None:
        self.config = config
        self.machine = Machine(config, random.Random(seed))
        self.snap = Snapshot(desired=desired)
        self.stopped_by_operator = desired is Desired.STOPPED
        self.feed(Boot())

    def idle(self) -> bool:
        return self.pending_spawn is None

    @precondition(lambda self: self.pending_spawn is not None)
    @rule(ok=st.sampled_from([True, True, True, False]))
    def spawn_result(self, ok: bool) -> None:
        run, self.pending_spawn = self.pending_spawn, None
        assert run is not None
        if ok:
            self.process = self.group = run
            self.feed(Spawned(run, 1000 + run))
        else:
            self.feed(SpawnFailed(run, "No such file or directory: 'vllm'"))

    @precondition(idle)
    @rule(dt=DURATIONS)
    def time_passes(self, dt: float) -> None:
        """Some time passes before the loop wakes (for IO, or late on a loaded machine)."""
        self.now += dt
        self.feed(Tick())

    @precondition(lambda self: self.idle() and next_deadline(self.snap) is not None)
    @rule()
    def deadline_arrives(self) -> None:
        """The loop sleeps until the next deadline and ticks."""
        deadline = next_deadline(self.snap)
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.feed(Tick())

    @precondition(idle)
    @rule(request=st.sampled_from(REQUESTS))
    def operator_acts(self, request: Event) -> None:
        self.feed(request)

    @precondition(lambda self: self.idle() and self.snap.state in (State.STOPPED, State.FAILED) and self.group is None)
    @rule()
    def supervisor_restarts(self) -> None:
        self.feed(Boot())

    @precondition(lambda self: self.idle() and self.process is not None)
    @rule(status=EXITS, group_follows=st.booleans())
    def process_exits(self, status: ExitStatus, group_follows: bool) -> None:
        """The main process exits; often its whole group is gone with it, sometimes orphans linger."""
        run, self.process = self.process, None
        assert run is not None
        self.feed(Exited(run, status))
        if group_follows and self.idle():
            self.group = None
            self.feed(GroupGone(run))

    @precondition(lambda self: self.idle() and self.process is None and self.group is not None)
    @rule()
    def group_gone(self) -> None:
        run, self.group = self.group, None
        assert run is not None
        self.feed(GroupGone(run))

    @precondition(lambda self: self.idle() and bool(self.probes))
    @rule(ok=st.sampled_from([True, True, False]), pick=st.integers(0, 3))
    def probe_answers(self, ok: bool, pick: int) -> None:
        run = self.probes.pop(pick % len(self.probes))
        ok = ok and run == self.process  # a dead server never answers 200
        self.feed(ProbeDone(run, ok, None if ok else "connection refused"))

    @precondition(lambda self: self.idle() and self.process is not None and self.snap.next_probe_at is not None)
    @rule(answers=st.lists(st.booleans(), min_size=1, max_size=4))
    def probes_round_trip(self, answers: list[bool]) -> None:
        """Probes fall due one after another, each answered before anything else happens."""
        for ok in answers:
            if self.snap.next_probe_at is None or self.snap.probe_in_flight:
                return
            self.now = max(self.now, self.snap.next_probe_at)
            sent = len(self.probes)
            self.feed(Tick())
            if len(self.probes) > sent:
                self.feed(ProbeDone(self.probes.pop(), ok, None if ok else "timed out"))

    @precondition(lambda self: self.idle() and self.snap.run > 0)
    @rule(what=st.sampled_from(["manual probe ok", "manual probe failed", "oom", "port in use", "late oom"]))
    def something_is_noticed(self, what: str) -> None:
        """An operator's one-off probe, or a line of output the diagnosis recognises (possibly of the run before)."""
        run = self.snap.run
        if what.startswith("manual"):
            ok = what.endswith("ok") and self.process is not None
            self.feed(ProbeDone(run, ok, None if ok else "connection refused", manual=True))
            return
        cause = Cause.PORT_IN_USE if what == "port in use" else Cause.OOM
        if what == "late oom":
            run -= 1  # a buffered line of the previous run, delivered late
        self.feed(Diagnosed(run, cause, cause.value, has_cuda_oom=cause is Cause.OOM))

    # --- what must always hold ----------------------------------------------------------------------

    # Invariants run after the initial boot and after every rule (never during initialisation).

    @invariant()
    def state_is_one_of_the_seven(self) -> None:
        assert self.snap.state in set(State)
        assert len(State) == 7

    @invariant()
    def at_most_one_live_run(self) -> None:
        assert self.process is None or self.process == self.group
        if self.idle():
            assert self.snap.live == (self.process is not None)
            assert self.snap.group_alive == (self.group is not None)
            assert self.group is None or self.group == self.snap.run

    @invariant()
    def state_matches_what_runs(self) -> None:
        if not self.idle():
            assert self.snap.state is State.STARTING
            return
        if self.snap.state in LIVE:
            assert self.snap.live
        if self.snap.state in (State.STOPPED, State.FAILED, State.BACKOFF):
            assert not self.snap.live
        if self.snap.state is State.STOPPING:
            assert self.snap.group_alive

    @invariant()
    def nothing_waits_for_ever(self) -> None:
        """Each state has the timer or the IO that will move it on."""
        s, config = self.snap, self.config
        if not self.idle():
            return
        if s.state is State.STOPPING:
            assert s.kill_at is not None or s.run in self.killed
        if s.state is State.BACKOFF:
            assert s.restart_at is not None
        if s.state is State.STARTING and config.has_probe:
            assert s.startup_deadline is not None
        if s.state in LIVE and config.has_probe:
            assert s.probe_in_flight or s.next_probe_at is not None
        if s.probe_in_flight:
            assert s.run in self.probes

    @invariant()
    def a_due_deadline_makes_progress(self) -> None:
        """The loop ticks at once when a deadline is due; that tick must act, or the loop would spin."""
        deadline = next_deadline(self.snap)
        if not self.idle() or deadline is None or deadline > self.now:
            return
        step = self.machine.handle(self.snap, Tick(), self.now)
        assert step.snapshot != self.snap or step.actions, f"deadline {deadline} due at {self.now} but a Tick is idle"

    @invariant()
    def restart_budget_holds(self) -> None:
        config = self.config
        assert self.snap.restart_count == len(self.decisions)
        if config.budget.max_restarts is not None:
            assert len(config.budget.recent(self.snap.restart_times, self.now)) <= config.budget.max_restarts

    @invariant()
    def failed_only_with_a_budget(self) -> None:
        if self.snap.state is State.FAILED:
            assert self.config.budget.max_restarts is not None
            assert self.config.restart_policy is not RestartPolicy.NO


MachineModel.TestCase.settings = hsettings(stateful_step_count=50)
TestMachineModel = MachineModel.TestCase


# --- crash loops: the schedule and the budget through the machine ----------------------------------


@dataclass
class CrashLoop:
    decisions: list[float] = field(default_factory=list)  # when each automatic restart was decided
    delays: list[float] = field(default_factory=list)  # how long each one waited
    attempts: list[int] = field(default_factory=list)  # the attempt the model expects for each
    failed_at: float | None = None
    restart_count: int = 0


PLAN = st.lists(
    st.tuples(st.floats(0, 50), st.booleans(), st.floats(0, 5)),  # (time up, spawn fails, orphans linger)
    min_size=1,
    max_size=25,
)


def crash_loop(settings: Settings, seed: int, plan: list[tuple[float, bool, float]]) -> CrashLoop:
    """Run a model through `plan`, one crash per entry; record when restarts were decided and how long each waited."""
    machine = Machine(settings, random.Random(seed))
    out = CrashLoop()
    now, attempt = 0.0, 0
    snap = machine.handle(Snapshot(), Boot(), now).snapshot

    def feed(event: Event) -> None:
        nonlocal snap
        step = machine.handle(snap, event, now)
        snap = step.snapshot
        for action in step.actions:
            if isinstance(action, Record) and action.kind is EventKind.BACKOFF:
                out.decisions.append(now)
                assert snap.restart_at is not None
                out.delays.append(snap.restart_at - now)
                out.attempts.append(attempt)
            if isinstance(action, Record) and action.kind is EventKind.FAILED:
                out.failed_at = now

    for up, spawn_fails, linger in plan:
        assert snap.state is State.STARTING
        assert not snap.live
        if spawn_fails:
            feed(SpawnFailed(snap.run, "port in use"))
        else:
            feed(Spawned(snap.run, 1))
            spawned, now = now, now + up
            if settings.backoff.should_reset(now - spawned):  # the time up as the machine measures it
                attempt = 0
            feed(Exited(snap.run, ExitStatus(1)))
            now += linger
            feed(GroupGone(snap.run))
        attempt += 1
        if snap.state is State.FAILED:
            break
        if snap.state is State.BACKOFF:
            assert snap.restart_at is not None
            now = max(now, snap.restart_at)
            feed(Tick())
    out.restart_count = snap.restart_count
    return out


def loop_settings(backoff: Backoff, budget: Budget) -> Settings:
    return Settings(
        restart_policy=RestartPolicy.ALWAYS,
        success_exit_codes=frozenset(),
        backoff=backoff,
        budget=budget,
        has_probe=False,
        startup_timeout=900,
        startup_probe_interval=1,
        health_check_interval=10,
        health_check_timeout=5,
        health_failure_threshold=3,
        stop_timeout=30,
    )


BACKOFFS = st.builds(
    Backoff,
    initial=st.floats(0, 20),
    multiplier=st.floats(1, 3),
    cap=st.floats(0, 120),
    jitter=st.one_of(st.just(0.0), st.floats(0, 0.9)),
    reset_after=st.sampled_from([1.0, 10.0, 600.0]),
)


@given(
    backoff=BACKOFFS,
    max_restarts=st.integers(0, 4),
    window=st.one_of(st.none(), st.floats(0.5, 200)),
    plan=PLAN,
    seed=st.integers(0, 2**16),
)
def test_never_more_restarts_than_the_budget_in_any_window(
    backoff: Backoff, max_restarts: int, window: float | None, plan: list[tuple[float, bool, float]], seed: int
) -> None:
    """However crashes are spaced, no restart_window holds more than max_restarts restarts; failed means spent."""
    loop = crash_loop(loop_settings(backoff, Budget(max_restarts, window)), seed, plan)
    note(f"decisions={loop.decisions} failed_at={loop.failed_at}")

    def in_window(now: float) -> int:
        return sum(1 for t in loop.decisions if t <= now and (window is None or now - t < window))

    for decided in loop.decisions:
        assert in_window(decided) <= max_restarts
    if loop.failed_at is not None:
        assert in_window(loop.failed_at) == max_restarts
    assert loop.restart_count == len(loop.decisions)


@given(backoff=BACKOFFS, plan=PLAN, seed=st.integers(0, 2**16))
def test_crash_loop_waits_follow_the_schedule(
    backoff: Backoff, plan: list[tuple[float, bool, float]], seed: int
) -> None:
    """Each wait is within Backoff.bounds of its attempt; without jitter it is exact, and without a reset it
    never decreases."""
    loop = crash_loop(loop_settings(backoff, Budget(None, None)), seed, plan)
    assert len(loop.delays) == len(plan)
    for delay, attempt in zip(loop.delays, loop.attempts, strict=True):
        low, high = backoff.bounds(attempt)
        # The delay is read back as restart_at - now: allow for that subtraction's rounding, nothing more.
        assert low - EPS <= delay <= high + EPS
        if backoff.jitter == 0:
            assert abs(delay - backoff.base_delay(attempt)) <= EPS
    if backoff.jitter == 0 and loop.attempts == list(range(len(loop.attempts))):
        assert all(later >= earlier - EPS for earlier, later in itertools.pairwise(loop.delays))
