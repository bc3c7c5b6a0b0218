"""The judging catches each known supervision defect: a defective supervisor's timeline fails, with a
message that says what went wrong, while a correct supervisor's timeline of the same story passes.

A test named `test_<n>_...` is about item n of docs/design/defects.md. Items 6 (reading status changed it)
and 10 (models added later were never watched) have no timeline signature through the management API: 6 is
covered by the API's own tests, and this API has no way to add a model at runtime.
"""

from __future__ import annotations

from typing import Any

import pytest

from chaos.checks import judge_expectation, judge_steady
from chaos.timeline import Observation
from tests.chaos.timelines import crash_loop, ev, expect, observation, sighting, snap, steady


def verdict_of(item: dict[str, Any], obs: Observation) -> tuple[bool | None, str]:
    """Judge one expectation given as YAML-shaped data."""
    verdict = judge_expectation(expect(item), obs)
    return verdict.passed, verdict.message


def test_1_probing_v1_health_never_becomes_healthy() -> None:
    """A supervisor probing /v1/health (404) never sees the model healthy; the steady state fails."""
    bad = observation(
        [ev(0.5, "spawned", "starting", "run 1")]
        + [ev(0.5 + i, "probe_failed", "starting", "HTTP 404 from /v1/health") for i in range(9)],
        [snap(10, state="starting", health_message="HTTP 404 from /v1/health")],
        steady=None,
    )
    good = observation([ev(0.5, "spawned", "starting", "run 1"), ev(1.0, "healthy", "healthy")])
    assert judge_steady(steady(), good).passed is True
    verdict = judge_steady(steady(), bad)
    assert verdict.passed is False
    assert "not healthy within 10s" in verdict.message
    assert "9 failed probes" in verdict.message
    assert "/v1/health" in verdict.message


def test_2_no_startup_grace_kills_a_loading_model() -> None:
    """A loading model declared unhealthy and restarted fails `restarts 0` and `exclude unhealthy`."""
    bad = observation(
        [
            ev(0.5, "spawned", "starting", "run 1"),
            ev(1.0, "probe_failed", "starting", "connection refused"),
            ev(1.5, "probe_failed", "starting", "connection refused"),
            ev(1.5, "unhealthy", "unhealthy"),
            ev(1.5, "stopping", "stopping"),
            ev(1.6, "exited", "stopping", "signal 15"),
            ev(1.6, "backoff", "backoff", "1"),
            ev(2.6, "spawned", "starting", "run 2", "unhealthy"),
            ev(5.0, "healthy", "healthy"),
        ],
        steady=5.1,
    )
    good = observation(
        [
            ev(0.5, "spawned", "starting", "run 1"),
            ev(1.0, "probe_failed", "starting", "connection refused"),
            ev(3.5, "healthy", "healthy"),
        ],
        steady=3.6,
    )
    restarts = {"restarts": {"model": "m1", "count": 0}}
    assert verdict_of(restarts, good)[0] is True
    passed, message = verdict_of(restarts, bad)
    assert passed is False
    assert "restarted 1 times, expected exactly 0" in message
    assert "(unhealthy)" in message
    events = {"events": {"model": "m1", "exclude": ["unhealthy"]}}
    bad_late = observation(list(bad.events), steady=1.0)  # judged from a steady state before the kill
    passed, message = verdict_of(events, bad_late)
    assert passed is False
    assert "unexpected: unhealthy at +1.50s" in message


def test_3_instant_crashes_never_counted_restart_forever() -> None:
    """Instant crashes never counted -> never failed, too many restarts, restart_count 0."""
    loop = []
    for i in range(10):
        t = 0.5 + i * 0.4
        loop += [
            ev(t, "spawned", "starting", f"run {i + 1}", "crash" if i else None),
            ev(t + 0.05, "exited", "starting", "exit code 1", "crash"),
            ev(t + 0.05, "backoff", "backoff", "0.3"),
        ]
    bad = observation(loop, [snap(5, state="backoff", restart_count=0)], steady=0.0)
    good = observation(crash_loop([0.3, 0.6, 1.0, 1.0]), [snap(9, state="failed", restart_count=4)], steady=0.0)
    for item in (
        {"state": {"model": "m1", "is": "failed", "within": 15, "stays": True}},
        {"restarts": {"model": "m1", "count": 4}},
        {"api": {"model": "m1", "fields": {"restart_count": 4}}},
    ):
        assert verdict_of(item, good)[0] is True
        assert verdict_of(item, bad)[0] is False
    assert "did not reach 'failed'" in verdict_of({"state": {"model": "m1", "is": "failed", "within": 15}}, bad)[1]
    assert "restarted 9 times, expected exactly 4" in verdict_of({"restarts": {"model": "m1", "count": 4}}, bad)[1]
    assert (
        "restart_count is 0, expected 4" in verdict_of({"api": {"model": "m1", "fields": {"restart_count": 4}}}, bad)[1]
    )


