"""Expectations over a model of several replicas: each replica's restarts and states, the model's state as its
most alive replica's, and processes judged per replica (two replicas alive at once is no overlap)."""

from __future__ import annotations

from chaos.check_timeline import state_points
from chaos.checks import judge_expectation, judge_steady
from chaos.timeline import Event
from tests.chaos.timelines import T0, ev, expect, observation, sighting, snap, steady


def two_replicas_one_killed() -> list[Event]:
    """Both replicas start; replica 1 is killed at 5 s and is healthy again at 6.5 s."""
    return [
        ev(0.5, "spawned", "starting", "run 1", replica=0),
        ev(0.6, "spawned", "starting", "run 1", replica=1),
        ev(1.0, "healthy", "healthy", replica=0),
        ev(1.5, "healthy", "healthy", replica=1),
        ev(5.0, "exited", "backoff", "signal 9", "crash", replica=1),
        ev(5.2, "spawned", "starting", "run 2", "crash", replica=1),
        ev(6.5, "healthy", "healthy", replica=1),
    ]


def test_each_replica_first_start_is_not_a_restart() -> None:
    """Two replicas starting are two first starts: one restart in all, of replica 1, none of replica 0."""
    obs = observation(two_replicas_one_killed(), steady=2.0, faults_end=5.0)
    verdicts = {
        key: judge_expectation(expect({"restarts": {"model": "m1", **spec}}), obs)
        for key, spec in {
            "all": {"count": 1},
            "r1": {"replica": 1, "count": 1},
            "r0": {"replica": 0, "count": 0},
        }.items()
    }
    assert {k: v.passed for k, v in verdicts.items()} == {"all": True, "r1": True, "r0": True}
    assert verdicts["r1"].check == "restarts(m1, replica 1)"
    wrong = judge_expectation(expect({"restarts": {"model": "m1", "replica": 0, "count": 1}}), obs)
    assert wrong.passed is False
    assert wrong.message.startswith("m1 replica 0 restarted 0 times, expected exactly 1")


def test_the_model_is_as_healthy_as_its_most_alive_replica() -> None:
    """While replica 1 restarts the model stays healthy (replica 0 serves); replica 1 itself does not."""
    obs = observation(two_replicas_one_killed(), steady=2.0, faults_end=5.0)
    model = [state for t, state in state_points(obs, "m1") if t >= T0 + 1.0]
    assert set(model) == {"healthy"}
    assert [s for _, s in state_points(obs, "m1", replica=1)] == [
        "starting",
        "healthy",
        "backoff",
        "starting",
        "healthy",
    ]
    stays = expect({"state": {"model": "m1", "is": "healthy", "within": 1, "stays": True}})
    assert judge_expectation(stays, obs).passed is True
    obs = observation(two_replicas_one_killed(), steady=2.0, faults_end=2.0)
    replica_stays = expect({"state": {"model": "m1", "replica": 1, "is": "healthy", "within": 1, "stays": True}})
    left = judge_expectation(replica_stays, obs)
    assert left.passed is False
    assert left.message.startswith("m1 replica 1 reached 'healthy' at +2.00s but left it: exited at +5.00s")


def test_healthy_within_and_steady_state_per_replica() -> None:
    obs = observation(two_replicas_one_killed(), steady=2.0, faults_end=5.0)
    back = judge_expectation(expect({"healthy_within": {"model": "m1", "replica": 1, "within": 2}}), obs)
    assert (back.passed, back.message) == (True, "healthy again at +6.50s (1.50s after the faults)")
    late = judge_expectation(expect({"healthy_within": {"model": "m1", "replica": 1, "within": 1}}), obs)
    assert late.passed is False
    early = observation(two_replicas_one_killed()[:3], steady=None)
    assert judge_steady(steady(within=5), early).passed is True  # replica 0 is healthy: so is the model
    one = steady(within=5).model_copy(update={"healthy": steady(within=5).healthy.model_copy(update={"replica": 1})})
    assert judge_steady(one, early).passed is False


def test_events_of_one_replica() -> None:
    obs = observation(two_replicas_one_killed(), steady=2.0, faults_end=5.0)
    quiet = expect({"events": {"model": "m1", "replica": 0, "exclude": ["exited"]}})
    assert judge_expectation(quiet, obs).passed is True
    assert judge_expectation(expect({"events": {"model": "m1", "exclude": ["exited"]}}), obs).passed is False


def test_two_replicas_running_side_by_side_are_not_orphans() -> None:
    """Replica 0's run (pid 100) and replica 1's (pid 200) alive at the end: both current, nothing left over."""
    replicas = ({"index": 0, "pid": 100}, {"index": 1, "pid": 200})
    obs = observation(
        [],
        [snap(9, pid=100, replicas=replicas)],
        sightings=[sighting(100, 100), sighting(200, 200, replica=1)],
        alive=[100, 200],
    )
    verdict = judge_expectation(expect({"no_orphans": True}), obs)
    assert verdict.passed is True, verdict.message


def test_an_old_run_of_one_replica_left_alive_is_an_orphan() -> None:
    """Replica 1 now runs pid 300; its old run's pid 200 is still alive: named as replica 1's orphan."""
    replicas = ({"index": 0, "pid": 100}, {"index": 1, "pid": 300})
    obs = observation(
        [],
        [snap(9, pid=100, replicas=replicas)],
        sightings=[sighting(100, 100), sighting(200, 200, replica=1), sighting(300, 300, replica=1)],
        alive=[100, 200, 300],
    )
    verdict = judge_expectation(expect({"no_orphans": True}), obs)
    assert verdict.passed is False
    assert "orphan pid 200 (fake-vllm serve m1) of m1 replica 1's run 200" in verdict.message
    assert "while the current run is 300" in verdict.message
