"""Every fault flag against a real fake-vllm process: exit codes, signals, stderr, hangs, engine death."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import pytest

from fake_vllm.testing import FakeVllm, Spawn

OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"


def _complete(base_url: str, timeout: float = 10) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=timeout)


def test_crash_after_exits_with_code_on_time(spawn: Spawn) -> None:
    """--crash-after 0.5 --exit-code 7: exit status 7 about 0.5 s after the server started serving."""
    server = spawn("--crash-after", "0.5", "--exit-code", "7")
    ready = time.monotonic()
    assert server.wait_exit(timeout=10) == 7
    assert 0.0 <= time.monotonic() - ready <= 3.0
    assert "fake-vllm: injected crash (crash_after); dying with exit code 7" in server.stderr()


def test_crash_default_exit_code_is_1(spawn: Spawn) -> None:
    """Without --exit-code a crash exits 1."""
    server = spawn("--crash-after", "0.2")
    assert server.wait_exit(timeout=10) == 1


@pytest.mark.parametrize(
    ("name", "signum"),
    [("SIGKILL", signal.SIGKILL), ("SIGSEGV", signal.SIGSEGV), ("TERM", signal.SIGTERM), ("6", signal.SIGABRT)],
)
def test_exit_signal_kills_with_that_signal(spawn: Spawn, name: str, signum: int) -> None:
    """--exit-signal makes the crash a death by that signal (accepted as SIGX, X or a number)."""
    server = spawn("--crash-after", "0.1", "--exit-signal", name)
    assert server.wait_exit(timeout=10) == -signum


def test_crash_after_requests_answers_n_then_dies(spawn: Spawn) -> None:
    """--crash-after-requests 2: two requests are answered, then the process exits."""
    server = spawn("--crash-after-requests", "2")
    assert _complete(server.base_url).status_code == 200
    assert _complete(server.base_url).status_code == 200
    assert server.wait_exit(timeout=10) == 1
    with pytest.raises(httpx.TransportError):
        _complete(server.base_url)


def test_oom_at_startup_never_listens(spawn: Spawn) -> None:
    """--oom startup: the CUDA OOM traceback on stderr, exit 1, and the port never accepted a connection."""
    server = spawn("--oom", "startup", ready=False)
    assert server.wait_exit(timeout=10) == 1
    err = server.stderr()
    assert OOM_LINE in err
    assert "RuntimeError: Engine core initialization failed." in err
    assert "Starting vLLM API server" not in server.stdout()


def test_failed_start_takes_its_engine_children_down(spawn: Spawn) -> None:
    """--oom startup with engine children: exit 1 and no child left behind."""
    server = spawn("--oom", "startup", "--engine-children", "2", ready=False)
    assert server.wait_exit(timeout=15) == 1
    deadline = time.monotonic() + 10
    while server.group() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.group() == []


def test_oom_after_seconds_while_serving(spawn: Spawn) -> None:
    """--oom after:0.3: serves first, then writes the OOM traceback and exits 1."""
    server = spawn("--oom", "after:0.3")
    assert server.wait_exit(timeout=10) == 1
    err = server.stderr()
    assert OOM_LINE in err
    assert "GPU 0 has a total capacity of 79.33 GiB" in err


def test_hang_keeps_the_port_open_but_answers_nothing(spawn: Spawn) -> None:
    """--hang-after: connections are accepted, but /health and completions never answer."""
    server = spawn("--hang-after", "0.2")
    deadline = time.monotonic() + 10
    while server.health_status(timeout=0.5) == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    socket.create_connection(("127.0.0.1", server.port), timeout=2).close()  # still accepts
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{server.base_url}/health", timeout=1)
    with pytest.raises(httpx.ReadTimeout):
        _complete(server.base_url, timeout=1)
    assert server.process.poll() is None


def test_hang_stalls_a_stream_in_flight(spawn: Spawn) -> None:
    """A stream that is running when the hang begins stops producing events, without closing."""
    server = spawn("--itl", "0.1")
    body = {"prompt": "x", "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=1.5) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        httpx.post(f"{server.base_url}/admin/faults", json={"hang_after": 0})
        with pytest.raises(httpx.ReadTimeout):
            for _ in lines:
                pass


def _wait_503(server: FakeVllm) -> float:
    deadline = time.monotonic() + 10
    while server.health_status() != 503 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.health_status() == 503
    return time.monotonic()


def test_engine_death_503_then_exit_0(spawn: Spawn) -> None:
    """--engine-dead-after: /health 503 (empty), EngineDeadError logged on stdout, and with only probes
    arriving the server exits 0 once --engine-dead-exit-after has passed."""
    server = spawn("--engine-dead-after", "0.2", "--engine-dead-exit-after", "1.5")
    dead_at = _wait_503(server)
    health = httpx.get(f"{server.base_url}/health")
    assert (health.status_code, health.content) == (503, b"")
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 200
    assert server.wait_exit(timeout=15) == 0
    assert 0.5 <= time.monotonic() - dead_at <= 6.0
    out = server.stdout()
    assert f"(APIServer pid={server.pid}) ERROR " in out
    assert "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue." in out
    assert f"INFO:     Finished server process [{server.pid}]" in server.stderr()


def test_a_request_on_a_dead_engine_gets_500_and_the_server_exits_soon(spawn: Spawn) -> None:
    """A completion on a dead engine is a 500 with vLLM's body, and it makes the server exit 0 at once
    (vLLM's error handler sets uvicorn's should_exit) rather than at the watchdog's next round."""
    server = spawn("--engine-dead-after", "0.1", "--engine-dead-exit-after", "60")
    _wait_503(server)
    completion = _complete(server.base_url)
    answered = time.monotonic()
    assert completion.status_code == 500
    assert completion.json() == {
        "error": {
            "message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    assert server.wait_exit(timeout=15) == 0
    assert time.monotonic() - answered < 3.0


def test_engine_death_ends_a_stream_with_an_error_event(spawn: Spawn) -> None:
    """A stream in flight when the engine dies gets a data: {"error": ...} event, then [DONE]."""
    server = spawn("--itl", "0.05", "--engine-dead-exit-after", "never")
    body = {"prompt": "x", "max_tokens": 500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        httpx.post(f"{server.base_url}/admin/faults", json={"engine_dead_after": 0})
        events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2]
    assert "EngineCore encountered an issue" in events[-2]


def _flaps(spawn: Spawn, seed: str) -> list[int | None]:
    server = spawn("--health-flap", "0.5", "--seed", seed, ready=False)
    server.wait_for_log("Application startup complete")  # not wait_ready: its probes would consume draws
    statuses = [server.health_status() for _ in range(30)]
    server.kill()
    return statuses


def test_health_flap_is_seeded(spawn: Spawn) -> None:
    """--health-flap 0.5 fails about half the probes, in the same order for the same --seed."""
    first, second, other = _flaps(spawn, "11"), _flaps(spawn, "11"), _flaps(spawn, "12")
    assert first == second
    assert first != other
    assert 5 <= first.count(503) <= 25
    assert first.count(200) + first.count(503) == 30


def test_error_rate_is_seeded_and_counted(spawn: Spawn) -> None:
    """--error-rate 0.5 fails requests with 500 in a seed-determined order, counted in /admin/stats."""
    outcomes = []
    for _ in range(2):
        server = spawn("--error-rate", "0.5", "--seed", "5")
        outcomes.append([_complete(server.base_url).status_code for _ in range(20)])
        stats = httpx.get(f"{server.base_url}/admin/stats").json()
        assert stats["injected"]["request_errors"] == outcomes[-1].count(500)
        server.kill()
    assert outcomes[0] == outcomes[1]
    assert 3 <= outcomes[0].count(500) <= 17


def test_ttft_and_itl_shape_latency(spawn: Spawn) -> None:
    """--ttft 0.3 --itl 0.05: the first event after >= 0.3 s, the whole 5-token answer after >= 0.5 s."""
    server = spawn("--ttft", "0.3", "--itl", "0.05")
    body = {"prompt": "x", "max_tokens": 5, "stream": True, "ignore_eos": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()
        next(lines)
        first = time.monotonic() - started
        list(lines)
    total = time.monotonic() - started
    assert first >= 0.3
    assert total >= 0.5
