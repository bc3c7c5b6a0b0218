"""The phases of one scenario against a target that is already up, local or remote alike: wait for the steady
state, start the scenario's `load` through the gateway, carry out the faults on schedule (reverting those
with a `for`), watch until the expectations are settled, let the requests in flight end, and put things back
with the cleanup steps.

The runner owns what differs between targets (starting, stopping, killing leftovers); everything here only
acts through a `Context` and watches through its `Observer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace

import httpx

from chaos import checks, procs
from chaos.actions import ActionError, Context, Revert, perform
from chaos.checks import Verdict
from chaos.load import Traffic
from chaos.observer import Observer
from chaos.scenario import Scenario
from chaos.steps import step_end, step_model
from chaos.timeline import FaultRecord, Observation, RequestRecord

Progress = Callable[[str], None]


async def drive(
    scenario: Scenario, ctx: Context, launched_at: float, interval: float, progress: Progress
) -> tuple[Observation, list[Verdict]]:
    """Steady state, then the faults on schedule, then the observation window."""
    observer = ctx.observer
    observer.start(interval)
    steady_at = await _await_steady(scenario, observer, launched_at, interval)
    records: list[FaultRecord] = []
    verdicts: list[Verdict] = []
    faults_end = None
    traffic: Traffic | None = None
    if steady_at is None:
        progress("steady state did not hold; no fault injected")
    else:
        progress(f"steady state held at +{steady_at - launched_at:.2f}s")
        traffic, verdicts = await _start_load(scenario, ctx, progress)
        try:
            records, failed = await _inject(scenario, ctx, steady_at, progress)
            verdicts += failed
            faults_end = max([steady_at] + [r.ended or r.started for r in records])
            await _watch(
                scenario,
                observer,
                launched_at=launched_at,
                steady_at=steady_at,
                faults_end=faults_end,
                interval=interval,
                progress=progress,
                requests=traffic.snapshot if traffic else tuple,
            )
        finally:
            if traffic is not None:
                progress("load: no new request; waiting for those in flight")
                await traffic.stop()
    ended_at = time.time()
    await observer.stop()
    await observer.poll()  # one last look at the end state
    alive = procs.alive(set(observer.sightings)) if observer.processes_visible else frozenset()
    obs = observer.observation(
        launched_at,
        steady_at=steady_at,
        faults_end=faults_end,
        ended_at=ended_at,
        faults=tuple(records),
        alive_at_end=alive,
        requests=traffic.snapshot() if traffic else (),
    )
    return obs, verdicts


async def _start_load(scenario: Scenario, ctx: Context, progress: Progress) -> tuple[Traffic | None, list[Verdict]]:
    """Start the scenario's requests once the gateway answers; a gateway that never does fails the run."""
    if scenario.load is None or ctx.gateway_url is None:
        return None, []
    traffic = Traffic(scenario.load, ctx.gateway_url, ctx.gateway_headers)
    if not await traffic.wait_ready():
        message = f"the gateway at {ctx.gateway_url} did not list its models; no request was sent"
        progress(f"load: {message}")
        return None, [Verdict("load", False, message)]
    load = scenario.load
    mode = f"{load.rate:g}/s" if load.rate else "closed loop"
    kind = {True: "streamed ", False: "", "both": "streamed and plain "}[load.stream] + load.kind
    progress(f"load: {load.concurrency} clients, {kind} to {load.model} via {ctx.gateway_url} ({mode})")
    traffic.start()
    return traffic, []


async def _watch(
    scenario: Scenario,
    observer: Observer,
    *,
    launched_at: float,
    steady_at: float,
    faults_end: float,
    interval: float,
    progress: Progress,
    requests: Callable[[], tuple[RequestRecord, ...]] = tuple,
) -> None:
    """Observe until every expectation holds (then `duration` more), or until the last `within` runs out.

    Without timed expectations the watch is `duration` after the faults. Stopping early keeps the
    catalogue quick; the `duration` that follows is what catches a restart that comes too late.
    """
    settle = scenario.settle_for()
    obs = observer.observation(launched_at, steady_at=steady_at, faults_end=faults_end, requests=requests())
    hard = max([faults_end + settle] + [checks.deadline(spec, obs) for spec in scenario.timed()])
    if scenario.observe_at_most is not None:
        hard = faults_end + scenario.observe_at_most
    progress(f"observing until the expectations hold (at most {hard - time.time():.1f}s), then {settle:g}s")
    while time.time() < hard:
        obs = observer.observation(launched_at, steady_at=steady_at, faults_end=faults_end, requests=requests())
        if all(checks.judge_expectation(item, obs).passed for item in scenario.expect):
            await _sleep_until(min(hard, time.time() + settle))
            return
        await asyncio.sleep(interval)


