"""Judging each kind of expectation over an `Observation`: one function per kind, each giving (passed,
message). Pure, like checks.py (which dispatches to these): no IO, no clock."""

from __future__ import annotations

import re
from collections.abc import Mapping

from chaos.check_timeline import (
    _after_steady,
    _reference,
    _rel,
    _restart_spawns,
    _since,
    _who,
    describe_model,
    first_in_state,
    replica_events,
    state_points,
)
from chaos.expectations import (
    ApiFields,
    BackoffDelays,
    EventsSeen,
    FailureCause,
    Gap,
    Healthy,
    Requests,
    Restarts,
    StateIs,
)
from chaos.timeline import Event, Observation, RequestRecord
from chaos.traffic import failure, percentile, tally

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _healthy_within(spec: Healthy, obs: Observation) -> tuple[bool, str]:
    """Healthy at the end, and the last time it became healthy was within `within` of the reference.

    Being healthy at the reference alone is not enough: right after a fault the supervisor has usually not
    noticed it yet, and "healthy" then proves nothing about recovery.
    """
    ref = _reference(obs, spec.since)
    who = _who(spec.model, spec.replica)
    points = state_points(obs, spec.model, spec.replica)
    if not points or points[-1][1] != "healthy":
        final = points[-1][1] if points else None
        return False, (
            f"{who} was not healthy at the end ({_rel(obs, obs.ended_at)}, state {final!r}), "
            f"{spec.within:g}s allowed after {_since(obs, ref)}; " + describe_model(obs, spec.model)
        )
    became = points[-1][0]
    for t, state in reversed(points):  # the start of the trailing healthy stretch
        if state != "healthy":
            break
        became = t
    if became > ref + spec.within:
        return False, (
            f"{who} became healthy only at {_rel(obs, became)}, {became - ref:.2f}s after "
            f"{_since(obs, ref)} ({spec.within:g}s allowed); " + describe_model(obs, spec.model)
        )
    if became <= ref:
        return True, f"{who} healthy throughout (since {_rel(obs, became)})"
    return True, f"healthy again at {_rel(obs, became)} ({became - ref:.2f}s after {_since(obs, ref)})"


def _restarts(spec: Restarts, obs: Observation) -> tuple[bool, str]:
    spawns = _restart_spawns(obs, spec.model, spec.replica)
    who = _who(spec.model, spec.replica)
    n = len(spawns)
    low, high = (spec.count, spec.count) if spec.count is not None else (spec.min or 0, spec.max)
    wanted = f"exactly {low}" if low == high else f"at least {low}" + (f" and at most {high}" if high else "")
    if n >= low and (high is None or n <= high):
        return True, f"{who} restarted {n} times"
    seen = ", ".join(f"{_rel(obs, e.time)} ({_replica_note(e)}{e.reason or 'no reason'})" for e in spawns[:12])
    exits = [e for e in replica_events(obs, spec.model, spec.replica) if e.kind == "exited"]
    story = f"{who} restarted {n} times, expected {wanted}; restarts at: {seen or 'none'}"
    if exits:
        story += "; exits: " + ", ".join(f"{_rel(obs, e.time)} {_replica_note(e)}{e.detail}" for e in exits[:12])
    snaps = obs.model_snapshots(spec.model)
    if snaps:
        story += f"; final state {snaps[-1].state!r}, restart_count {snaps[-1].fields.get('restart_count')}"
    return False, story


def _state(spec: StateIs, obs: Observation) -> tuple[bool, str]:
    ref = _reference(obs)
    who = _who(spec.model, spec.replica)
    reached = first_in_state(obs, spec.model, spec.is_, ref, ref + spec.within, replica=spec.replica)
    if reached is None:
        return False, (
            f"{who} did not reach {spec.is_!r} within {spec.within:g}s after "
            f"{_since(obs, ref)}; " + describe_model(obs, spec.model)
        )
    if spec.stays:
        left = [(t, s) for t, s in state_points(obs, spec.model, spec.replica) if t > reached and s != spec.is_]
        if left:
            t, state = left[0]
            cause = next((e for e in replica_events(obs, spec.model, spec.replica) if e.time == t), None)
            why = f"{cause.kind} " if cause else ""
            reason = f" (reason {cause.reason})" if cause and cause.reason else ""
            return False, (
                f"{who} reached {spec.is_!r} at {_rel(obs, reached)} but left it: "
                f"{why}at {_rel(obs, t)} -> {state!r}{reason}"
            )
        final = state_points(obs, spec.model, spec.replica) if spec.replica is not None else []
        snaps = obs.model_snapshots(spec.model)
        last = final[-1][1] if final else (snaps[-1].state if snaps else None)
        if last is not None and last != spec.is_:
            return False, f"{who} reached {spec.is_!r} but ended {last!r}"
    return True, f"{who} {spec.is_} at {_rel(obs, reached)}" + (" and stayed" if spec.stays else "")


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
    after = _after_steady(obs, spec.model, spec.replica)
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
        who = _who(spec.model, spec.replica)
        return False, f"{who} events after the steady state {kinds[:30]}: " + "; ".join(problems)
    return True, f"{_who(spec.model, spec.replica)} events as expected ({len(after)} after the steady state)"


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


