"""One real vLLM server under the supervisor and its gateway, through the failures it really has.

The tests share one supervised server (a start costs a minute or two on two cores) and run in order: each
waits for the server to be healthy, breaks it, and waits for the supervisor to bring it back. The last one
stops it as an operator would.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from supervisor.core.states import Cause, EventKind, State
from supervisor.loop.fleet import Fleet
from tests.real_vllm.harness import (
    Served,
    alive,
    describe,
    engine_core,
    events_since,
    group_members,
    is_engine_core,
    last_seq,
    lines_around,
    log_lines,
    of_kind,
    report,
    show_events,
    supervised,
    vllm_model,
    wait_until,
)

pytestmark = [pytest.mark.real_vllm, pytest.mark.asyncio(loop_scope="module")]

MODEL = "tiny"
START_LIMIT = 300.0  # one start of real vLLM on a loaded two-core machine, with room
CPU_MARKERS = ("CPU KV cache size", "device_config=cpu", "cpu_worker.py", "cpu_model_runner.py", "version 0.32")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(tiny_model: Path, tag: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    entry = vllm_model(tiny_model, tag, inference_probe={"interval": 2, "timeout": 5})
    async with supervised(tmp_path_factory.mktemp("serving"), {MODEL: entry}, tag, gateway=True) as running:
        yield running


async def healthy_pid(fleet: Fleet) -> int:
    """Wait until the server is healthy; its API server's pid, which is also its process group."""
    await wait_until(lambda: fleet.status(MODEL).state is State.HEALTHY, START_LIMIT, "real vLLM to be healthy")
    pid = fleet.status(MODEL).pid
    assert pid is not None
    return pid


async def restarted(fleet: Fleet, before: int) -> int:
    """Wait for the run after a failure to be healthy; its pid."""

    def back() -> bool:
        status = fleet.status(MODEL)
        return status.restart_count > before and status.state is State.HEALTHY

    await wait_until(back, START_LIMIT, "the next run of real vLLM to be healthy")
    pid = fleet.status(MODEL).pid
    assert pid is not None
    return pid


@pytest.mark.timeout(600)
async def test_the_supervisor_brings_real_vllm_to_healthy(served: Served) -> None:
    fleet = served.fleet
    pid = await healthy_pid(fleet)
    events = fleet.events(MODEL)
    spawned, healthy = of_kind(events, EventKind.SPAWNED)[0], of_kind(events, EventKind.HEALTHY)[0]
    status = fleet.status(MODEL)
    assert (status.restart_count, status.failure_cause, status.has_cuda_oom) == (0, None, False)
    bad = (EventKind.EXITED, EventKind.UNHEALTHY, EventKind.DIAGNOSED, EventKind.OOM_DETECTED)
    assert not of_kind(events, *bad), show_events(events)
    # The API server leads its group; the engine and its worker run in it.
    members = group_members(pid)
    names = sorted(p.name() for p in members)
    assert engine_core(pid) is not None, names
    assert "VLLM::Worker" in names, names
    lines = log_lines(fleet, MODEL)
    markers = [line for line in lines if any(marker in line for marker in CPU_MARKERS)]
    report(
        "startup",
        f"spawned -> healthy: {healthy.time - spawned.time:.1f} s\n"
        f"process group {pid}:\n  " + "\n  ".join(describe(members)) + "\n"
        "lines that mark a CPU build (the config line cut at 300 characters):\n"
        + "\n".join(line[:300] for line in markers),
    )
    assert any("CPU KV cache size" in line for line in lines)


@pytest.mark.timeout(420)
async def test_the_gateway_forwards_a_chat_completion_with_vllms_served_name(served: Served, tiny_model: Path) -> None:
    """The client names the model by its id; vLLM knows it only by its path, and answers 200 all the same."""
    await healthy_pid(served.fleet)
    assert served.client is not None
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    answer = await served.client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-llm-supervisor-model"] == MODEL
    data = answer.json()
    assert data["model"] == str(tiny_model)  # vLLM's own name for it: what the gateway forwarded
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["usage"]["completion_tokens"] >= 1
    report("gateway", f"POST /v1/chat/completions model={MODEL!r}: {answer.status_code}\n{answer.text[:600]}")


@pytest.mark.timeout(420)
async def test_kill_9_of_the_api_server_leaves_no_orphan(served: Served) -> None:
    """SIGKILL of the API server leaves EngineCore and its worker alive; the supervisor kills the rest of the
    group, and they are gone by the time the next run is healthy."""
    fleet = served.fleet
    pid = await healthy_pid(fleet)
    before, seq = fleet.status(MODEL).restart_count, last_seq(fleet, MODEL)
    members = group_members(pid)
    assert any(is_engine_core(p) for p in members), describe(members)
    os.kill(pid, signal.SIGKILL)
    new_pid = await restarted(fleet, before)
    left = [p for p in members if alive(p)] + group_members(pid)
    assert not left, f"left of the killed run's group {pid}: {describe(left)}"
    assert new_pid != pid
    events = events_since(fleet, MODEL, seq)
    exited = of_kind(events, EventKind.EXITED)
    assert len(exited) == 1, show_events(events)
    assert exited[0].reason is not None  # a failure, not a stop
    report(
        "kill-api-server",
        f"killed API server {pid}; group was:\n  " + "\n  ".join(describe(members)) + "\n"
        f"events:\n{show_events(events)}",
    )