def test_4_exit_code_zero_not_restarted() -> None:
    """An engine death ending in exit 0 left stopped fails `restarts 1`, naming the exit 0."""
    bad = observation(
        [ev(0.5, "spawned", "starting"), ev(1, "healthy", "healthy"), ev(3, "exited", "stopped", "exit code 0")],
        [snap(6, state="stopped", restart_count=0)],
    )
    passed, message = verdict_of({"restarts": {"model": "m1", "count": 1}}, bad)
    assert passed is False
    assert "exit code 0" in message
    assert "final state 'stopped'" in message
    cause = verdict_of({"failure_cause": {"model": "m1", "is": "engine_dead"}}, bad)
    assert cause[0] is False
    assert "never 'engine_dead'" in cause[1]


def test_5_only_the_parent_killed_leaves_orphans() -> None:
    """Engine children of the killed run still alive next to the new run fail `no_orphans`."""
    seen = [sighting(100, 100), sighting(101, 100, name="VLLM::EngineCore"), sighting(200, 200)]
    snaps = [snap(1, pid=100), snap(5, pid=200)]
    bad = observation([], snaps, sightings=seen, alive=[101, 200], overlaps=[(3.0, (100, 200))])
    good = observation([], snaps, sightings=seen, alive=[200], after_shutdown=[])
    assert judge_expectation(expect({"no_orphans": True}), good).passed is True
    verdict = judge_expectation(expect({"no_orphans": True}), bad)
    assert verdict.passed is False
    assert "orphan pid 101 (VLLM::EngineCore) of m1's run 100" in verdict.message
    assert "current run is 200" in verdict.message
    assert "runs 100, 200" in verdict.message
    assert "old group was not gone" in verdict.message


def test_5_processes_surviving_shutdown_are_orphans() -> None:
    """A supervisor whose shutdown leaves the server running fails `no_orphans`."""
    seen = [sighting(100, 100)]
    bad = observation([], [snap(1, pid=100)], sightings=seen, alive=[100], after_shutdown=[100])
    verdict = judge_expectation(expect({"no_orphans": True}), bad)
    assert verdict.passed is False
    assert "survived the supervisor's shutdown" in verdict.message


def test_7_double_restart_starts_two_runs() -> None:
    """A manual restart during an automatic one spawning twice fails `restarts 1`."""
    bad = observation(
        [
            ev(0.5, "spawned", "starting"),
            ev(1, "healthy", "healthy"),
            ev(2, "spawned", "starting", "run 2", "manual"),
            ev(2.01, "spawned", "starting", "run 3", "manual"),
            ev(3, "healthy", "healthy"),
        ],
        steady=1.5,
    )
    passed, message = verdict_of({"restarts": {"model": "m1", "count": 1}}, bad)
    assert passed is False
    assert "restarted 2 times, expected exactly 1" in message
    assert "+2.00s (manual), +2.01s (manual)" in message


def test_8_blocked_event_loop_delays_another_models_recovery() -> None:
    """A model restarted only after another's long backoff fails its `healthy_within`."""
    bad = observation(
        [
            ev(0.5, "spawned", "starting", model="fast"),
            ev(1, "healthy", "healthy", model="fast"),
            ev(2, "exited", "backoff", "signal 9", model="fast"),
            ev(12, "spawned", "starting", model="fast"),
            ev(12.5, "healthy", "healthy", model="fast"),
        ],
        faults_end=2.0,
    )
    good = observation(
        [
            ev(0.5, "spawned", "starting", model="fast"),
            ev(1, "healthy", "healthy", model="fast"),
            ev(2, "exited", "backoff", "signal 9", model="fast"),
            ev(2.3, "spawned", "starting", model="fast"),
            ev(2.8, "healthy", "healthy", model="fast"),
        ],
        faults_end=2.0,
    )
    item = {"healthy_within": {"model": "fast", "within": 6}}
    assert verdict_of(item, good)[0] is True
    passed, message = verdict_of(item, bad)
    assert passed is False
    assert "became healthy only at +12.50s, 10.50s after the faults (6s allowed)" in message


def test_9_stop_did_not_stick() -> None:
    """An `always` model started again after a manual stop fails `state stopped stays`."""
    bad = observation(
        [
            ev(0.5, "spawned", "starting"),
            ev(1, "healthy", "healthy"),
            ev(2, "stopping", "stopping"),
            ev(2.2, "stopped", "stopped"),
            ev(2.5, "spawned", "starting", "run 2", "crash"),
            ev(3, "healthy", "healthy"),
        ],
        [snap(5, state="healthy")],
        faults_end=2.0,
    )
    passed, message = verdict_of({"state": {"model": "m1", "is": "stopped", "within": 5, "stays": True}}, bad)
    assert passed is False
    assert "reached 'stopped' at +2.20s but left it: spawned at +2.50s -> 'starting' (reason crash)" in message


