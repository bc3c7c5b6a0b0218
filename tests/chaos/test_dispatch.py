"""Every fault step type and every expectation type is handled.

mypy proves each `match` over the `AnyStep` and `Expectation` unions exhaustive. These tests cover what it
cannot see: a new member must parse from YAML, reach its own branch (never `assert_never`), and be listed
wherever the members are enumerated by hand (`ExpectItem.expectation`, `TimedExpectation`, `Need`). Adding a
type without an example below fails the first test of its group, so the rest cannot pass by omission.
"""

from __future__ import annotations

from typing import Any, cast, get_args

import pytest
from pydantic import TypeAdapter

from chaos.actions import Action, Need, Reach, action, refusal
from chaos.checks import deadline, judge, judge_expectation
from chaos.expectations import Expectation, ExpectItem, NoOrphans, TimedExpectation, expectation_model
from chaos.plan import describe_plan, describe_step
from chaos.runner import RunOptions
from chaos.scenario import parse_scenario
from chaos.steps import (
    AnyStep,
    ApiStep,
    EngineDeadStep,
    ExecStep,
    FaultStep,
    HangStep,
    HttpStep,
    KillStep,
    NetStep,
    NoneStep,
    OomStep,
    SignalStep,
    Step,
    SupervisorStep,
    step_end,
    step_model,
)
from tests.chaos.timelines import ev, observation, snap

# One valid step of each type, as a scenario file writes it.
STEP_EXAMPLES: dict[type[AnyStep], dict[str, Any]] = {
    NoneStep: {"action": "none"},
    SignalStep: {"action": "signal", "target": {"model": "m1"}, "signal": "SIGTERM"},
    KillStep: {"action": "kill", "target": {"model": "m1"}},
    HangStep: {"action": "hang", "target": {"model": "m1"}, "for": 2},
    OomStep: {"action": "oom", "target": {"model": "m1"}},
    EngineDeadStep: {"action": "engine_dead", "target": {"model": "m1"}},
    FaultStep: {"action": "fault", "target": {"model": "m1"}, "set": {"hang_health": True}},
    NetStep: {"action": "net", "target": {"model": "m1"}, "toxic": "blackhole", "for": 1},
    ApiStep: {"action": "api", "target": {"model": "m1"}, "operation": "restart"},
    SupervisorStep: {"action": "supervisor"},
    HttpStep: {"action": "http", "url": "{api}/health"},
    ExecStep: {"action": "exec", "command": ["true"]},
}

# One valid expectation of each key of ExpectItem, as a scenario file writes it.
EXPECTATION_EXAMPLES: dict[str, object] = {
    "healthy_within": {"model": "m1", "within": 5},
    "restarts": {"model": "m1", "count": 1},
    "state": {"model": "m1", "is": "stopped", "within": 5},
    "backoff_delays": {"model": "m1", "delays": [0.5]},
    "failure_cause": {"model": "m1", "is": "crash"},
    "no_orphans": True,
    "api": {"model": "m1", "fields": {"state": "healthy"}},
    "events": {"model": "m1", "include": ["spawned"]},
    "gap": {"model": "m1", "from": "stopping", "to": "killed", "seconds": 1},
    "requests": {"model": "m1", "failed_max": 0},
}
LOAD = {"model": "m1"}  # `requests` are judged on the scenario's load

EVERYWHERE = Reach(processes=True, own_supervisor=True, proxied=frozenset({"m1"}), admin=frozenset({"m1"}), local=True)
REMOTE = Reach()  # the API only


def parse_step(data: dict[str, Any]) -> AnyStep:
    return TypeAdapter(Step).validate_python(data)


def item(key: str) -> ExpectItem:
    return ExpectItem.model_validate({key: EXPECTATION_EXAMPLES[key]})


def ran_a_while() -> Any:
    """A model that started, became healthy and stayed so: enough for every expectation to be judged."""
    events = [ev(0.5, "spawned", "starting", "run 1"), ev(1.0, "healthy", "healthy")]
    return observation(events, [snap(5, state="healthy", pid=100)], steady=1.0)


# --- fault steps --------------------------------------------------------------------------------------


def test_every_step_type_has_an_example() -> None:
    assert set(STEP_EXAMPLES) == set(get_args(AnyStep))
    assert get_args(Step)[0] == AnyStep  # the tagged union pydantic parses is the one `match` narrows


@pytest.mark.parametrize("step_type", get_args(AnyStep), ids=lambda t: t.__name__)
def test_every_step_type_is_dispatched(step_type: type[AnyStep]) -> None:
    """Each step parses to its own type and reaches its own branch of action(), step_model() and step_end()."""
    step = parse_step(STEP_EXAMPLES[step_type])
    assert type(step) is step_type
    bound = action(step)
    assert isinstance(bound, Action)
    assert bound.needs in get_args(Need)
    assert step_model(step) in ("m1", None)
    assert step_end(step) >= step.at
    assert refusal(step, EVERYWHERE) is None
    assert (refusal(step, REMOTE) is None) == (bound.needs == "anywhere")
    assert describe_step(step).startswith(step.action)