@pytest.mark.timeout(420)
async def test_kill_9_of_engine_core_is_engine_dead_and_restarted(served: Served) -> None:
    """EngineCore dies: /health 503, EngineDeadError, the API server exits 0; the supervisor names the cause."""
    fleet = served.fleet
    pid = await healthy_pid(fleet)
    before, seq = fleet.status(MODEL).restart_count, last_seq(fleet, MODEL)
    engine = engine_core(pid)
    assert engine is not None
    lines_before = len(log_lines(fleet, MODEL))
    engine.kill()
    killed = time.monotonic()
    await wait_until(lambda: fleet.status(MODEL).failure_cause is Cause.ENGINE_DEAD, 120, "failure_cause engine_dead")
    cause_after = time.monotonic() - killed
    await restarted(fleet, before)
    events = events_since(fleet, MODEL, seq)
    lines = log_lines(fleet, MODEL)[lines_before:]
    report(
        "kill-engine-core",
        f"failure_cause engine_dead {cause_after:.2f} s after SIGKILL of EngineCore {engine.pid}\n"
        f"events:\n{show_events(events)}\noutput around EngineDeadError:\n"
        + "\n".join(lines_around(lines, "EngineDeadError", 3, 3)),
    )
    diagnosed = of_kind(events, EventKind.DIAGNOSED, EventKind.OOM_DETECTED)
    assert any(e.reason == Cause.ENGINE_DEAD.value for e in diagnosed), show_events(events)
    exited = of_kind(events, EventKind.EXITED)
    assert [e.reason for e in exited] == [Cause.ENGINE_DEAD.value], show_events(events)
    assert "exit code 0" in str(exited[0].detail), show_events(events)


@pytest.mark.timeout(420)
async def test_a_stopped_engine_behind_a_healthy_api_is_caught_as_stalled(served: Served) -> None:
    """SIGSTOP of EngineCore: /health stays 200 and completions hang; the inference probe (a one-token
    completion every 2 s, 5 s to answer) sees it, and the run is restarted. Nothing is continued: the old
    group is killed, stopped engine included."""
    fleet = served.fleet
    pid = await healthy_pid(fleet)
    before, seq = fleet.status(MODEL).restart_count, last_seq(fleet, MODEL)
    engine = engine_core(pid)
    assert engine is not None
    lines_before = len(log_lines(fleet, MODEL))
    engine.suspend()
    stopped = time.monotonic()

    def stalled() -> bool:
        unhealthy = of_kind(events_since(fleet, MODEL, seq), EventKind.UNHEALTHY)
        return any(e.reason == Cause.STALLED.value for e in unhealthy)

    await wait_until(stalled, 60, "an unhealthy event with cause stalled")
    caught = time.monotonic() - stopped
    await restarted(fleet, before)
    assert not alive(engine)
    assert not group_members(pid)
    events = events_since(fleet, MODEL, seq)
    after = [line for line in log_lines(fleet, MODEL)[lines_before:] if "GET /health" not in line]
    report(
        "sigstop-engine-core",
        f"caught {caught:.1f} s after SIGSTOP\nevents:\n{show_events(events)}\n"
        "output after SIGSTOP (health probes left out), up to the next run:\n" + "\n".join(after[:80]),
    )
    assert caught < 2 + 5 + 5  # an interval, a timeout, and a loaded machine
    assert [e.reason for e in of_kind(events, EventKind.EXITED)] == [Cause.STALLED.value], show_events(events)


@pytest.mark.timeout(420)
async def test_an_operators_stop_is_not_diagnosed_as_a_failure(served: Served) -> None:
    """What vLLM prints while it obeys a stop is no finding. The whole group gets SIGTERM, so EngineCore may go
    before the API server's own shutdown reaches it, and then the API server prints an EngineDeadError
    traceback (measured: in 3 of 5 stops); whether or not it does, no `diagnosed` event may follow."""
    fleet = served.fleet
    pid = await healthy_pid(fleet)
    seq, lines_before = last_seq(fleet, MODEL), len(log_lines(fleet, MODEL))
    started = time.monotonic()
    result = await fleet.stop_model(MODEL)
    assert result.accepted, result.message
    await wait_until(lambda: fleet.status(MODEL).state is State.STOPPED, 60, "the model to be stopped")
    took = time.monotonic() - started
    events = events_since(fleet, MODEL, seq)
    lines = log_lines(fleet, MODEL)[lines_before:]
    dead = [line for line in lines if "EngineDeadError" in line]
    report(
        "operator-stop",
        f"stopped in {took:.2f} s; EngineDeadError lines in the output during the stop: {len(dead)}\n"
        f"events:\n{show_events(events)}\noutput after the stop request:\n" + "\n".join(lines),
    )
    assert not group_members(pid)
    assert not of_kind(events, EventKind.DIAGNOSED, EventKind.OOM_DETECTED), show_events(events)
    status = fleet.status(MODEL)
    assert (status.failure_cause, status.has_cuda_oom) == (None, False)