def _requests(spec: Requests, obs: Observation) -> tuple[bool, str]:
    """The client's view of the load: how many failed, how slow, how many a fallback answered."""
    start = obs.first_fault_applied if spec.window == "after_fault" else None
    judged = [
        r
        for r in obs.requests
        if r.model == spec.model
        and (start is None or r.started >= start)
        and (spec.stream is None or r.stream == spec.stream)
    ]
    kind = {None: "", True: " streamed", False: " plain"}[spec.stream]
    which = f"{spec.model}{kind} requests" + (" sent after the first fault" if start is not None else "")
    counts = tally(judged)
    p50, p99 = percentile([r.latency for r in judged], 50), percentile([r.latency for r in judged], 99)
    summary = f"{which}: {counts.describe()}"
    if p50 is not None and p99 is not None:
        summary += f"; latency p50 {p50:.3f}s, p99 {p99:.3f}s"
    fallbacks = sum(r.fallback is not None for r in judged)
    if fallbacks:
        summary += f"; {fallbacks} answered by a fallback"
    problems = []
    if counts.sent < spec.sent_min:
        problems.append(f"only {counts.sent} sent, at least {spec.sent_min} needed to prove anything")
    if spec.failed_max is not None and counts.failed > spec.failed_max:
        problems.append(f"{counts.failed} failed, at most {spec.failed_max} allowed: " + _failures(obs, judged))
    if spec.p99_max is not None and p99 is not None and p99 > spec.p99_max:
        slowest = sorted(judged, key=lambda r: r.latency, reverse=True)[:3]
        shown = ", ".join(f"{r.latency:.2f}s at {_rel(obs, r.started)}" for r in slowest)
        problems.append(f"p99 {p99:.3f}s is over {spec.p99_max:g}s (slowest: {shown})")
    if spec.fallback_min is not None and fallbacks < spec.fallback_min:
        served = sorted({str(r.served_by) for r in judged})
        problems.append(f"{fallbacks} answered by a fallback, {spec.fallback_min} expected (served by {served})")
    if problems:
        return False, summary + ". " + "; ".join(problems)
    return True, summary


def _failures(obs: Observation, records: list[RequestRecord]) -> str:
    """The first failed requests, each with its time and what went wrong."""
    shown = [
        f"{_rel(obs, r.started)} {r.path}{' stream' if r.stream else ''} after {r.latency:.2f}s: {failure(r)}"
        + (f" [{r.request_id}]" if r.request_id else "")
        for r in records
        if failure(r) is not None
    ]
    return "; ".join(shown[:6]) + (f"; and {len(shown) - 6} more" if len(shown) > 6 else "")


def _replica_note(event: Event) -> str:
    return f"replica {event.replica} " if event.replica else ""


def _no_orphans(obs: Observation) -> tuple[bool | None, str]:
    if not obs.processes_visible:
        return None, "not judged: the model processes are not visible from this host"
    current = obs.current_runs()  # the last poll wins
    problems = [
        f"orphan pid {s.pid} ({s.name}) of {_who(s.model, s.replica or None)}'s run {s.run_pid} was still alive "
        f"at the end, while the current run is {current.get((s.model, s.replica))}"
        for s in obs.sightings
        if s.key in obs.alive_at_end and s.run_pid != current.get((s.model, s.replica))
    ]
    problems += [
        f"at {_rel(obs, o.time)} processes of {len(o.run_pids)} runs of {_who(o.model, o.replica or None)} were "
        f"alive at once (runs {', '.join(map(str, o.run_pids))}): the old group was not gone before the new start"
        for o in obs.overlaps[:5]
    ]
    if obs.alive_after_shutdown:
        problems += [
            f"pid {s.pid} ({s.name}) of {s.model}'s run {s.run_pid} survived the supervisor's shutdown"
            for s in obs.sightings
            if s.key in obs.alive_after_shutdown
        ]
    problems += _stray_containers(obs, {model: pid for (model, replica), pid in current.items() if replica == 0})
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
