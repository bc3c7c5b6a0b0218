"""--stall-after / stall_after on a real process: a stalled engine behind an API server that still answers."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fake_vllm import cli
from fake_vllm.testing import FakeVllm, Spawn

COMPLETION = {"prompt": "x", "max_tokens": 4}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _stats(server: FakeVllm) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/admin/stats", timeout=5)
    assert response.status_code == 200
    return dict(response.json())


def _wait_stats(server: FakeVllm, condition: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
    """Poll /admin/stats until ``condition`` holds; the stats that satisfied it."""
    deadline = time.monotonic() + timeout
    while True:
        stats = _stats(server)
        if condition(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"/admin/stats never satisfied the condition within {timeout} s: {stats}")
        time.sleep(0.02)


def _stalled(stats: dict[str, Any]) -> bool:
    return bool(stats["state"] == "stalled")


def _post_faults(server: FakeVllm, body: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/admin/faults", json=body, timeout=5)


def _gauge_running(server: FakeVllm) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:num_requests_running":
                return float(sample.value)
    raise AssertionError("vllm:num_requests_running missing from /metrics")


def _open_request(server: FakeVllm, path: str, body: dict[str, Any]) -> socket.socket:
    """Send one POST on a raw connection and leave it open, its answer unread."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection((server.host, server.port), timeout=5)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {server.host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def _lines_until_silent(lines: Iterator[str]) -> list[str]:
    """The non-empty lines a stream sends until a read times out; fails if the stream ends instead."""
    received: list[str] = []
    try:
        for line in lines:
            if line:
                received.append(line)
    except httpx.ReadTimeout:
        return received
    raise AssertionError(f"the stream ended instead of going silent; last lines: {received[-3:]}")


def test_stall_flag_values() -> None:
    """--stall-after takes seconds >= 0, like the other timers; a bad value is a usage error naming it."""
    assert cli.parse_settings(["serve", "m", "--stall-after", "2.5"]).faults.stall_after == 2.5
    assert cli.parse_settings(["serve", "m"]).faults.stall_after is None
    with pytest.raises(SystemExit) as caught:
        cli.parse_settings(["serve", "m", "--stall-after", "-1"])
    assert caught.value.code == 2


def test_stalled_from_the_start_health_200_requests_never_answered(spawn: Spawn) -> None:
    """--stall-after 0: /health, /v1/models and /admin answer; completions are read but never answered."""
    server = spawn("--stall-after", "0")
    stats = _wait_stats(server, _stalled)
    assert [e["event"] for e in stats["events"]] == ["stall"]
    pending = _open_request(server, "/v1/chat/completions", CHAT)
    try:
        _wait_stats(server, lambda s: s["running"] == 1)  # accepted and inside the engine
        assert server.health_status(timeout=1) == 200
        assert httpx.get(f"{server.base_url}/v1/models", timeout=1).status_code == 200
        assert _gauge_running(server) == 0  # stale: the engine no longer reports
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base_url}/v1/completions", json=COMPLETION, timeout=1)
        assert server.health_status(timeout=1) == 200
        pending.settimeout(0.5)
        with pytest.raises(TimeoutError):
            pending.recv(1)  # not a byte of an answer, and the connection is still open
    finally:
        pending.close()
    assert _gauge_running(server) == 0
    assert _stats(server)["state"] == "stalled"
    assert server.process.poll() is None


def test_stalled_stream_sends_its_head_and_no_event(spawn: Spawn) -> None:
    """A stream started while stalled gets 200 text/event-stream, then nothing."""
    server = spawn("--stall-after", "0")
    _wait_stats(server, _stalled)
    body = {**CHAT, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=1) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        with pytest.raises(httpx.ReadTimeout):
            next(response.iter_bytes())
    assert server.health_status(timeout=1) == 200


