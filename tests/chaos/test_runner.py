"""The runner: steady state failure, remote refusals, remote runs, and clean-up in every case."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from chaos.fixtures import Supervised
from chaos.runner import RunOptions, run_scenario, scenario_seed
from chaos.scenario import parse_scenario
from chaos.target import TOKEN_ENV


def test_scenario_seeds_are_stable_and_distinct() -> None:
    """The same run seed gives a scenario the same seed every time, and different scenarios differ."""
    assert scenario_seed(7, "a") == scenario_seed(7, "a")
    assert scenario_seed(7, "a") != scenario_seed(7, "b")
    assert scenario_seed(7, "a") != scenario_seed(8, "a")


async def test_remote_scenario_with_process_actions_is_skipped_untouched() -> None:
    """Against a remote target, a kill without allow_process_actions skips the scenario before any request."""
    scenario = parse_scenario(
        {
            "name": "remote-kill",
            "story": "s",
            "faults": [{"action": "kill", "target": {"model": "m1"}}],
            "expect": [{"restarts": {"model": "m1", "count": 1}}],
        }
    )
    result = await run_scenario(scenario, RunOptions(supervisor_url="http://127.0.0.1:9"))  # nothing listens
    assert result.outcome == "skipped"
    assert "allow_process_actions" in result.message


async def test_remote_scenario_with_load_needs_the_gateway_url() -> None:
    """Requests through the gateway need its URL: without --gateway the scenario is skipped untouched (the
    supervisor URL has nothing listening, so any request would have made it an error)."""
    scenario = parse_scenario(
        {
            "name": "remote-load",
            "story": "s",
            "load": {"model": "m1"},
            "faults": [{"action": "api", "operation": "restart", "rolling": True, "target": {"model": "m1"}}],
            "expect": [{"requests": {"model": "m1", "failed_max": 0}}],
        }
    )
    result = await run_scenario(scenario, RunOptions(supervisor_url="http://127.0.0.1:9"))
    assert result.outcome == "skipped"
    assert "load: the scenario sends requests through the gateway; give its URL with --gateway URL" in result.message
    with_gateway = await run_scenario(
        scenario, RunOptions(supervisor_url="http://127.0.0.1:9", gateway_url="http://127.0.0.1:9")
    )
    assert with_gateway.outcome == "error"  # no longer refused up front: it tried, and nothing listens there


async def test_steady_state_failure_injects_nothing(no_leftovers: None) -> None:
    """A model that never gets healthy fails the steady state; the expectations are not judged."""
    scenario = parse_scenario(
        {
            "name": "never-ready",
            "story": "s",
            "target": {"models": {"m1": {"fake_vllm": ["--startup-delay", "600"], "stop_timeout": 1}}},
            "steady_state": [{"healthy": {"model": "m1", "within": 2}}],
            "faults": [{"action": "kill", "target": {"model": "m1"}}],
            "expect": [{"restarts": {"model": "m1", "count": 1}}],
        }
    )
    result = await run_scenario(scenario, RunOptions())
    assert result.outcome == "failed"
    assert [(v.check, v.passed) for v in result.verdicts] == [
        ("steady_state healthy(m1)", False),
        ("restarts(m1)", None),
    ]
    assert result.observation is not None
    assert result.observation.faults == ()


@pytest.mark.slow
async def test_remote_run_against_a_deployed_supervisor(
    no_leftovers: None, supervised: Callable[..., Supervised], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --supervisor URL the harness judges a supervisor it did not start, using the token from env."""
    target = supervised({"m1": {"restart_policy": "always", "startup_probe_interval": 0.2}})
    monkeypatch.setenv("CHAOS_TEST_TOKEN", target.supervisor.token)
    scenario = parse_scenario(
        {
            "name": "remote-stop",
            "story": "s",
            "steady_state": [{"healthy": {"model": "m1", "within": 20}}],
            "faults": [{"at": 0.2, "action": "api", "target": {"model": "m1"}, "operation": "stop"}],
            "expect": [{"state": {"model": "m1", "is": "stopped", "within": 5, "stays": True}}, {"no_orphans": True}],
            "duration": 0.5,
        }
    )
    options = RunOptions(supervisor_url=target.url, token=os.environ["CHAOS_TEST_TOKEN"])
    result = await run_scenario(scenario, options)
    verdicts: dict[str, Any] = {v.check: v.passed for v in result.verdicts}
    assert result.outcome == "passed", result.verdicts
    assert verdicts["no_orphans"] is None  # processes of a remote target are not judged
    assert target.status("m1")["state"] == "stopped"
    assert TOKEN_ENV not in os.environ