def test_every_need_is_some_steps_need() -> None:
    """No need is left over that refusal() judges but no step has (nor one a step has and refusal() lacks)."""
    needs = {action(parse_step(data)).needs for data in STEP_EXAMPLES.values()}
    assert needs == set(get_args(Need))


def test_an_unknown_step_is_refused_loudly() -> None:
    """Something that is no step type stops at assert_never instead of being treated as some other step."""
    with pytest.raises(AssertionError):
        action(cast(Step, object()))
    with pytest.raises(AssertionError):
        step_model(cast(Step, object()))
    with pytest.raises(AssertionError):
        step_end(cast(Step, object()))


# --- expectations -------------------------------------------------------------------------------------


def test_every_expectation_key_has_an_example() -> None:
    assert set(EXPECTATION_EXAMPLES) == set(ExpectItem.model_fields)


def test_each_key_is_one_member_of_the_union() -> None:
    """`ExpectItem.expectation` lists every key, each as its own member: one key per type, one type per key."""
    types = {key: type(item(key).expectation) for key in EXPECTATION_EXAMPLES}
    assert sorted(t.__name__ for t in types.values()) == sorted(t.__name__ for t in get_args(Expectation))
    for key, spec_type in types.items():
        declared = ExpectItem.model_fields[key].annotation
        assert spec_type is NoOrphans if key == "no_orphans" else spec_type in get_args(declared)


@pytest.mark.parametrize("key", list(EXPECTATION_EXAMPLES))
def test_every_expectation_is_judged_as_itself(key: str) -> None:
    """Each expectation reaches its own judge: the verdict is labelled with its key and its model."""
    expectation = item(key)
    verdict = judge_expectation(expectation, ran_a_while())
    model = expectation_model(expectation.expectation)
    assert model == expectation.model == (None if key == "no_orphans" else "m1")
    assert verdict.check == (f"{key}({model})" if model else key)
    assert verdict.passed in (True, False, None)
    assert verdict.message


def test_no_orphans_is_no_longer_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """An expectation of an unknown type stops at assert_never; it used to be judged as `no_orphans`."""
    monkeypatch.setattr(ExpectItem, "expectation", property(lambda self: object()))
    monkeypatch.setattr(ExpectItem, "model", property(lambda self: "m1"))  # so only the judging can object
    with pytest.raises(AssertionError):
        judge_expectation(item("restarts"), ran_a_while())
    with pytest.raises(AssertionError):
        expectation_model(cast(Expectation, object()))


def test_the_timed_expectations_are_those_with_a_within() -> None:
    """Every type with a `within` is awaited by the observation, and has a deadline."""
    with_within = {t for t in get_args(Expectation) if "within" in t.model_fields}
    assert with_within == set(get_args(TimedExpectation))
    scenario = parse_scenario(
        {
            "name": "all",
            "story": "every expectation",
            "load": LOAD,
            "expect": [{k: v} for k, v in EXPECTATION_EXAMPLES.items()],
        }
    )
    timed = scenario.timed()
    assert {type(spec) for spec in timed} == with_within
    obs = ran_a_while()
    assert all(deadline(spec, obs) > obs.launched_at for spec in timed)


def test_a_whole_scenario_of_every_type_is_judged_and_planned() -> None:
    """judge() and the dry-run plan go through every step and expectation type, not judged or judged."""
    data = {
        "name": "all",
        "story": "every step and every expectation",
        "target": {"models": {"m1": {}}},
        "load": LOAD,
        "faults": list(STEP_EXAMPLES.values()),
        "expect": [{k: v} for k, v in EXPECTATION_EXAMPLES.items()],
    }
    scenario = parse_scenario(data)
    assert [v.check.split("(")[0] for v in judge(scenario, ran_a_while())] == list(EXPECTATION_EXAMPLES)
    not_steady = judge(scenario, observation([], steady=None))
    assert all(v.passed is None for v in not_steady)
    plan = describe_plan(scenario, RunOptions(supervisor_url="http://10.1.2.3:8099"))
    assert all(f"expect {key}: " in plan for key in EXPECTATION_EXAMPLES)
    refused = sum(refusal(s, REMOTE) is not None for s in scenario.faults)
    assert plan.count("would be SKIPPED") == refused + 1  # the load too: no --gateway URL was given
    gateway = RunOptions(supervisor_url="http://10.1.2.3:8099", gateway_url="http://10.1.2.3:8000")
    assert describe_plan(scenario, gateway).count("would be SKIPPED") == refused
