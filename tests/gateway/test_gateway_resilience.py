"""A crash, hang or restart is not a failed request: the gateway holds, retries, falls back honestly, and
never ends a stream silently. Real fake-vllm processes, real HTTP, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import httpx
import pytest

from supervisor.core.states import Cause, EventKind
from tests.gateway.conftest import Serve, fake_model, healthy, replicated, wait_until

pytestmark = pytest.mark.slow

COMPLETION = {"prompt": "hi", "max_tokens": 4}


async def load(client: httpx.AsyncClient, model: str, stop: asyncio.Event, results: list[int], **extra: object) -> None:
    """Send non-streamed completions one after another until told to stop; keep every status."""
    while not stop.is_set():
        response = await client.post("/v1/completions", json={"model": model, **COMPLETION, **extra})
        results.append(response.status_code)


def pid_of(s: object, model: str, replica: int = 0) -> int:
    pid = s.fleet.status(model).replicas[replica].pid  # type: ignore[attr-defined]
    assert pid is not None
    return int(pid)


async def test_kill_9_of_either_replica_under_load_fails_no_request(serve: Serve) -> None:
    """Two replicas, four clients: kill -9 of one, then of the other once it is back; every request succeeds."""
    async with serve({"q": replicated(2, "--ttft", "0.02")}) as s:
        await wait_until(lambda: healthy(s.fleet, "q", 2), 20, "both replicas healthy")
        stop, results = asyncio.Event(), []
        clients = [asyncio.ensure_future(load(s.client, "q", stop, results)) for _ in range(4)]
        for replica in (0, 1):
            await wait_until(lambda: len(results) > 20, 10, "requests flowing")
            victim = pid_of(s, "q", replica)
            os.kill(victim, signal.SIGKILL)
            await wait_until(
                lambda r=replica, v=victim: healthy(s.fleet, "q", 2) and pid_of(s, "q", r) != v, 20, "replica back"
            )
        stop.set()
        await asyncio.gather(*clients)
    assert len(results) > 40
    assert set(results) == {200}


async def test_one_replica_restarting_within_hold_timeout_fails_no_request(serve: Serve) -> None:
    """One replica, killed: requests arriving while it is down wait for the new run and are answered."""
    async with serve({"q": fake_model("--startup-delay", "0.5", restart_delay=0.3)}) as s:
        await wait_until(lambda: healthy(s.fleet, "q"), 20, "q healthy")
        stop, results = asyncio.Event(), []
        clients = [asyncio.ensure_future(load(s.client, "q", stop, results)) for _ in range(3)]
        await wait_until(lambda: len(results) > 5, 10, "requests flowing")
        victim = pid_of(s, "q")
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: healthy(s.fleet, "q") and pid_of(s, "q") != victim, 20, "q back")
        done = len(results)
        await wait_until(lambda: len(results) > done + 5, 10, "requests flowing again")
        stop.set()
        await asyncio.gather(*clients)
        held = [m for m in s.registry.collect() if m.name == "llm_supervisor_gateway_held_seconds"]
    assert set(results) == {200}
    assert any(x.name.endswith("_count") and x.value > 0 for x in held[0].samples)


async def test_a_rolling_restart_fails_no_request_streamed_or_not(serve: Serve) -> None:
    """Under load of streamed and non-streamed requests, a rolling restart of two replicas fails none."""
    async with serve({"q": replicated(2, "--itl", "0.01")}) as s:
        await wait_until(lambda: healthy(s.fleet, "q", 2), 20, "both replicas healthy")
        before = [pid_of(s, "q", 0), pid_of(s, "q", 1)]
        stop, plain, streamed = asyncio.Event(), [], []
        clients = [asyncio.ensure_future(load(s.client, "q", stop, plain)) for _ in range(2)]
        clients += [asyncio.ensure_future(load(s.client, "q", stop, streamed, stream=True)) for _ in range(2)]
        await wait_until(lambda: len(plain) > 5 and len(streamed) > 5, 10, "requests flowing")
        assert (await s.fleet.restart_model("q", rolling=True)).accepted
        model = s.fleet.model("q")
        await wait_until(lambda: not model.rolling, 60, "the rolling restart to end")
        stop.set()
        await asyncio.gather(*clients)
        after = [pid_of(s, "q", 0), pid_of(s, "q", 1)]
    assert before[0] != after[0]
    assert before[1] != after[1]
    assert set(plain) == {200}
    assert set(streamed) == {200}


async def test_a_stream_cut_after_bytes_went_out_ends_with_an_error_event_and_done(serve: Serve) -> None:
    """kill -9 of the server mid-stream: the client gets the chunks sent so far, an error event, then [DONE]."""
    async with serve({"q": fake_model("--itl", "0.05")}) as s:
        await wait_until(lambda: healthy(s.fleet, "q"), 20, "q healthy")
        body = {"model": "q", "prompt": "hi", "max_tokens": 200, "stream": True}
        lines: list[str] = []
        async with s.client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                if len(lines) == 3:
                    os.kill(pid_of(s, "q"), signal.SIGKILL)
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert "stream broke" in error["message"]
    assert error["code"] == 502
    assert len(lines) < 200


async def test_a_fallback_answers_honestly_while_the_model_has_no_ready_replica(serve: Serve) -> None:
    """qwen stopped, fallback tiny ready: tiny answers, and the headers, body and metric say so."""
    models = {"qwen": fake_model(fallback="tiny"), "tiny": fake_model()}
    models["tiny"]["args"] = [a if a != "test-model" else "tiny-model" for a in models["tiny"]["args"]]
    async with serve(models) as s:
        await wait_until(lambda: healthy(s.fleet, "qwen") and healthy(s.fleet, "tiny"), 20, "both healthy")
        await s.fleet.stop_model("qwen")
        response = await s.client.post("/v1/completions", json={"model": "qwen", **COMPLETION})
        fallbacks = [m for m in s.registry.collect() if m.name == "llm_supervisor_gateway_fallbacks"]
    assert response.status_code == 200, response.text
    assert response.headers["x-llm-supervisor-model"] == "tiny"
    assert response.headers["x-llm-supervisor-fallback"] == "no ready replica of qwen"
    assert response.json()["model"] == "tiny-model"
    counted = {tuple(x.labels.values()): x.value for x in fallbacks[0].samples if x.name.endswith("_total")}
    assert counted == {("qwen", "tiny"): 1.0}


async def test_a_model_in_backoff_past_hold_timeout_is_503_with_retry_after(serve: Serve) -> None:
    """A crash loop with a long backoff: the request waits hold_timeout, then gets 503 and Retry-After."""
    entry = fake_model("--crash-after", "0.3", restart_delay=30, max_restarts=None)
    async with serve({"q": entry}, gateway={"hold_timeout": 0.5}) as s:
        await wait_until(lambda: s.fleet.status("q").state.value == "backoff", 20, "q in backoff")
        response = await s.client.post("/v1/completions", json={"model": "q", **COMPLETION})
    assert response.status_code == 503
    assert "no ready replica after 0.5 s" in response.json()["error"]["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 30


async def test_a_stalled_replica_is_restarted_within_progress_timeout(serve: Serve) -> None:
    """/health says 200 but no token comes: the request in flight shows the stall, cause stalled, restart."""
    entry = fake_model("--stall-after", "0", progress_timeout=1.0)
    async with serve({"q": entry}, gateway={"hold_timeout": 3}) as s:
        await wait_until(lambda: healthy(s.fleet, "q"), 20, "q healthy")
        victim = pid_of(s, "q")
        request = asyncio.ensure_future(s.client.post("/v1/completions", json={"model": "q", **COMPLETION}))
        await wait_until(lambda: pid_of_or_none(s, "q") not in (None, victim), 15, "a new run")
        events = s.fleet.events("q")
        request.cancel()
    unhealthy = [e for e in events if e.kind is EventKind.UNHEALTHY]
    assert unhealthy[0].reason == Cause.STALLED.value
    assert "no output for 1s" in (unhealthy[0].detail or "")
    spawned = [e for e in events if e.kind is EventKind.SPAWNED]
    assert spawned[-1].time - unhealthy[0].time < 5


def pid_of_or_none(s: object, model: str) -> int | None:
    return s.fleet.status(model).replicas[0].pid  # type: ignore[attr-defined, no-any-return]


async def test_request_metrics_count_codes_retries_and_time(serve: Serve) -> None:
    """Per model: requests by code, durations and first bytes observed once each, retries by reason."""
    entry = replicated(2)
    async with serve({"q": entry}) as s:
        await wait_until(lambda: healthy(s.fleet, "q", 2), 20, "both replicas healthy")
        for _ in range(3):
            assert (await s.client.post("/v1/completions", json={"model": "q", **COMPLETION})).status_code == 200
        # Replica 0 now fails every request with a 500 while replica 1 is ready: the gateway tries again there.
        async with httpx.AsyncClient() as admin:
            await admin.post(f"http://127.0.0.1:{entry['ports'][0]}/admin/faults", json={"error_rate": 1.0})
        s.fleet.model("q").replicas[1].in_flight += 100  # steer the next request to replica 0 first
        response = await s.client.post("/v1/completions", json={"model": "q", **COMPLETION})
        s.fleet.model("q").replicas[1].in_flight -= 100
        await s.client.post("/v1/completions", json={"model": "nope"})
        samples = {
            (x.name, tuple(sorted(x.labels.items()))): x.value
            for family in s.registry.collect()
            for x in family.samples
            if x.name.startswith("llm_supervisor_gateway")
        }
    assert response.status_code == 200
    assert samples[("llm_supervisor_gateway_requests_total", (("code", "200"), ("model", "q")))] == 4
    assert samples[("llm_supervisor_gateway_request_duration_seconds_count", (("model", "q"),))] == 4
    assert samples[("llm_supervisor_gateway_time_to_first_byte_seconds_count", (("model", "q"),))] == 4
    retries = {k[1]: v for k, v in samples.items() if k[0] == "llm_supervisor_gateway_retries_total"}
    assert retries == {(("model", "q"), ("reason", "http_500")): 1.0}
    assert samples[("llm_supervisor_gateway_in_flight", (("model", "q"),))] == 0


async def test_a_hung_replica_never_holds_a_request_past_progress_timeout(serve: Serve) -> None:
    """No restart policy to rescue it: requests to the stalled replica fail over after progress_timeout,
    and a stream it stalls mid-way ends with an error event and [DONE] instead of hanging."""
    # Generous for a loaded 2-core machine: a slow first token must not read as a stall.
    entry = replicated(2, "--itl", "0.05", restart_policy="no", progress_timeout=2.0)
    async with serve({"q": entry}) as s:
        await wait_until(lambda: healthy(s.fleet, "q", 2), 20, "both replicas healthy")
        port = entry["ports"][0]
        async with httpx.AsyncClient() as admin:
            stall = await admin.post(f"http://127.0.0.1:{port}/admin/faults", json={"stall_after": 0})
            assert stall.status_code == 200
        answers = [await s.client.post("/v1/completions", json={"model": "q", **COMPLETION}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        s.fleet.model("q").replicas[1].in_flight += 100  # steer the stream to the stalled replica 0
        lines: list[str] = []
        body = {"model": "q", "prompt": "hi", "max_tokens": 50, "stream": True}
        started = asyncio.get_running_loop().time()
        async with s.client.stream("POST", "/v1/completions", json=body) as response:
            status = response.status_code
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        waited = asyncio.get_running_loop().time() - started
        s.fleet.model("q").replicas[1].in_flight -= 100
    assert status == 200  # served by replica 1 after replica 0's run failed the attempt
    assert lines[-1] == "data: [DONE]"
    assert waited < 15


async def test_a_stream_that_stalls_mid_way_ends_with_an_error_event(serve: Serve) -> None:
    """Tokens flow, then the engine stalls: after progress_timeout the client gets an error event and [DONE]."""
    entry = fake_model("--itl", "0.05", restart_policy="no", progress_timeout=2.0)
    async with serve({"q": entry}) as s:
        await wait_until(lambda: healthy(s.fleet, "q"), 20, "q healthy")
        port = entry["args"][entry["args"].index("--port") + 1]
        body = {"model": "q", "prompt": "hi", "max_tokens": 200, "stream": True}
        lines: list[str] = []
        async with s.client.stream("POST", "/v1/completions", json=body) as response, httpx.AsyncClient() as admin:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                if len(lines) == 3:
                    await admin.post(f"http://127.0.0.1:{port}/admin/faults", json={"stall_after": 0})
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert (error["code"], "sent nothing for 2s" in error["message"]) == (504, True)
    assert len(lines) < 200


async def test_retries_are_bounded_by_max_attempts(serve: Serve) -> None:
    """Three replicas that all fail with 500: one request makes exactly max_attempts tries, each on another
    replica, then the last 500 is passed through (no retry storm on a fleet that is already failing)."""
    entry = replicated(3, "--error-rate", "1.0")
    async with serve({"q": entry}, gateway={"max_attempts": 2}) as s:
        await wait_until(lambda: healthy(s.fleet, "q", 3), 20, "three replicas healthy")
        response = await s.client.post("/v1/completions", json={"model": "q", **COMPLETION})
        async with httpx.AsyncClient() as admin:
            counts = [
                (await admin.get(f"http://127.0.0.1:{port}/admin/stats")).json()["injected"]["request_errors"]
                for port in entry["ports"]
            ]
    assert response.status_code == 500
    assert "injected request failure" in response.json()["error"]["message"]
    assert sum(counts) == 2
    assert max(counts) == 1  # the second try went to another replica


async def test_a_request_cut_by_a_restart_of_the_only_replica_is_answered_by_the_next_run(serve: Serve) -> None:
    """The only replica is restarted while a request waits for its first token: the request is held and
    answered by the new run, whatever the old one answered as it stopped."""
    async with serve({"q": fake_model("--ttft", "1.5", stop_timeout=2)}) as s:
        await wait_until(lambda: healthy(s.fleet, "q"), 20, "q healthy")
        victim = pid_of(s, "q")
        request = asyncio.ensure_future(s.client.post("/v1/completions", json={"model": "q", **COMPLETION}))
        await wait_until(lambda: s.fleet.model("q").replicas[0].in_flight == 1, 10, "the request in flight")
        assert (await s.fleet.restart_model("q")).accepted
        response = await request
        assert pid_of(s, "q") != victim
    assert response.status_code == 200, response.text


async def test_a_5xx_from_a_serving_replica_with_no_other_goes_to_the_client(serve: Serve) -> None:
    """A server that answers 500 while it serves, with no other replica: that is its answer, sent at once."""
    async with serve({"q": fake_model("--error-rate", "1.0")}) as s:
        await wait_until(lambda: healthy(s.fleet, "q"), 20, "q healthy")
        response = await s.client.post("/v1/completions", json={"model": "q", **COMPLETION})
    assert response.status_code == 500
    assert "injected request failure" in response.json()["error"]["message"]


# A tiny OpenAI-style server: healthy, lists its model, and streams an error event first when it is told to
# (as vLLM does when its engine dies just as a stream begins), else a one-chunk stream.
ERROR_FIRST_SERVER = r"""
import asyncio, json, sys
port, broken = int(sys.argv[1]), sys.argv[1] == sys.argv[2]
async def serve(reader, writer):
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next((int(l.split(b":")[1]) for l in lines if l.lower().startswith(b"content-length")), 0)
        await reader.readexactly(length)
        path = head.split(b" ")[1]
        if path == b"/v1/models":
            body, kind = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode(), b"application/json"
        elif path.startswith(b"/v1/"):
            failed = {"error": {"message": "EngineCore encountered an issue", "code": 500}}
            event = failed if broken else {"choices": [{"text": "ok", "finish_reason": "stop"}]}
            body, kind = b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n", b"text/event-stream"
        else:
            body, kind = b"", b"text/plain"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    await server.serve_forever()
asyncio.run(main())
"""


async def test_a_stream_whose_first_event_is_an_error_is_tried_on_another_replica(serve: Serve) -> None:
    """Nothing reached the client yet: an error event as a stream's first words is retried like a 5xx."""
    entry = replicated(2)
    entry["command"] = sys.executable
    entry["args"] = ["-c", ERROR_FIRST_SERVER, "{port}", str(entry["ports"][0])]
    async with serve({"q": entry}) as s:
        await wait_until(lambda: healthy(s.fleet, "q", 2), 20, "both replicas healthy")
        s.fleet.model("q").replicas[1].in_flight += 100  # steer the stream to the broken replica 0 first
        body = {"model": "q", "prompt": "hi", "stream": True}
        async with s.client.stream("POST", "/v1/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        s.fleet.model("q").replicas[1].in_flight -= 100
    assert lines == ['data: {"choices": [{"text": "ok", "finish_reason": "stop"}]}', "data: [DONE]"]
