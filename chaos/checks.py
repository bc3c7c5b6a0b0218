"""Pure judging: a scenario's steady state and expectations over an `Observation` -> verdicts.

No IO, no clock: the same recorded timeline always gets the same verdicts, which is how the unit tests feed
this module timelines of supervisors with each known supervision defect (docs/design/defects.md). A failing
verdict's message says what was seen, with times relative to the supervisor's start (`+3.20s`), so an
operator can act on it without a replay. This module dispatches; the timeline is read in check_timeline.py
and each kind of expectation is judged in check_expectations.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from chaos.check_expectations import (
    _api,
    _backoff,
    _events,
    _failure_cause,
    _gap,
    _healthy_within,
    _no_orphans,
    _requests,
    _restarts,
    _state,
)
from chaos.check_timeline import _label, _reference, _rel, _who, describe_model, first_in_state
from chaos.expectations import (
    ApiFields,
    BackoffDelays,
    EventsSeen,
    ExpectItem,
    FailureCause,
    Gap,
    Healthy,
    NoOrphans,
    Requests,
    Restarts,
    StateIs,
    SteadyItem,
    TimedExpectation,
)
from chaos.scenario import Scenario
from chaos.timeline import Observation


@dataclass(frozen=True, slots=True)
class Verdict:
    """One judged check. `passed` is None when it could not be judged (the reason is the message)."""

    check: str
    passed: bool | None
    message: str


def judge(scenario: Scenario, obs: Observation) -> list[Verdict]:
    """Every verdict of a run: steady state first, then each expectation in the file's order."""
    verdicts = [judge_steady(item, obs) for item in scenario.steady_state]
    if obs.steady_at is None:
        reason = "not judged: the steady state never held, so no fault was injected"
        return verdicts + [Verdict(_label(e), None, reason) for e in scenario.expect]
    return verdicts + [judge_expectation(item, obs) for item in scenario.expect]


def deadline(spec: TimedExpectation, obs: Observation) -> float:
    """The last moment a timed expectation (healthy_within, state) can still be met."""
    match spec:
        case Healthy():
            since = spec.since
        case StateIs():
            since = "faults"  # a state is always awaited after the faults
        case _:
            assert_never(spec)
    return _reference(obs, since) + spec.within


def judge_steady(item: SteadyItem, obs: Observation) -> Verdict:
    spec = item.healthy
    who = _who(spec.model, spec.replica)
    label = f"steady_state healthy({who})"
    lo, hi = obs.launched_at, obs.launched_at + spec.within
    reached = first_in_state(obs, spec.model, "healthy", lo, hi, replica=spec.replica)
    if reached is not None:
        return Verdict(label, True, f"{who} healthy at {_rel(obs, reached)}")
    return Verdict(
        label,
        False,
        f"{who} was not healthy within {spec.within:g}s of start; " + describe_model(obs, spec.model),
    )


def judge_expectation(item: ExpectItem, obs: Observation) -> Verdict:
    passed: bool | None
    spec = item.expectation
    match spec:
        case Healthy():
            passed, message = _healthy_within(spec, obs)
        case Restarts():
            passed, message = _restarts(spec, obs)
        case StateIs():
            passed, message = _state(spec, obs)
        case BackoffDelays():
            passed, message = _backoff(spec, obs)
        case FailureCause():
            passed, message = _failure_cause(spec, obs)
        case NoOrphans():
            passed, message = _no_orphans(obs)
        case ApiFields():
            passed, message = _api(spec, obs)
        case EventsSeen():
            passed, message = _events(spec, obs)
        case Gap():
            passed, message = _gap(spec, obs)
        case Requests():
            passed, message = _requests(spec, obs)
        case _:
            assert_never(spec)
    return Verdict(_label(item), passed, message)
