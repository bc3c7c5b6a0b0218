"""What real vLLM 0.32 does, measured, against a real fake-vllm process: the engine processes and their
signals, SIGTERM while loading, the exit statuses and exact texts of failed starts, log streams, shutdown.

Every test starts real processes and finds the engine processes by name with psutil, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from fake_vllm.testing import FakeVllm, Spawn, group_members

DEAD_LINE = (
    "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
    "See stack trace (above) for the root cause."
)
START_FAILED = "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"


def _engine(server: FakeVllm, name: str = "VLLM::EngineCore") -> psutil.Process:
    [process] = [p for p in server.group() if p.name() == name]
    return process


def _complete(server: FakeVllm, timeout: float = 10, **body: object) -> httpx.Response:
    payload = {"prompt": "hello there", "max_tokens": 3, **body}
    return httpx.post(f"{server.base_url}/v1/completions", json=payload, timeout=timeout)


def _until(condition: Callable[[], bool], timeout: float = 10) -> float:
    """Poll until ``condition`` holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.005)
    return time.monotonic() - started


def _gauge(server: FakeVllm, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    [line] = [line for line in text.splitlines() if line.startswith(name + "{")]
    return float(line.rsplit(" ", 1)[1])


def _serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``fake-vllm serve ARGS`` to its end (for start-ups that fail), with output captured."""
    return subprocess.run(
        [sys.executable, "-m", "fake_vllm", "serve", *args, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- processes -------------------------------------------------------------------------------------------


def test_default_tree_is_api_server_engine_core_worker(spawn: Spawn) -> None:
    """By default: API server -> VLLM::EngineCore -> VLLM::Worker, one process group, names as setproctitle
    leaves them (full in the command line, 15 characters in /proc/PID/comm)."""
    server = spawn()
    core, worker = _engine(server), _engine(server, "VLLM::Worker")
    assert core.ppid() == server.pid
    assert worker.ppid() == core.pid
    assert {os.getpgid(p.pid) for p in (core, worker)} == {server.pid}
    assert Path(f"/proc/{core.pid}/comm").read_text().strip() == "VLLM::EngineCor"
    assert core.cmdline()[0] == "VLLM::EngineCore"
    assert "--port" not in core.cmdline()
    assert httpx.get(f"{server.base_url}/admin/stats").json()["engine_children"] == [core.pid, worker.pid]


def test_tensor_parallel_workers_are_numbered(spawn: Spawn) -> None:
    """--tensor-parallel-size 2: two workers under EngineCore, VLLM::Worker_TP0 and VLLM::Worker_TP1."""
    server = spawn("--tensor-parallel-size", "2")
    core = _engine(server)
    workers = sorted(p.name() for p in core.children())
    assert workers == ["VLLM::Worker_TP0", "VLLM::Worker_TP1"]


def test_engine_core_generates_the_tokens(spawn: Spawn) -> None:
    """EngineCore makes the same text as the engine inside the API server (--engine-children 0, a single
    process) would."""
    server = spawn("--seed", "5", model="m")
    text = _complete(server, max_tokens=12).json()["choices"][0]["text"]
    local = spawn("--seed", "5", "--engine-children", "0", model="m")
    assert [p.pid for p in local.group()] == [local.pid]
    assert _complete(local, max_tokens=12).json()["choices"][0]["text"] == text


def test_sigkill_of_engine_core_is_engine_death(spawn: Spawn) -> None:
    """SIGKILL of EngineCore: /health 503 at once, EngineDeadError on stdout as APIServer ERROR lines, a
    request gets 500, the server exits 0 soon after that request, and the worker is gone too."""
    server = spawn(model="m")
    core, worker = _engine(server), _engine(server, "VLLM::Worker")
    core.kill()
    assert _until(lambda: server.health_status() == 503) < 1.0
    out = server.raw_stdout()
    record = re.search(
        rf"^\(APIServer pid={server.pid}\) ERROR [^\[]*\[async_llm\.py:\d+\] AsyncLLM output_handler failed\.\r\n"
        rf"(?:\(APIServer pid={server.pid}\) ERROR .*\r\n)+"
        rf"\(APIServer pid={server.pid}\) ERROR [^\[]*\[async_llm\.py:\d+\] {re.escape(DEAD_LINE)}$",
        out,
        re.MULTILINE,
    )
    assert record is not None, out[-2000:]
    assert "EngineDeadError" not in server.stderr()
    response = _complete(server)
    answered = time.monotonic()
    assert response.status_code == 500
    assert response.json()["error"]["message"] == (
        "EngineCore encountered an issue. See stack trace (above) for the root cause."
    )
    assert server.wait_exit(timeout=10) == 0
    assert time.monotonic() - answered < 3.0
    _, alive = psutil.wait_procs([worker], timeout=10)
    assert not alive
    assert server.group() == []


def test_engine_death_with_only_probes_exits_after_the_watchdog(spawn: Spawn) -> None:
    """After EngineCore dies, probes alone do not stop the server: it exits 0 when
    --engine-dead-exit-after has passed (vLLM's watchdog)."""
    server = spawn("--engine-dead-exit-after", "1.0")
    _engine(server).kill()
    _until(lambda: server.health_status() == 503)
    dead = time.monotonic()
    assert server.health_status() == 503
    assert server.wait_exit(timeout=10) == 0
    assert 0.7 <= time.monotonic() - dead <= 5.0


def test_sigstop_of_engine_core_is_a_silent_hang(spawn: Spawn) -> None:
    """SIGSTOP of EngineCore: /health stays 200, completions hang, /metrics still says 0 running; SIGCONT
    recovers and the waiting request is answered."""
    server = spawn(model="m")
    core = _engine(server)
    core.suspend()
    try:
        with pytest.raises(httpx.ReadTimeout):
            _complete(server, timeout=1.0)
        assert all(server.health_status() == 200 for _ in range(5))
        assert _gauge(server, "vllm:num_requests_running") == 0
        assert httpx.get(f"{server.base_url}/admin/stats").json()["running"] == 1  # the API server's own view
    finally:
        core.resume()
    assert _complete(server).status_code == 200
    assert server.health_status() == 200


def test_sigkill_of_a_worker_kills_the_engine(spawn: Spawn) -> None:
    """SIGKILL of the worker: EngineCore reports it and exits, and the server sees engine death."""
    server = spawn("--engine-dead-exit-after", "never")
    core = _engine(server)
    _engine(server, "VLLM::Worker").kill()
    _until(lambda: server.health_status() == 503)
    _, alive = psutil.wait_procs([core], timeout=10)
    assert not alive
    assert "Worker proc VllmWorker-0 died unexpectedly (exit code: -9), shutting down executor." in server.stdout()


def test_sigkill_of_the_api_server_leaves_the_engine_running(spawn: Spawn) -> None:
    """SIGKILL of the API server: EngineCore and its worker live on in the server's process group, while the
    port is free at once."""
    server = spawn()
    engine = [_engine(server), _engine(server, "VLLM::Worker")]
    os.kill(server.pid, signal.SIGKILL)
    assert server.wait_exit(timeout=10) == -signal.SIGKILL
    gone, _ = psutil.wait_procs(engine, timeout=0.5)  # a parent-bound engine would be dying now
    assert gone == []
    assert {p.pid for p in group_members(server.pid)} == {p.pid for p in engine}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", server.port))


def test_ignore_sigterm_covers_the_engine_processes(spawn: Spawn) -> None:
    """--ignore-sigterm: SIGTERM to the whole group (what a supervisor sends) leaves every process serving."""
    server = spawn("--ignore-sigterm")
    engine = [_engine(server), _engine(server, "VLLM::Worker")]
    os.killpg(server.pid, signal.SIGTERM)
    gone, _ = psutil.wait_procs(engine, timeout=0.5)
    assert gone == []
    assert server.process.poll() is None
    assert _complete(server).status_code == 200


# -- signals while loading and serving -------------------------------------------------------------------


def test_sigterm_while_loading_is_ignored(spawn: Spawn) -> None:
    """SIGTERM to the group during loading is ignored, as vLLM 0.32 ignores it: the server goes on to serve."""
    server = spawn("--startup-delay", "1.5", ready=False)
    server.wait_for_log("Starting to load model")
    os.killpg(server.pid, signal.SIGTERM)
    server.wait_ready(timeout=30)
    stats = httpx.get(f"{server.base_url}/admin/stats").json()
    assert {"event": "sigterm_ignored", "phase": "loading"}.items() <= stats["events"][0].items()
    assert _complete(server).status_code == 200


def test_only_sigkill_stops_a_loading_server(spawn: Spawn) -> None:
    """SIGTERM and nothing happens; SIGKILL of the group ends it."""
    server = spawn("--startup-delay", "60", ready=False)
    server.wait_for_log("Starting to load model")
    server.process.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        server.wait_exit(timeout=1.0)
    os.killpg(server.pid, signal.SIGKILL)
    assert server.wait_exit(timeout=10) == -signal.SIGKILL


def test_sigterm_while_serving_exits_0_promptly_and_leaves_nothing(spawn: Spawn) -> None:
    """SIGTERM to the group while serving: exit 0 within a fraction of a second, no process left."""
    server = spawn()
    sent = time.monotonic()
    os.killpg(server.pid, signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 0
    assert time.monotonic() - sent < 3.0
    assert server.group() == []


def test_no_cancelled_error_for_idle_keep_alive_connections(spawn: Spawn) -> None:
    """A graceful stop with idle keep-alive connections open closes them quietly: no CancelledError
    traceback, no traceback at all, on stderr."""
    server = spawn()
    connections = []
    for _ in range(3):
        connection = socket.create_connection((server.host, server.port), timeout=5)
        connection.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 200 OK")
        connections.append(connection)
    try:
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit(timeout=10) == 0
        for connection in connections:
            assert connection.recv(4096) == b""  # closed by the server
    finally:
        for connection in connections:
            connection.close()
    err = server.stderr()
    assert "CancelledError" not in err
    assert "Traceback" not in err
    assert err.endswith("INFO:     Application shutdown complete.\n")


# -- failed start-ups: exit statuses and exact texts -----------------------------------------------------


def test_unknown_flag_exits_2_like_vllm() -> None:
    """An option vLLM 0.32 does not know: exit 2, vLLM's usage and `vllm: error: unrecognized arguments`."""
    result = _serve("m", "--future-flag", "x")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: vllm [-h] [-v]\n")
    assert result.stderr.endswith("vllm: error: unrecognized arguments: --future-flag x\n")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            "/nonexistent/model",
            "Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/nonexistent/model'. "
            "Use `repo_type` argument if needed.",
        ),
        (
            "./nope-model",
            "Repo id must use alphanumeric chars, '-', '_' or '.'. The name cannot start or end with '-' or '.' "
            "and the maximum length is 96: './nope-model'.",
        ),
    ],
)
def test_missing_local_model_path_exits_1_with_hfvalidationerror(model: str, message: str) -> None:
    """A model that looks like a local path and is not there: HFValidationError, exit 1, after 0.3 x
    --startup-delay (vLLM spends its first seconds importing before it resolves the model)."""
    started = time.monotonic()
    result = _serve(model, "--startup-delay", "1")
    assert result.returncode == 1
    assert time.monotonic() - started >= 0.3
    assert result.stderr.splitlines()[-1] == f"huggingface_hub.errors.HFValidationError: {message}"
    assert "Traceback (most recent call last):" in result.stderr
    assert "Starting vLLM server" not in result.stdout


