"""Pure judging: a scenario's steady state and expectations over an `Observation` -> verdicts.

No IO, no clock: the same recorded timeline always gets the same verdicts, which is how the unit tests feed
this module timelines of supervisors with each known supervision defect (docs/design/defects.md). A failing
verdict's message says what was seen, with times relative to the supervisor's start (`+3.20s`), so an
operator can act on it without a replay."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import assert_never

from chaos.expectations import (
    ApiFields,
    BackoffDelays,
    EventsSeen,
    ExpectItem,
    FailureCause,
    Gap,
    Healthy,
    NoOrphans,
    Restarts,
    StateIs,
    SteadyItem,
    TimedExpectation,
)
from chaos.scenario import Scenario
from chaos.timeline import Event, Observation

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


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
    label = f"steady_state healthy({spec.model})"
    reached = first_in_state(obs, spec.model, "healthy", obs.launched_at, obs.launched_at + spec.within)
    if reached is not None:
        return Verdict(label, True, f"{spec.model} healthy at {_rel(obs, reached)}")
    return Verdict(
        label,
        False,
        f"{spec.model} was not healthy within {spec.within:g}s of start; " + describe_model(obs, spec.model),
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
        case _:
            assert_never(spec)
    return Verdict(_label(item), passed, message)


# --- reading the timeline -----------------------------------------------------------------------------


def state_points(obs: Observation, model: str) -> list[tuple[float, str]]:
    """(time, state) changes: the supervisor's own event times when it serves events, else the polls."""
    events = obs.model_events(model)
    if events:
        return [(e.time, e.state) for e in events]
    return [(s.time, s.state) for s in obs.model_snapshots(model) if s.state is not None]


def first_in_state(obs: Observation, model: str, state: str, lo: float, hi: float) -> float | None:
    """The first moment in [lo, hi] the model was in `state` (lo itself if it already was)."""
    points = state_points(obs, model)
    before = [s for t, s in points if t <= lo]
    if before and before[-1] == state:
        return lo
    return next((t for t, s in points if lo < t <= hi and s == state), None)


def describe_model(obs: Observation, model: str) -> str:
    """A one-line account of where a model got to, for failure messages."""
    events = obs.model_events(model)
    snaps = obs.model_snapshots(model)
    parts = [f"last state {snaps[-1].state!r}" if snaps else "no status was ever served"]
    failed = [e for e in events if e.kind == "probe_failed"]
    if failed:
        parts.append(f"{len(failed)} failed probes (last: {failed[-1].detail!r})")
    spawns = [e for e in events if e.kind == "spawned"]
    if len(spawns) > 1:
        parts.append(f"spawned {len(spawns)} times")
    if snaps and snaps[-1].fields.get("health_message"):
        parts.append(f"health_message {snaps[-1].fields['health_message']!r}")
    return "; ".join(parts)


def _rel(obs: Observation, t: float) -> str:
    return f"+{t - obs.launched_at:.2f}s"


def _label(item: ExpectItem) -> str:
    return f"{item.kind}({item.model})" if item.model else item.kind


def _reference(obs: Observation, since: str = "faults") -> float:
    if since == "start":
        return obs.launched_at
    return obs.faults_end or obs.steady_at or obs.launched_at


def _since(obs: Observation, t: float) -> str:
    return "start" if t == obs.launched_at else "the faults"


def _after_steady(obs: Observation, model: str) -> list[Event]:
    """The model's events from the steady state on: what the faults and the recovery caused."""
    return [e for e in obs.model_events(model) if obs.steady_at is None or e.time >= obs.steady_at]


def _restart_spawns(obs: Observation, model: str) -> list[Event]:
    """`spawned` events during the observation, less the model's very first start."""
    spawns = [e for e in obs.model_events(model) if e.kind == "spawned"]
    return [e for e in spawns[1:] if e.time >= obs.launched_at]


# --- the expectations ---------------------------------------------------------------------------------


def _healthy_within(spec: Healthy, obs: Observation) -> tuple[bool, str]:
    """Healthy at the end, and the last time it became healthy was within `within` of the reference.

    Being healthy at the reference alone is not enough: right after a fault the supervisor has usually not
    noticed it yet, and "healthy" then proves nothing about recovery.
    """
    ref = _reference(obs, spec.since)
    points = state_points(obs, spec.model)
    if not points or points[-1][1] != "healthy":
        final = points[-1][1] if points else None
        return False, (
            f"{spec.model} was not healthy at the end ({_rel(obs, obs.ended_at)}, state {final!r}), "
            f"{spec.within:g}s allowed after {_since(obs, ref)}; " + describe_model(obs, spec.model)
        )
    became = points[-1][0]
    for t, state in reversed(points):  # the start of the trailing healthy stretch
        if state != "healthy":
            break
        became = t
    if became > ref + spec.within:
        return False, (
            f"{spec.model} became healthy only at {_rel(obs, became)}, {became - ref:.2f}s after "
            f"{_since(obs, ref)} ({spec.within:g}s allowed); " + describe_model(obs, spec.model)
        )
    if became <= ref:
        return True, f"{spec.model} healthy throughout (since {_rel(obs, became)})"
    return True, f"healthy again at {_rel(obs, became)} ({became - ref:.2f}s after {_since(obs, ref)})"