async def _await_steady(scenario: Scenario, observer: Observer, launched_at: float, interval: float) -> float | None:
    deadline = launched_at + max((s.healthy.within for s in scenario.steady_state), default=0.0)
    while True:
        obs = observer.observation(launched_at)
        if all(checks.judge_steady(item, obs).passed for item in scenario.steady_state):
            return time.time()
        if time.time() > deadline:
            return None
        await asyncio.sleep(interval)


async def _inject(
    scenario: Scenario, ctx: Context, steady_at: float, progress: Progress
) -> tuple[list[FaultRecord], list[Verdict]]:
    records: list[FaultRecord] = []
    verdicts: list[Verdict] = []
    reverts: list[tuple[asyncio.Task[None], Revert]] = []
    try:
        await _inject_in_order(scenario, ctx, steady_at, progress, records=records, verdicts=verdicts, reverts=reverts)
        await asyncio.gather(*(task for task, _ in reverts))
    except BaseException:
        # Broken off (an error, a cancelled run): a fault with a `for` is undone now, not left in place (a
        # SIGSTOPped server on staging would stay frozen).
        for task, revert in reverts:
            if not task.done():
                task.cancel()
                with contextlib.suppress(OSError, httpx.HTTPError, ActionError):
                    progress(f"reverted early: {await revert()}")
        raise
    return records, verdicts


async def _inject_in_order(
    scenario: Scenario,
    ctx: Context,
    steady_at: float,
    progress: Progress,
    *,
    records: list[FaultRecord],
    verdicts: list[Verdict],
    reverts: list[tuple[asyncio.Task[None], Revert]],
) -> None:
    order = sorted(range(len(scenario.faults)), key=lambda i: scenario.faults[i].at)
    for index in order:
        step = scenario.faults[index]
        await _sleep_until(steady_at + step.at)
        began = time.time()
        try:
            message, revert = await perform(step, ctx)
        except (ActionError, httpx.HTTPError, OSError) as exc:
            progress(f"fault {index} ({step.action}) could not be carried out: {exc}")
            records.append(
                FaultRecord(
                    index, step.action, step_model(step), step.note or step.action, began, None, "error", str(exc)
                )
            )
            verdicts.append(Verdict(f"fault {index} ({step.action})", False, f"not carried out: {exc}"))
            continue
        applied = time.time()
        progress(f"+{began - steady_at:.2f}s fault {index}: {message}")
        description = step.note or step.action
        records.append(
            FaultRecord(index, step.action, step_model(step), description, began, None, "done", message, applied)
        )
        if revert is not None:
            until = steady_at + step_end(step)
            task = asyncio.create_task(_revert_at(until, revert, records, len(records) - 1, progress))
            reverts.append((task, revert))


async def _revert_at(
    when: float, revert: Revert, records: list[FaultRecord], position: int, progress: Progress
) -> None:
    await _sleep_until(when)
    try:
        message = await revert()
    except (OSError, httpx.HTTPError) as exc:
        message = f"revert failed: {exc}"
    progress(f"reverted: {message}")
    record = records[position]
    records[position] = replace(record, ended=time.time(), message=f"{record.message}; {message}")


async def cleanup_steps(scenario: Scenario, ctx: Context, progress: Progress) -> None:
    for step in scenario.cleanup:
        try:
            message, revert = await perform(step, ctx)
            if revert is not None:
                message += "; " + await revert()
            progress(f"cleanup: {message}")
        except (ActionError, httpx.HTTPError, OSError) as exc:
            progress(f"cleanup step {step.action} failed: {exc}")


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