def test_stall_set_at_runtime_freezes_a_stream_in_flight(spawn: Spawn) -> None:
    """stall_after 0 by POST: a running stream sends the tokens made before the stall, then nothing, open."""
    server = spawn("--itl", "0.05")
    body = {"prompt": "x", "max_tokens": 500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=1.5) as response:
        lines = response.iter_lines()
        events = [next(lines)]
        assert events[0].startswith("data: {")
        assert _post_faults(server, {"stall_after": 0}).json()["stall_after"] == 0
        stats = _wait_stats(server, _stalled)
        metrics_at_stall = httpx.get(f"{server.base_url}/metrics", timeout=5).text
        events += _lines_until_silent(lines)
        # Exactly the tokens the engine made before it stalled reached the client, and no [DONE].
        assert len(events) == stats["generation_tokens"] < 500
        assert all(e.startswith("data: {") for e in events)
        after = _stats(server)
        assert (after["generation_tokens"], after["running"]) == (stats["generation_tokens"], 1)
        assert httpx.get(f"{server.base_url}/metrics", timeout=5).text == metrics_at_stall  # stale, not updated
        assert server.health_status(timeout=1) == 200


def test_stall_after_flag_counts_from_ready(spawn: Spawn) -> None:
    """--stall-after 0.5: the stall event comes about 0.5 s after the server became ready."""
    server = spawn("--stall-after", "0.5")
    stats = _wait_stats(server, _stalled)
    [event] = [e for e in stats["events"] if e["event"] == "stall"]
    assert 0.45 <= event["at"] - stats["ready_at"] <= 3.0


def test_stall_set_and_cleared_through_admin(spawn: Spawn) -> None:
    """POST stall_after arms it (GET shows it); null disarms it before it fires, and the engine keeps going."""
    server = spawn()
    assert httpx.get(f"{server.base_url}/admin/faults").json()["stall_after"] is None
    assert _post_faults(server, {"stall_after": 100}).json()["stall_after"] == 100
    assert httpx.get(f"{server.base_url}/admin/faults").json()["stall_after"] == 100
    assert _post_faults(server, {"stall_after": None}).json()["stall_after"] is None
    assert httpx.get(f"{server.base_url}/admin/faults").json()["stall_after"] is None
    completion = httpx.post(f"{server.base_url}/v1/completions", json=COMPLETION, timeout=5)
    assert completion.status_code == 200
    stats = _stats(server)
    assert stats["state"] == "ready"
    assert stats["events"] == []


@pytest.mark.parametrize("value", [-1, True, "soon"])
def test_bad_stall_after_is_400_naming_the_key(spawn: Spawn, value: object) -> None:
    """A value that is not seconds >= 0 is refused with the key named, and nothing changes."""
    server = spawn()
    response = _post_faults(server, {"stall_after": value})
    assert response.status_code == 400
    assert response.json()["key"] == "stall_after"
    assert httpx.get(f"{server.base_url}/admin/faults").json()["stall_after"] is None


def test_runtime_stall_counts_from_the_post_and_stays(spawn: Spawn) -> None:
    """stall_after S by POST stalls S seconds after the POST; once stalled, null does not bring it back."""
    server = spawn()
    posted = time.time()
    assert _post_faults(server, {"stall_after": 0.3}).status_code == 200
    stats = _wait_stats(server, _stalled)
    [event] = [e for e in stats["events"] if e["event"] == "stall"]
    assert 0.25 <= event["at"] - posted <= 3.0
    assert _post_faults(server, {"stall_after": None}).json()["stall_after"] is None
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=COMPLETION, timeout=1)
    assert _stats(server)["state"] == "stalled"
    assert server.health_status(timeout=1) == 200


def test_sigterm_stops_a_stalled_server_promptly(spawn: Spawn) -> None:
    """SIGTERM while stalled, with requests pending: graceful exit 0 at once, children gone, connections closed."""
    server = spawn("--stall-after", "0", "--engine-children", "1")
    _wait_stats(server, _stalled)
    pending = [
        _open_request(server, "/v1/completions", COMPLETION),
        _open_request(server, "/v1/completions", {**COMPLETION, "stream": True}),
    ]
    try:
        _wait_stats(server, lambda s: s["running"] == 2)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit(timeout=10) == 0
        assert time.monotonic() - sent < 4.0  # not a 5 s SIGKILL escalation, not the supervisor's stop_timeout
        for sock in pending:
            sock.settimeout(5)
            while sock.recv(65536):  # the stream's head may come first; then the server closes the connection
                pass
    finally:
        for sock in pending:
            sock.close()
    assert server.group() == []
    assert "[shutdown] API server: shutting down FastAPI HTTP server" in server.stdout()