def _restarts(spec: Restarts, obs: Observation) -> tuple[bool, str]:
    spawns = _restart_spawns(obs, spec.model)
    n = len(spawns)
    low, high = (spec.count, spec.count) if spec.count is not None else (spec.min or 0, spec.max)
    wanted = f"exactly {low}" if low == high else f"at least {low}" + (f" and at most {high}" if high else "")
    if n >= low and (high is None or n <= high):
        return True, f"{spec.model} restarted {n} times"
    seen = ", ".join(f"{_rel(obs, e.time)} ({e.reason or 'no reason'})" for e in spawns[:12]) or "none"
    exits = [e for e in obs.model_events(spec.model) if e.kind == "exited"]
    story = f"{spec.model} restarted {n} times, expected {wanted}; restarts at: {seen}"
    if exits:
        story += "; exits: " + ", ".join(f"{_rel(obs, e.time)} {e.detail}" for e in exits[:12])
    snaps = obs.model_snapshots(spec.model)
    if snaps:
        story += f"; final state {snaps[-1].state!r}, restart_count {snaps[-1].fields.get('restart_count')}"
    return False, story


def _state(spec: StateIs, obs: Observation) -> tuple[bool, str]:
    ref = _reference(obs)
    reached = first_in_state(obs, spec.model, spec.is_, ref, ref + spec.within)
    if reached is None:
        return False, (
            f"{spec.model} did not reach {spec.is_!r} within {spec.within:g}s after "
            f"{_since(obs, ref)}; " + describe_model(obs, spec.model)
        )
    if spec.stays:
        left = [e for e in obs.model_events(spec.model) if e.time > reached and e.state != spec.is_]
        if left:
            e = left[0]
            return False, (
                f"{spec.model} reached {spec.is_!r} at {_rel(obs, reached)} but left it: "
                f"{e.kind} at {_rel(obs, e.time)} -> {e.state!r}" + (f" (reason {e.reason})" if e.reason else "")
            )
        snaps = obs.model_snapshots(spec.model)
        if snaps and snaps[-1].state != spec.is_:
            return False, f"{spec.model} reached {spec.is_!r} but ended {snaps[-1].state!r}"
    return True, f"{spec.model} {spec.is_} at {_rel(obs, reached)}" + (" and stayed" if spec.stays else "")


def parse_seconds(detail: str | None) -> float | None:
    match = _NUMBER.search(detail or "")
    return float(match.group()) if match else None


def _backoff(spec: BackoffDelays, obs: Observation) -> tuple[bool, str]:
    events = [e for e in obs.model_events(spec.model) if e.time >= obs.launched_at]
    backoffs = [e for e in events if e.kind == "backoff"]
    declared = [parse_seconds(e.detail) for e in backoffs]
    problems: list[str] = []
    if len(backoffs) != len(spec.delays):
        problems.append(f"expected {len(spec.delays)} backoff delays, saw {len(backoffs)}")
    for i, (event, want, got) in enumerate(zip(backoffs, spec.delays, declared, strict=False), start=1):
        spawn = next((e for e in events if e.kind == "spawned" and e.time >= event.time), None)
        healthy = [e for e in events if e.kind == "healthy" and e.time < event.time]
        context = f" (last healthy at {_rel(obs, healthy[-1].time)})" if healthy else ""
        if got is None or abs(got - want) > spec.tolerance:
            problems.append(
                f"backoff #{i} at {_rel(obs, event.time)} declared {event.detail!r}, "
                f"expected {want:g} ± {spec.tolerance:g}s{context}"
            )
        if spawn is not None and abs((spawn.time - event.time) - want) > spec.tolerance:
            problems.append(
                f"backoff #{i}: the next spawn came {spawn.time - event.time:.2f}s later, "
                f"expected {want:g} ± {spec.tolerance:g}s"
            )
    numbers = [d for d in declared if d is not None]
    grows = any(b > a for a, b in zip(spec.delays, spec.delays[1:], strict=False))
    if grows and len(numbers) > 1 and len(set(numbers)) == 1:
        problems.append("the delay never grew: the schedule is constant, not exponential")
    if problems:
        return False, f"{spec.model} backoff delays {numbers}: " + "; ".join(problems)
    return True, f"{spec.model} backoff delays {numbers} within ± {spec.tolerance:g}s"


def _failure_cause(spec: FailureCause, obs: Observation) -> tuple[bool, str]:
    snaps = [s for s in obs.model_snapshots(spec.model) if s.fields.get("failure_cause") == spec.is_]
    exits = [e for e in obs.model_events(spec.model) if e.kind == "exited" and e.reason == spec.is_]
    if not snaps and not exits:
        seen = sorted({str(s.fields.get("failure_cause")) for s in obs.model_snapshots(spec.model)})
        return False, (
            f"{spec.model}'s failure_cause was never {spec.is_!r} (seen: {', '.join(seen)}); "
            + describe_model(obs, spec.model)
        )
    if spec.advice_contains is not None:
        advice = [str(s.fields.get("failure_advice") or "") for s in snaps]
        if not any(spec.advice_contains.lower() in a.lower() for a in advice):
            return False, (
                f"{spec.model}'s failure_cause was {spec.is_!r} but its failure_advice never "
                f"mentioned {spec.advice_contains!r} (seen: {sorted(set(advice))})"
            )
    when = snaps[0].time if snaps else exits[0].time
    return True, f"{spec.model} failure_cause {spec.is_!r} at {_rel(obs, when)}"