def test_9_force_stop_counted_as_crash() -> None:
    """A force stop recorded as a crash fails `api failure_cause null`."""
    bad = observation(
        [
            ev(0.5, "spawned", "starting"),
            ev(1, "healthy", "healthy"),
            ev(2, "killed", "stopping"),
            ev(2.1, "stopped", "stopped"),
        ],
        [snap(4, state="stopped", failure_cause="crash", restart_count=1)],
    )
    passed, message = verdict_of({"api": {"model": "m1", "fields": {"failure_cause": None, "restart_count": 0}}}, bad)
    assert passed is False
    assert "failure_cause is 'crash', expected None" in message
    assert "restart_count is 1, expected 0" in message


def test_11_stale_oom_flag() -> None:
    """A `has_cuda_oom` still true after the model recovered fails `api has_cuda_oom false`."""
    bad = observation(
        [],
        [
            snap(2, state="backoff", failure_cause="oom", has_cuda_oom=True),
            snap(6, state="healthy", failure_cause=None, has_cuda_oom=True),
        ],
    )
    passed, message = verdict_of({"api": {"model": "m1", "fields": {"has_cuda_oom": False}}}, bad)
    assert passed is False
    assert "has_cuda_oom is True, expected False" in message


def test_13_max_restarts_zero_treated_as_unlimited() -> None:
    """`max_restarts: 0` restarting anyway fails `restarts 0` and `state failed`."""
    bad = observation(
        [
            ev(0.5, "spawned", "starting"),
            ev(1, "healthy", "healthy"),
            ev(2, "exited", "backoff", "signal 9", "crash"),
            ev(2, "backoff", "backoff", "5"),
            ev(7, "spawned", "starting", "run 2", "crash"),
        ],
        faults_end=2.0,
    )
    assert verdict_of({"restarts": {"model": "m1", "count": 0}}, bad)[0] is False
    passed, message = verdict_of({"state": {"model": "m1", "is": "failed", "within": 5}}, bad)
    assert passed is False
    assert "did not reach 'failed' within 5s" in message


def test_14_backoff_never_reset() -> None:
    """A backoff that keeps growing after long health fails `backoff_delays [0.5, 0.5]`."""
    bad = observation(crash_loop([0.5, 2.0], failed=False))
    good = observation(crash_loop([0.5, 0.5], failed=False))
    item = {"backoff_delays": {"model": "m1", "delays": [0.5, 0.5], "tolerance": 0.3}}
    assert verdict_of(item, good)[0] is True
    passed, message = verdict_of(item, bad)
    assert passed is False
    assert "backoff #2 at +3.60s declared '2', expected 0.5 ± 0.3s (last healthy at +2.60s)" in message


def test_constant_backoff_is_not_exponential() -> None:
    """A constant backoff schedule fails an exponential expectation, and the message says 'constant'."""
    bad = observation(crash_loop([0.5, 0.5, 0.5]))
    passed, message = verdict_of({"backoff_delays": {"model": "m1", "delays": [0.5, 1.0, 2.0], "tolerance": 0.2}}, bad)
    assert passed is False
    assert "constant, not exponential" in message


def test_slow_reaper_makes_real_waits_longer_than_declared() -> None:
    """A supervisor that declares 0.3 s but respawns 1.3 s later (supervisord's reaper) fails the timing."""
    events = crash_loop([0.3], failed=False)
    late = [
        e
        if e.kind != "spawned" or e.detail == "run 1"
        else ev(e.time - 1_700_000_000.0 + 1.0, "spawned", "starting", "run 2")
        for e in events
    ]
    passed, message = verdict_of(
        {"backoff_delays": {"model": "m1", "delays": [0.3], "tolerance": 0.2}}, observation(late)
    )
    assert passed is False
    assert "the next spawn came 1.30s later, expected 0.3 ± 0.2s" in message


def test_sigterm_never_escalated() -> None:
    """A supervisor that never sends SIGKILL to a server ignoring SIGTERM fails the stopping->killed gap."""
    bad = observation([ev(0.5, "spawned", "starting"), ev(1, "healthy", "healthy"), ev(2, "stopping", "stopping")])
    passed, message = verdict_of({"gap": {"model": "m1", "from": "stopping", "to": "killed", "seconds": 1}}, bad)
    assert passed is False
    assert "no 'killed' event" in message


@pytest.mark.parametrize(
    ("cause", "advice", "expected"),
    [
        ("oom", "Lower --gpu-memory-utilization or --max-model-len", True),
        ("oom", None, False),
        ("crash", "read the log", False),
    ],
)
def test_failure_cause_and_advice(cause: str, advice: str | None, expected: bool) -> None:
    """failure_cause needs the named cause, and the advice text when asked for."""
    obs = observation([], [snap(2, failure_cause=cause, failure_advice=advice)])
    item = {"failure_cause": {"model": "m1", "is": "oom", "advice_contains": "gpu-memory-utilization"}}
    assert verdict_of(item, obs)[0] is expected
