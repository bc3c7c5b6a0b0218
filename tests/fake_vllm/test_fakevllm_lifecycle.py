"""Start-up, shutdown and log streams of a real fake-vllm process, compared with vLLM's."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from fake_vllm.testing import Spawn


def _connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_port_refuses_connections_while_loading(spawn: Spawn) -> None:
    """During --startup-delay connections are refused (not 503); afterwards the server answers."""
    started = time.monotonic()
    server = spawn("--startup-delay", "1.5", ready=False)
    server.wait_for_log("Starting to load model")
    assert _connect_refused(server.port)
    assert server.process.poll() is None
    server.wait_ready(timeout=15)
    assert time.monotonic() - started >= 1.5
    out = server.stdout()
    landmarks = [
        "version 0.32.0",
        "Starting to load model",
        "Loading weights took",
        "CPU KV cache size: 2,097,152 tokens",
        "init engine (profile, create kv cache, warmup model) took",
        "Starting vLLM server on",
    ]
    positions = [out.index(text) for text in landmarks]
    assert positions == sorted(positions)


def test_taken_port_fails_fast_with_errno_98(spawn: Spawn) -> None:
    """A port held by another process makes start-up fail at once: Errno 98 on stderr, exit 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        server = spawn("--startup-delay", "30", port=port, ready=False)
        assert server.wait_exit(timeout=10) == 1
    assert time.monotonic() - started < 10
    assert "OSError: [Errno 98] Address already in use" in server.stderr()


def test_sigterm_shuts_down_gracefully(spawn: Spawn) -> None:
    """SIGTERM logs vLLM's shutdown line on stdout, uvicorn's on stderr, and exits 0."""
    server = spawn()
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 0
    assert "[shutdown] API server: shutting down FastAPI HTTP server" in server.stdout()
    assert "INFO:     Application shutdown complete." in server.stderr()
    assert server.group() == []


def test_sigterm_while_loading_exits_0_with_honor_flag(spawn: Spawn) -> None:
    """With --honor-sigterm-while-loading, SIGTERM during a long load stops the process promptly."""
    server = spawn("--startup-delay", "60", "--honor-sigterm-while-loading", ready=False)
    server.wait_for_log("Starting to load model")
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 0
    assert server.group() == []


def test_ignore_sigterm_needs_sigkill(spawn: Spawn) -> None:
    """With --ignore-sigterm the process survives SIGTERM and keeps serving; SIGKILL ends it."""
    server = spawn("--ignore-sigterm")
    server.process.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        server.wait_exit(timeout=1.5)
    assert server.health_status() == 200
    server.process.kill()
    assert server.wait_exit(timeout=10) == -signal.SIGKILL


def test_vllm_flags_are_accepted(spawn: Spawn) -> None:
    """A real vLLM 0.32 command line runs unchanged, in vLLM's spellings (underscores, =, -O3, dotted keys)."""
    server = spawn(
        "--dtype",
        "bfloat16",
        "--trust-remote-code",
        "--enforce-eager",
        "--download-dir",
        "/nonexistent",
        "--gpu-memory-utilization",
        "0.5",
        "--uvicorn-log-level",
        "warning",
        "--enable-prefix-caching",
        "--no-enable-log-requests",
        "--max_num_batched_tokens=4096",
        "-O3",
        "--compilation-config.mode",
        "3",
        "--allowed-media-domains",
        "a.example",
        "b.example",
        "--max-model",
        "4096",
    )
    assert server.health_status() == 200
    assert httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["max_model_len"] == 4096


def test_log_lines_go_to_vllms_streams(spawn: Spawn) -> None:
    """vLLM's logger lines and uvicorn's access lines are on stdout, uvicorn's lifecycle lines on stderr."""
    server = spawn()
    httpx.get(f"{server.base_url}/v1/models")
    out, err = server.stdout(), server.stderr()
    assert f"(APIServer pid={server.pid}) INFO " in out
    assert f"Starting vLLM server on http://127.0.0.1:{server.port}" in out
    assert f"INFO:     Started server process [{server.pid}]" in err
    assert "INFO:     Application startup complete." in err
    assert re.search(r'^INFO:     127\.0\.0\.1:\d+ - "GET /v1/models HTTP/1\.1" 200 OK$', out, re.MULTILINE)
    assert "/v1/models" not in err


def test_access_log_can_be_disabled(spawn: Spawn) -> None:
    """--disable-uvicorn-access-log drops the per-request lines, as in vLLM."""
    server = spawn("--disable-uvicorn-access-log")
    httpx.get(f"{server.base_url}/v1/models")
    assert '"GET /v1/models HTTP/1.1"' not in server.stdout()
    assert '"GET /v1/models HTTP/1.1"' not in server.stderr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--health-flap", "2"], "health_flap: must be a probability"),
        (["--exit-signal", "SIGCHLD"], "exit_signal: expected a signal that ends a process"),
        (["--oom", "sometimes"], "oom: expected 'startup' or 'after:SECONDS'"),
        (["--crash-after", "-1"], "crash_after: must be >= 0 seconds"),
    ],
)
def test_bad_fault_flags_exit_2(args: list[str], message: str) -> None:
    """An invalid fault value is a usage error (exit 2) that names the fault."""
    result = subprocess.run(
        [sys.executable, "-m", "fake_vllm", "serve", "m", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_console_script_is_installed() -> None:
    """The `fake-vllm` command exists next to the interpreter and prints its version."""
    script = os.path.join(os.path.dirname(sys.executable), "fake-vllm")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert "fake-vllm" in result.stdout


def test_hung_server_still_stops_on_sigterm(spawn: Spawn) -> None:
    """A hung server (requests pending forever) still shuts down gracefully on SIGTERM, like vLLM's API server."""
    server = spawn("--hang-after", "0", "--engine-children", "1", ready=False)
    server.wait_for_log("Application startup complete.")
    assert server.health_status(timeout=0.5) is None  # a request now hangs, its connection open
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 0
    assert server.group() == []


def test_sigterm_during_engine_start_reaps_the_children(spawn: Spawn) -> None:
    """SIGTERM right after launch (with --honor-sigterm-while-loading), while the engine starts, leaves no
    process behind."""
    server = spawn("--engine-children", "3", "--startup-delay", "30", "--honor-sigterm-while-loading", ready=False)
    server.wait_for_log("Initializing a V1 LLM engine")
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=15) == 0
    assert server.group() == []