def _api(spec: ApiFields, obs: Observation) -> tuple[bool, str]:
    snaps = obs.model_snapshots(spec.model)
    if not snaps:
        return False, f"the API never served a status for {spec.model}"
    final = snaps[-1].fields
    wrong = [
        f"{k} is {final.get(k)!r}, expected {v!r}" for k, v in spec.fields.items() if k not in final or final[k] != v
    ]
    if wrong:
        return False, f"{spec.model} at the end: " + "; ".join(wrong)
    return True, f"{spec.model} at the end: " + ", ".join(f"{k}={v!r}" for k, v in spec.fields.items())


def _events(spec: EventsSeen, obs: Observation) -> tuple[bool, str]:
    after = _after_steady(obs, spec.model)
    kinds = [e.kind for e in after]
    position, missing = 0, []
    for wanted in spec.include:
        hit = next((i for i in range(position, len(kinds)) if kinds[i] == wanted), None)
        if hit is None:
            missing.append(wanted)
        else:
            position = hit + 1
    unwanted = [e for e in after if e.kind in spec.exclude]
    problems = []
    if missing:
        problems.append(f"missing (in order {spec.include}): {missing}")
    if unwanted:
        problems.append(
            "unexpected: "
            + ", ".join(
                f"{e.kind} at {_rel(obs, e.time)}" + (f" ({e.detail})" if e.detail else "") for e in unwanted[:8]
            )
        )
    if problems:
        return False, f"{spec.model} events after the steady state {kinds[:30]}: " + "; ".join(problems)
    return True, f"{spec.model} events as expected ({len(after)} after the steady state)"


def _gap(spec: Gap, obs: Observation) -> tuple[bool, str]:
    events = _after_steady(obs, spec.model)
    start = next((e for e in events if e.kind == spec.from_), None)
    end = next((e for e in events if start and e.kind == spec.to and e.time >= start.time), None)
    if start is None or end is None:
        missing = spec.from_ if start is None else spec.to
        return False, f"{spec.model}: no {missing!r} event to measure from {spec.from_} to {spec.to}"
    gap = end.time - start.time
    if abs(gap - spec.seconds) > spec.tolerance:
        return False, (
            f"{spec.model}: {spec.from_} -> {spec.to} took {gap:.2f}s, expected {spec.seconds:g} ± {spec.tolerance:g}s"
        )
    return True, f"{spec.model}: {spec.from_} -> {spec.to} took {gap:.2f}s"


def _no_orphans(obs: Observation) -> tuple[bool | None, str]:
    if not obs.processes_visible:
        return None, "not judged: the model processes are not visible from this host"
    ordered = sorted(obs.snapshots, key=lambda s: s.time)
    current = {s.model: s.fields.get("pid") for s in ordered}  # the last poll wins
    problems = [
        f"orphan pid {s.pid} ({s.name}) of {s.model}'s run {s.run_pid} was still alive at the end, "
        f"while the current run is {current.get(s.model)}"
        for s in obs.sightings
        if s.key in obs.alive_at_end and s.run_pid != current.get(s.model)
    ]
    problems += [
        f"at {_rel(obs, o.time)} processes of {len(o.run_pids)} runs of {o.model} were alive at once "
        f"(runs {', '.join(map(str, o.run_pids))}): the old group was not gone before the new start"
        for o in obs.overlaps[:5]
    ]
    if obs.alive_after_shutdown:
        problems += [
            f"pid {s.pid} ({s.name}) of {s.model}'s run {s.run_pid} survived the supervisor's shutdown"
            for s in obs.sightings
            if s.key in obs.alive_after_shutdown
        ]
    problems += _stray_containers(obs, current)
    if problems:
        return False, "; ".join(problems[:12])
    checked = " and the scenario's containers" if obs.containers_after_shutdown is not None else ""
    return True, f"{len(obs.sightings)} processes seen{checked}; none left behind"


def _stray_containers(obs: Observation, current: Mapping[str, object]) -> list[str]:
    """Containers of the scenario that outlived their run: only the current run's may exist at the end
    (an exited one the supervisor did not remove counts, it still holds its name and volumes), none after
    the supervisor's shutdown."""
    problems = [
        f"container {c.name} of {c.model} ({c.status}, pid {c.pid}) was still there at the end, "
        f"while the current run is {current.get(c.model)}"
        for c in obs.containers_at_end
        if c.status != "running" or c.pid != current.get(c.model)
    ]
    problems += [
        f"container {c.name} of {c.model} ({c.status}) survived the supervisor's shutdown"
        for c in obs.containers_after_shutdown or ()
    ]
    return problems
