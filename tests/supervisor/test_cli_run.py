"""`llm-supervisor run` as a real process: serving, SIGTERM, bind refusal, logs --follow, and kill -9 recovery."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from real_fleet import config_data, fake_model, model_processes

from supervisor.cli.daemon import StartupError, lock_state_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]
WAIT = 40.0  # generous: several real processes on a loaded two-core machine
CLI = [sys.executable, "-m", "supervisor.cli.main"]


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    url: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def _write_config(tmp_path: Path, models: dict[str, dict[str, Any]], **settings: Any) -> Path:
    path = tmp_path / "config.json"
    data = config_data(tmp_path / "state", models)
    data["supervisor"].update(settings)
    path.write_text(json.dumps(data))
    return path


def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@contextmanager
def daemon(config: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """Start `llm-supervisor run`, wait for its URL line; on exit make sure it is gone."""
    stderr_path = config.parent / f"daemon-{time.monotonic_ns()}.stderr"
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(
            [*CLI, "run", "-c", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
        )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        try:
            first = lines.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no URL line from the daemon; stderr: {stderr_path.read_text()}")
        assert first.startswith("llm-supervisor: API and dashboard at http://127.0.0.1:"), first
        yield Daemon(proc, first.rsplit(" ", 1)[1].strip().rstrip("/"), stderr_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an orphan whose new parent never reaps it is dead all the same)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_status(url: str, model_id: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/api/llm/models/{model_id}", timeout=5).json()
            if pred(last):
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{model_id} never reached the expected status; last: {last}")


def test_run_serves_and_sigterm_stops_everything(tmp_path: Path) -> None:
    """run prints the URL, serves API and page, logs state changes; SIGTERM stops all models and exits 0."""
    models = {"a": fake_model(), "b": fake_model()}
    with daemon(_write_config(tmp_path, models)) as d:
        for model_id in models:
            wait_status(d.url, model_id, lambda s: s["state"] == "healthy")
        assert httpx.get(f"{d.url}/health").json() == {"status": "ok"}
        assert "llm-supervisor" in httpx.get(f"{d.url}/").text
        assert "llm_supervisor_model_up" in httpx.get(f"{d.url}/metrics").text
        assert all(model_processes(m) for m in models.values())
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=WAIT) == 0
        assert all(model_processes(m) == [] for m in models.values())
        err = d.stderr()
        assert "a: spawned -> starting" in err
        assert "a: healthy\n" in err
        assert "every model stopped" in err


def test_run_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    """run on 0.0.0.0 with no token exits 2 with a sentence saying why, starting nothing."""
    config = _write_config(tmp_path, {"a": fake_model()})
    env = {k: v for k, v in os.environ.items() if k != "LLM_SUPERVISOR_TOKEN"}
    done = subprocess.run(
        [*CLI, "run", "-c", str(config), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in done.stderr
    assert "LLM_SUPERVISOR_TOKEN" in done.stderr


def test_run_with_a_token_requires_it(tmp_path: Path) -> None:
    """With the token variable set, the API needs it and the CLI client sends it."""
    config = _write_config(tmp_path, {"a": fake_model()}, token_env="TEST_SUP_TOKEN")
    with daemon(config, env={"TEST_SUP_TOKEN": "t0ken-value"}) as d:
        assert httpx.get(f"{d.url}/api/llm/models").status_code == 401
        env = {**os.environ, "TEST_SUP_TOKEN": "t0ken-value"}
        done = subprocess.run(
            [*CLI, "status", "--url", d.url, "--token-env", "TEST_SUP_TOKEN"],
            capture_output=True,
            text=True,
            env=env,
            timeout=WAIT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1].split()[0] == "a"


def test_logs_follow_streams_until_ctrl_c(tmp_path: Path) -> None:
    """`logs ID --follow` prints the tail, then new lines (a restart's), and exits 0 on Ctrl-C."""
    with daemon(_write_config(tmp_path, {"a": fake_model()})) as d:
        wait_status(d.url, "a", lambda s: s["state"] == "healthy")
        follower = subprocess.Popen(
            [*CLI, "logs", "a", "-n", "3", "--follow", "--url", d.url], stdout=subprocess.PIPE, text=True
        )
        lines: queue.Queue[str] = queue.Queue()
        assert follower.stdout is not None
        threading.Thread(target=_read_lines, args=(follower.stdout, lines), daemon=True).start()
        try:
            for _ in range(3):
                lines.get(timeout=WAIT)
            httpx.post(f"{d.url}/api/llm/models/a/restart", timeout=WAIT).raise_for_status()
            deadline = time.monotonic() + WAIT
            seen = ""
            while "--- run 2 started" not in seen:
                seen = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            follower.send_signal(signal.SIGINT)
            assert follower.wait(timeout=WAIT) == 0
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
            follower.stdout.close()


def test_kill_9_then_restart_leaves_no_orphan_no_duplicate(tmp_path: Path) -> None:
    """kill -9 of run while one model is healthy and one in backoff; a new run on the same state_dir stops
    the old runs, starts each model once, and keeps restart counters and the timeline."""
    healthy_model = fake_model()
    crashing = fake_model("--crash-after", "0.5", restart_delay=60)
    config = _write_config(tmp_path, {"up": healthy_model, "loop": crashing})
    with daemon(config) as first:
        old = wait_status(first.url, "up", lambda s: s["state"] == "healthy")
        waiting = wait_status(first.url, "loop", lambda s: s["state"] == "backoff")
        seqs = [e["seq"] for e in httpx.get(f"{first.url}/api/llm/models/up/events").json()]
        first.proc.kill()  # SIGKILL: no chance to stop the models
        assert first.proc.wait(timeout=WAIT) == -signal.SIGKILL
        orphan = psutil.Process(old["pid"])
        assert alive(orphan)  # the run outlived its supervisor: exactly what the journal is for

    with daemon(config) as second:
        new = wait_status(second.url, "up", lambda s: s["state"] == "healthy")
        assert new["pid"] != old["pid"]
        assert not alive(orphan)  # stopped, not adopted (see docs/operations.md)
        assert [p.pid for p in model_processes(healthy_model)] == [new["pid"]]
        loop = wait_status(second.url, "loop", lambda s: True)
        assert loop["restart_count"] >= waiting["restart_count"] >= 1
        assert len(model_processes(crashing)) <= 1
        events = httpx.get(f"{second.url}/api/llm/models/up/events").json()
        assert [e["seq"] for e in events][: len(seqs)] == seqs  # the first life's timeline is kept
        assert any("left behind" in (e["detail"] or "") for e in events)
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=WAIT) == 0
    assert model_processes(healthy_model) == []
    assert model_processes(crashing) == []


def test_a_second_supervisor_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    """Two supervisors on one state_dir would stop each other's runs: the second refuses to start."""
    first = lock_state_dir(tmp_path / "state")
    try:
        with pytest.raises(StartupError, match=rf"another llm-supervisor \(pid {os.getpid()}\)"):
            lock_state_dir(tmp_path / "state")
    finally:
        os.close(first)
    os.close(lock_state_dir(tmp_path / "state"))  # free again once the holder is gone
