"""The CLI's operating commands against served apps: check, recover, reload, events --follow, LLM_SUPERVISOR_URL."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import serve_in_thread, unused_url
from fakes import FakeSupervisor
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from supervisor.api.app import create_app
from supervisor.cli import main as cli
from supervisor.core.states import Cause, EventKind, State

WAIT = 30.0


@pytest.fixture
def sup(tmp_path: Path) -> FakeSupervisor:
    fake = FakeSupervisor(["qwen", "llama"], tmp_path / "logs")
    fake.set_status("llama", State.FAILED, failure_cause=Cause.OOM, failure_advice="lower\nit", restart_count=3)
    return fake


@pytest.fixture
def url(sup: FakeSupervisor) -> Iterator[str]:
    with serve_in_thread(create_app(sup, token=None)) as base:
        yield base


def test_check_prints_a_line_per_model_and_exits_1_when_one_is_not_healthy(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check`: one plain line per model (no colour codes off a terminal), exit 1 because llama failed."""
    assert cli.main(["check", "--url", url]) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "qwen: healthy (pid 4242, up 12s, restarts 0/3)",
        "llama: failed (cause oom, restarts 3/3): lower it",
    ]
    assert "\x1b" not in out


def test_check_of_named_healthy_models_exits_0(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`check ID` judges only the named models: qwen is healthy, so exit 0 and only its line."""
    assert cli.main(["check", "qwen", "--url", url]) == 0
    assert capsys.readouterr().out.splitlines() == ["qwen: healthy (pid 4242, up 12s, restarts 0/3)"]


def test_check_of_a_stopped_model_says_an_operator_stopped_it(
    sup: FakeSupervisor, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model an operator stopped is not healthy (exit 1), and its line says why it is down."""
    sup.set_status("qwen", State.STOPPED)
    assert cli.main(["check", "qwen", "--url", url]) == 1
    assert capsys.readouterr().out == "qwen: stopped (stopped by an operator, restarts 0/3)\n"


def test_check_of_an_unknown_model_exits_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt id is a usage error naming the configured ids; stdout stays empty."""
    assert cli.main(["check", "qwen", "ghost", "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown model 'ghost' (configured: qwen, llama)" in captured.err


def test_check_exits_3_when_the_daemon_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: exit 3, nothing on stdout (cron tells unreachable from unhealthy)."""
    assert cli.main(["check", "--url", unused_url()]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no answer from" in captured.err


def test_url_env_var_is_the_default_url(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """LLM_SUPERVISOR_URL replaces the built-in default; --url still wins over it."""
    monkeypatch.setenv("LLM_SUPERVISOR_URL", url)
    assert cli.main(["check", "qwen"]) == 0
    assert cli.main(["check", "qwen", "--url", unused_url()]) == 3
    monkeypatch.setenv("LLM_SUPERVISOR_URL", unused_url())
    assert cli.main(["status"]) == 3
    assert "no answer from http://127.0.0.1:" in capsys.readouterr().err


def _ops_app(reload_status: int, reload_body: dict[str, Any]) -> FastAPI:
    """A stand-in daemon serving /api/heal and /api/reload with the contract's answer shapes."""
    app = FastAPI()
    calls: list[str] = []
    app.state.calls = calls

    @app.post("/api/heal")
    async def heal() -> dict[str, Any]:
        calls.append("heal")
        return {"actions": [{"model": "llama", "action": "start", "reason": "failed: crash (transient)"}]}

    @app.post("/api/reload")
    async def reload() -> JSONResponse:
        calls.append("reload")
        return JSONResponse(reload_body, status_code=reload_status)

    return app


def test_recover_posts_heal_and_prints_each_action(capsys: pytest.CaptureFixture[str]) -> None:
    """`recover` runs one heal pass and prints each action with its reason."""
    app = _ops_app(200, {})
    with serve_in_thread(app) as base:
        assert cli.main(["recover", "--url", base]) == 0
    assert app.state.calls == ["heal"]
    assert capsys.readouterr().out == "llama: start (failed: crash (transient))\n"


def test_reload_prints_what_changed(capsys: pytest.CaptureFixture[str]) -> None:
    """`reload` prints each part of the answer on its own line, `-` for an empty one."""
    answer = {"added": ["new"], "removed": [], "restarted": ["qwen", "llama"], "unchanged": ["a"], "needs_restart": []}
    app = _ops_app(200, answer)
    with serve_in_thread(app) as base:
        assert cli.main(["reload", "--url", base]) == 0
    assert app.state.calls == ["reload"]
    assert capsys.readouterr().out.splitlines() == [
        "added: new",
        "removed: -",
        "restarted: qwen; llama",
        "unchanged: a",
        "needs_restart: -",
    ]


PROBLEMS = ["llmModels.qwen.restart_polcy: unknown key", "llmModels.llama.max_restarts: must be >= 0"]


@pytest.mark.parametrize(
    "body",
    [
        {"detail": "fleet.yaml: 2 problems:\n  " + "\n  ".join(PROBLEMS), "problems": PROBLEMS},
        {"detail": "\n".join(PROBLEMS)},
        {"detail": PROBLEMS},
    ],
)
def test_reload_of_a_bad_config_lists_every_problem_and_exits_2(
    body: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 422 from reload: exit 2, and stderr lists every problem (the daemon's `problems`, or its detail's)."""
    with serve_in_thread(_ops_app(422, body)) as base:
        assert cli.main(["reload", "--url", base]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nothing was changed" in captured.err
    assert "  llmModels.qwen.restart_polcy: unknown key\n" in captured.err
    assert "  llmModels.llama.max_restarts: must be >= 0\n" in captured.err


def test_reload_against_a_daemon_without_the_endpoint_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An older daemon (404 for /api/reload) is a usage error with the status, not a traceback."""
    with serve_in_thread(FastAPI()) as base:
        assert cli.main(["reload", "--url", base]) == 2
    assert "404" in capsys.readouterr().err


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return lines


def test_events_follow_prints_new_events_until_ctrl_c(sup: FakeSupervisor, url: str) -> None:
    """`events ID --follow` prints the timeline, then each new event as it happens; Ctrl-C exits 0."""
    sup.emit("qwen", EventKind.SPAWNED, State.STARTING)
    follower = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli.main", "events", "qwen", "--follow", "--interval", "0.1", "--url", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines_of(follower)
        first = lines.get(timeout=WAIT)
        assert first.split()[0] == "1"
        assert "spawned" in first
        sup.emit("qwen", EventKind.EXITED, State.BACKOFF, detail="exit code 1", reason="crash")
        sup.emit("llama", EventKind.SPAWNED, State.STARTING)  # another model's: not shown
        sup.emit("qwen", EventKind.HEALTHY, State.HEALTHY)
        second, third = lines.get(timeout=WAIT), lines.get(timeout=WAIT)
        assert second.split()[0] == "2"
        assert "exit code 1 [reason: crash]" in second
        assert third.split()[0] == "4"
        assert "healthy" in third
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=WAIT) == 0
        assert lines.empty()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        assert follower.stdout is not None
        follower.stdout.close()


def test_follow_events_polls_with_the_last_seq(sup: FakeSupervisor, url: str) -> None:
    """The follow generator asks `?since=` the newest seq it has seen, so no event is shown twice or lost."""
    from supervisor.cli.client import SupervisorClient

    sup.emit("qwen", EventKind.SPAWNED, State.STARTING)
    sup.emit("qwen", EventKind.HEALTHY, State.HEALTHY)
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the poll's pause: an event happens meanwhile
        polls.append(seconds)
        sup.emit("qwen", EventKind.PROBE_FAILED, State.HEALTHY, detail=f"poll {len(polls)}")

    with SupervisorClient(url) as client:
        events = client.follow_events("qwen", since=0, limit=1, interval=0.5, sleep=sleep)
        seen = [next(events) for _ in range(3)]
    assert [e["seq"] for e in seen] == [2, 3, 4]
    assert [e["detail"] for e in seen[1:]] == ["poll 1", "poll 2"]
    assert polls == [0.5, 0.5]


@pytest.mark.parametrize(("argv", "message"), [(["monitor", "--interval", "0"], "--interval must be above 0")])
def test_non_positive_intervals_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interval of 0 would spin: exit 2 naming the option, nothing sent."""
    assert cli.main([*argv, "--url", "http://127.0.0.1:9"]) == 2
    assert message in capsys.readouterr().err


def test_check_json_says_healthy_and_keeps_the_exit_code(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`check --json` prints the verdict and the judged models' statuses; the exit code is the same as without."""
    assert cli.main(["check", "--json", "--url", url]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["healthy"] is False
    assert [m["id"] for m in body["models"]] == ["qwen", "llama"]
    assert cli.main(["check", "qwen", "--json", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["healthy"] is True


def test_recover_with_nothing_to_do_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """A heal pass that took no action prints `nothing to heal` and exits 0."""
    app = FastAPI()

    @app.post("/api/heal")
    async def heal() -> dict[str, Any]:
        return {"actions": []}

    with serve_in_thread(app) as base:
        assert cli.main(["recover", "--url", base]) == 0
    assert capsys.readouterr().out == "nothing to heal\n"


def test_fluidmcp_secure_mode_token_is_sent_when_the_named_variable_is_unset(
    sup: FakeSupervisor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like the daemon, the client falls back to FMCP_BEARER_TOKEN in FluidMCP's secure mode; otherwise not."""
    monkeypatch.delenv("LLM_SUPERVISOR_TOKEN", raising=False)
    monkeypatch.setenv("FMCP_BEARER_TOKEN", "fmcp-secret")
    with serve_in_thread(create_app(sup, token="fmcp-secret")) as base:
        assert cli.main(["check", "qwen", "--url", base]) == 2  # secure mode off: no token sent, 401
        assert "401" in capsys.readouterr().err
        monkeypatch.setenv("FMCP_SECURE_MODE", "true")
        assert cli.main(["check", "qwen", "--url", base]) == 0
        monkeypatch.setenv("LLM_SUPERVISOR_TOKEN", "wrong")  # the named variable, when set, wins
        assert cli.main(["check", "qwen", "--url", base]) == 2
