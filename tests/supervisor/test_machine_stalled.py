"""A stalled run: requests made no progress while /health may have said 200 (progress_timeout, inference probe)."""

from __future__ import annotations

from supervisor.core.machine_types import Diagnosed, Stalled, Teardown, Terminate
from supervisor.core.policy import RestartPolicy
from supervisor.core.states import Cause, EventKind, State
from tests.supervisor.test_machine import driver


def test_a_stall_makes_a_healthy_run_unhealthy_and_restarts_it_with_cause_stalled() -> None:
    """The stall is an unhealthy event with reason stalled; the run is torn down like any failure."""
    d = driver()
    d.boot()
    d.healthy()
    step = d.feed(Stalled(1, "no output for 60s from a request in flight"), d.now + 5)
    assert d.snap.state is State.STOPPING
    assert (d.snap.teardown, d.snap.failure_cause) == (Teardown.FAILURE, Cause.STALLED)
    unhealthy = d.records(EventKind.UNHEALTHY)[-1]
    assert (unhealthy.detail, unhealthy.reason) == ("no output for 60s from a request in flight", "stalled")
    assert Terminate(1) in step.actions
    assert d.snap.kill_at == d.now + 30


def test_a_stall_keeps_the_cause_the_output_named() -> None:
    """A hang whose output said why (a dead engine) keeps that cause, as a failed probe does."""
    d = driver()
    d.boot()
    d.healthy()
    d.feed(Diagnosed(1, Cause.ENGINE_DEAD, "engine_dead", has_cuda_oom=False))
    d.feed(Stalled(1, "inference probe timed out after 10s"))
    assert d.snap.failure_cause is Cause.ENGINE_DEAD


def test_a_stall_of_an_earlier_run_or_of_a_loading_run_changes_nothing() -> None:
    """A late report about a run that ended, or about one still starting, is ignored."""
    d = driver()
    d.boot()
    before = d.snap
    assert d.feed(Stalled(1, "late")).actions == ()  # still starting: no request could have stalled
    assert d.snap == before
    d.healthy()
    healthy = d.snap
    assert d.feed(Stalled(0, "an earlier run")).actions == ()
    assert d.snap == healthy


def test_under_no_a_stalled_run_stays_up_unhealthy_until_it_answers_again() -> None:
    """restart_policy no: the stall is reported and the run left alone; a later successful probe heals it."""
    d = driver(restart_policy=RestartPolicy.NO)
    d.boot()
    d.healthy()
    d.feed(Stalled(1, "no output for 5s"), d.now + 1)
    assert d.snap.state is State.UNHEALTHY
    assert d.snap.unhealthy_since == d.now
    d.feed(Stalled(1, "still nothing"), d.now + 1)
    assert d.snap.unhealthy_since == d.now - 1  # the first stall is when health ended
    d.probe(ok=True)
    assert d.snap.state is State.HEALTHY