def test_existing_local_model_directory_is_served(spawn: Spawn, tmp_path: Path) -> None:
    """A model path that exists is served under its path, like a downloaded model directory."""
    server = spawn(model=str(tmp_path))
    assert httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"] == str(tmp_path)


def test_max_model_len_over_the_kv_cache_exits_1_after_the_load() -> None:
    """--max-model-len beyond the KV cache: after loading, vLLM's ValueError twice (stdout with the EngineCore
    prefix, stderr raw), then the API server's RuntimeError, exit 1."""
    result = _serve("m", "--max-model-len", "10000000")
    assert result.returncode == 1
    value_error = (
        "ValueError: To serve at least one request with the model's max seq len (10000000), (4.77 GiB KV cache "
        "is needed, which is larger than the available KV cache memory (1.0 GiB). Based on the available memory, "
        "the estimated maximum model length is 2097152. Try increasing `gpu_memory_utilization` (which also "
        "controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. "
        "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    )
    out_lines, err_lines = result.stdout.splitlines(), result.stderr.splitlines()
    [logged] = [line for line in out_lines if line.endswith(value_error)]
    assert re.match(r"^\(EngineCore pid=\d+\) ERROR \d\d-\d\d [\d:]+ \[core\.py:\d+\] ValueError", logged)
    assert value_error in err_lines
    assert err_lines[-1] == START_FAILED
    assert "Process EngineCore:" in err_lines
    assert result.stdout.index("Warming up done.") < result.stdout.index(value_error)
    assert "Starting vLLM server" not in result.stdout


def test_kv_cache_tokens_sets_the_capacity() -> None:
    """--kv-cache-tokens 1000: a 4096-token context no longer fits; the estimate is what does."""
    result = _serve("m", "--kv-cache-tokens", "1000", "--max-model-len", "4096")
    assert result.returncode == 1
    assert "the estimated maximum model length is 992." in result.stderr


def test_kv_cache_size_is_logged(spawn: Spawn) -> None:
    """The KV cache line of vLLM's CPU backend, with the capacity set by --kv-cache-tokens."""
    server = spawn("--max-model-len", "256")
    assert "CPU KV cache size: 2,097,152 tokens, Maximum concurrency for 256 tokens per request: 8192.00x" in (
        server.stdout()
    )


# -- logs and endpoints ----------------------------------------------------------------------------------


def test_banner_and_landmarks(spawn: Spawn) -> None:
    """The ASCII banner with the version (one record of six lines joined by \\r\\n), the engine's lines with
    their own process prefixes, and vLLM 0.32's ready line."""
    server = spawn(model="m")
    out = server.raw_stdout()
    prefix = rf"\(APIServer pid={server.pid}\) INFO [\d\- :]+ \[api_utils\.py:\d+\] "
    assert re.search(rf"^{prefix} ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0\.32\.0\r$", out, re.MULTILINE)
    assert re.search(rf"^{prefix}  █▄█▀ █     █     █     █  model   m\r$", out, re.MULTILINE)
    core, worker = _engine(server), _engine(server, "VLLM::Worker")
    assert f"(EngineCore pid={core.pid}) INFO " in out
    assert f"(Worker pid={worker.pid}) INFO " in out
    assert "Initializing a V1 LLM engine (v0.32.0) with config: model='m'" in out
    assert f"Starting vLLM server on http://127.0.0.1:{server.port}\n" in out
    assert "vLLM API server version" not in out


def test_version_and_unknown_model_bodies(spawn: Spawn) -> None:
    """/version and the 404 for an unknown model, byte for byte as vLLM 0.32 answers them."""
    server = spawn("--served-model-name", "a", "b", model="m")
    assert httpx.get(f"{server.base_url}/version").content == b'{"version":"0.32.0"}'
    response = _complete(server, model="x")
    assert response.status_code == 404
    assert json.loads(response.content) == {
        "error": {
            "message": "The model `x` does not exist. Valid aliases: a, b.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


def test_gpu_build_landmarks_and_tree(spawn: Spawn, tmp_path: Path) -> None:
    """With a fake GPU the fake is vLLM's GPU build: EngineCore loads the model itself at TP=1 (no worker),
    and its lines are the GPU runner's, with no trace of the CPU build."""
    server = spawn("--fake-gpu-dir", str(tmp_path))
    core = _engine(server)
    assert core.children() == []
    out = server.stdout()
    assert re.search(rf"\(EngineCore pid={core.pid}\) INFO .* \[gpu_model_runner\.py:\d+\] Starting to load model", out)
    assert "Model loading took " in out
    assert "Available KV cache memory: 1.0 GiB" in out
    assert "GPU KV cache size: 2,097,152 tokens" in out
    assert "device_config=cuda" in out
    assert not re.search(r"cpu_model_runner|cpu_worker|device_config=cpu|CPU KV cache", out)
