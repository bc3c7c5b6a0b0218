"""GET/POST /admin/faults on a real process: every key is validated, and each one acts from the POST."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest

from fake_vllm.faults import PARSERS, STARTUP_ONLY
from fake_vllm.testing import FakeVllm, Spawn


def _post(server: FakeVllm, body: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/admin/faults", json=body, timeout=10)


def _complete(server: FakeVllm) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=10)


def test_get_lists_every_fault_with_its_value(spawn: Spawn) -> None:
    """GET shows every key, runtime and start-up-only, with the values from the command line."""
    server = spawn("--hang-after", "100", "--health-flap", "0.25", "--engine-children", "1")
    view = httpx.get(f"{server.base_url}/admin/faults").json()
    assert set(view) == set(PARSERS) | STARTUP_ONLY
    assert view["hang_after"] == 100
    assert view["health_flap"] == 0.25
    assert view["engine_children"] == 1
    assert view["crash_after"] is None
    assert view["exit_code"] == 1


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"crash_afterr": 1}, "crash_afterr"),
        ({"ttft": 0.1, "bogus": True}, "bogus"),
        ({"health_flap": 1.5}, "health_flap"),
        ({"error_rate": "often"}, "error_rate"),
        ({"exit_code": 300}, "exit_code"),
        ({"exit_signal": "SIGSTOP"}, "exit_signal"),
        ({"oom": "startup"}, "oom"),
        ({"ignore_sigterm": 1}, "ignore_sigterm"),
        ({"crash_after_requests": 1.5}, "crash_after_requests"),
        ({"ttft": None}, "ttft"),
        ({"seed": "x"}, "seed"),
        ({"startup_delay": 1}, "startup_delay"),
        ({"engine_children": 2}, "engine_children"),
        ([1, 2], "body"),
    ],
)
def test_bad_updates_are_400_naming_the_key_and_change_nothing(spawn: Spawn, body: object, key: str) -> None:
    """Unknown keys, bad values and start-up-only keys answer 400 naming the key; nothing is applied."""
    server = spawn()
    before = httpx.get(f"{server.base_url}/admin/faults").json()
    response = _post(server, body)
    assert response.status_code == 400
    assert response.json()["key"] == key
    assert key in response.json()["detail"]
    assert httpx.get(f"{server.base_url}/admin/faults").json() == before


def test_crash_after_0_exits_at_once_with_posted_code(spawn: Spawn) -> None:
    """POST exit_code then crash_after 0: the process exits with that code right after the POST."""
    server = spawn()
    assert _post(server, {"exit_code": 3}).json()["exit_code"] == 3
    posted = time.monotonic()
    _post(server, {"crash_after": 0})
    assert server.wait_exit(timeout=10) == 3
    assert time.monotonic() - posted < 3.0


def test_exit_signal_by_post(spawn: Spawn) -> None:
    """POST exit_signal + crash_after: death by that signal."""
    server = spawn()
    _post(server, {"exit_signal": "SIGKILL", "crash_after": 0.1})
    assert server.wait_exit(timeout=10) == -signal.SIGKILL


def test_crash_after_counts_from_the_post_and_null_cancels(spawn: Spawn) -> None:
    """crash_after S counts from the POST; null cancels a pending crash."""
    server = spawn("--crash-after", "1.0")
    _post(server, {"crash_after": None})
    with pytest.raises(subprocess.TimeoutExpired):
        server.wait_exit(timeout=2.0)
    posted = time.monotonic()
    _post(server, {"crash_after": 0.5})
    assert server.wait_exit(timeout=10) == 1
    assert 0.4 <= time.monotonic() - posted <= 4.0


def test_crash_after_requests_by_post_counts_from_the_post(spawn: Spawn) -> None:
    """crash_after_requests N counts requests answered after the POST; 0 exits at once."""
    server = spawn()
    assert _complete(server).status_code == 200
    _post(server, {"crash_after_requests": 1})
    assert _complete(server).status_code == 200
    assert server.wait_exit(timeout=10) == 1
    other = spawn()
    _post(other, {"crash_after_requests": 0})
    assert other.wait_exit(timeout=10) == 1


def test_hang_after_0_by_post(spawn: Spawn) -> None:
    """hang_after 0: the next /health gets no answer at all."""
    server = spawn()
    assert _post(server, {"hang_after": 0}).status_code == 200
    assert server.health_status(timeout=1.0) is None
    assert server.process.poll() is None


def test_engine_dead_after_0_and_exit_after_by_post(spawn: Spawn) -> None:
    """engine_dead_after 0 turns /health 503 at once; engine_dead_exit_after sets when it exits 0."""
    server = spawn("--engine-dead-exit-after", "never")
    _post(server, {"engine_dead_after": 0})
    deadline = time.monotonic() + 5
    while server.health_status() != 503 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.health_status() == 503
    with pytest.raises(subprocess.TimeoutExpired):
        server.wait_exit(timeout=1.0)
    _post(server, {"engine_dead_exit_after": 0.2})
    assert server.wait_exit(timeout=10) == 0


def test_oom_after_0_by_post(spawn: Spawn) -> None:
    """oom "after:0": the OOM traceback and exit 1 right after the POST."""
    server = spawn()
    assert _post(server, {"oom": "after:0"}).json()["oom"] == "after:0.0"
    assert server.wait_exit(timeout=10) == 1
    assert "torch.OutOfMemoryError: CUDA out of memory." in server.stderr()


def test_health_flap_and_error_rate_by_post(spawn: Spawn) -> None:
    """health_flap 1 fails every probe, error_rate 1 every request; 0 restores both."""
    server = spawn()
    _post(server, {"health_flap": 1, "error_rate": 1})
    assert server.health_status() == 503
    failed = _complete(server)
    assert failed.status_code == 500
    assert "injected request failure" in failed.json()["error"]["message"]
    _post(server, {"health_flap": 0, "error_rate": 0})
    assert server.health_status() == 200
    assert _complete(server).status_code == 200


def test_seed_by_post_restarts_the_random_sequences(spawn: Spawn) -> None:
    """Posting the same seed twice replays the same health-flap sequence."""
    server = spawn()
    runs = []
    for _ in range(2):
        _post(server, {"seed": 42, "health_flap": 0.5})
        runs.append([server.health_status() for _ in range(20)])
    _post(server, {"health_flap": 0})
    assert runs[0] == runs[1]
    assert 200 in runs[0]
    assert 503 in runs[0]


def test_ttft_and_itl_by_post(spawn: Spawn) -> None:
    """ttft and itl set at runtime slow the next request down accordingly."""
    server = spawn()
    _post(server, {"ttft": 0.4, "itl": 0.1})
    started = time.monotonic()
    body = {"prompt": "x", "max_tokens": 3, "ignore_eos": True}
    assert httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.6


def test_ignore_sigterm_by_post(spawn: Spawn) -> None:
    """ignore_sigterm true makes SIGTERM a no-op; false makes it stop the process again."""
    server = spawn()
    _post(server, {"ignore_sigterm": True})
    server.process.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        server.wait_exit(timeout=1.0)
    _post(server, {"ignore_sigterm": False})
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 0
