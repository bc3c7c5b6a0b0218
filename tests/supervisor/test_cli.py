"""The CLI: `validate`, and the client subcommands' output and exit codes against a served fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import serve_in_thread, unused_url
from fakes import FakeSupervisor

from supervisor.api.app import create_app
from supervisor.api.ratelimit import ActionRateLimiter
from supervisor.cli import format as cli_format
from supervisor.cli import main as cli
from supervisor.core.states import Cause, EventKind, State

TOKEN = "cli-token"


@pytest.fixture
def sup(tmp_path: Path) -> FakeSupervisor:
    fake = FakeSupervisor(["qwen", "llama"], tmp_path / "logs")
    fake.set_status("llama", State.FAILED, failure_cause=Cause.OOM, failure_advice="lower it", restart_count=3)
    return fake


@pytest.fixture
def url(sup: FakeSupervisor) -> Iterator[str]:
    with serve_in_thread(create_app(sup, token=None)) as base:
        yield base


def test_status_table_lists_every_model(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` prints a table with one row per model: state, restarts, cause."""
    assert cli.main(["status", "--url", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "CAUSE"]
    assert out[1].split() == ["qwen", "healthy", "4242", "12s", "0/3", "ok", "-"]
    assert out[2].split()[:2] == ["llama", "failed"]
    assert out[2].split()[-1] == "oom"


def test_status_of_one_model_shows_advice(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`status ID` prints the model's fields, its failure cause and the advice."""
    assert cli.main(["status", "llama", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "failure cause:" in out
    assert "oom" in out
    assert "advice:" in out
    assert "lower it" in out


def test_json_output_is_the_api_answer(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` prints the API's JSON unchanged, for scripts."""
    assert cli.main(["status", "--url", url, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["total"] == 2
    assert body["models"][1]["failure_cause"] == "oom"


@pytest.mark.parametrize(
    ("argv", "call"),
    [
        (["start", "qwen"], ("start", "qwen")),
        (["stop", "qwen"], ("stop", "qwen")),
        (["stop", "qwen", "--force"], ("stop-force", "qwen")),
        (["restart", "llama"], ("restart", "llama")),
    ],
)
def test_actions_exit_0_and_print_the_message(
    sup: FakeSupervisor, url: str, capsys: pytest.CaptureFixture[str], argv: list[str], call: tuple[str, str]
) -> None:
    """start/stop/restart reach the supervisor once, print its message and exit 0."""
    assert cli.main([*argv, "--url", url]) == 0
    assert sup.calls == [call]
    assert capsys.readouterr().out.strip().endswith("begun")


def test_refused_action_exits_1_with_the_reason(
    sup: FakeSupervisor, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused operation exits 1 and prints the supervisor's reason on stderr."""
    sup.refuse_next = "restart budget of 'qwen' is spent"
    assert cli.main(["restart", "qwen", "--url", url]) == 1
    assert "409: restart budget of 'qwen' is spent" in capsys.readouterr().err


def test_rate_limited_action_exits_1(sup: FakeSupervisor, capsys: pytest.CaptureFixture[str]) -> None:
    """A 429 is a refused operation (exit 1) and says when to retry."""
    app = create_app(sup, token=None, rate_limiter=ActionRateLimiter(limit=1))
    with serve_in_thread(app) as base:
        assert cli.main(["restart", "qwen", "--url", base]) == 0
        assert cli.main(["restart", "qwen", "--url", base]) == 1
    assert "Retry-After: 60 s" in capsys.readouterr().err


def test_unknown_model_exits_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown model id is a usage error (exit 2) naming the configured ids."""
    assert cli.main(["status", "ghost", "--url", url]) == 2
    assert "unknown model 'ghost' (configured: qwen, llama)" in capsys.readouterr().err


def test_unreachable_daemon_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening at --url: exit 3 and a sentence naming the URL."""
    url = unused_url()
    assert cli.main(["status", "--url", url]) == 3
    assert f"no answer from {url}" in capsys.readouterr().err


def test_token_is_read_from_the_named_env_var(
    sup: FakeSupervisor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the token the CLI exits 2 explaining why; with it (from --token-env's variable) it works."""
    with serve_in_thread(create_app(sup, token=TOKEN)) as base:
        monkeypatch.delenv("LLM_SUPERVISOR_TOKEN", raising=False)
        assert cli.main(["status", "--url", base]) == 2
        assert "missing bearer token" in capsys.readouterr().err
        monkeypatch.setenv("OPS_TOKEN", TOKEN)
        assert cli.main(["status", "--url", base, "--token-env", "OPS_TOKEN"]) == 0
        monkeypatch.setenv("LLM_SUPERVISOR_TOKEN", TOKEN)
        assert cli.main(["restart", "qwen", "--url", base]) == 0


def test_events_table(sup: FakeSupervisor, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`events ID` prints the timeline with detail and reason; `-n` keeps the newest."""
    sup.emit("qwen", EventKind.SPAWNED, State.STARTING)
    sup.emit("qwen", EventKind.EXITED, State.BACKOFF, detail="exit code 1", reason="crash")
    assert cli.main(["events", "qwen", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "KIND", "STATE", "DETAIL"]
    assert len(lines) == 3
    assert "exited" in lines[2]
    assert "exit code 1 [reason: crash]" in lines[2]
    assert cli.main(["events", "qwen", "-n", "1", "--url", url, "--json"]) == 0
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)] == ["exited"]


@pytest.mark.parametrize("lines", ["0", "10001"])
def test_logs_line_count_out_of_range_exits_2(lines: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`logs -n` outside 1..10000 is a usage error before anything is sent."""
    assert cli.main(["logs", "qwen", "-n", lines, "--url", "http://127.0.0.1:9"]) == 2
    assert "--lines must be between 1 and 10000" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing subcommand or argument exits 2 with argparse's usage."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["restart"])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_validate_ok_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` of a good config exits 0 with a one-line summary naming the models."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "llmModels:\n  qwen: {command: fake-vllm, args: [serve, q]}\n  llama: {command: fake-vllm, args: [serve, l]}\n"
    )
    assert cli.main(["validate", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "ok: 2 models (qwen, llama)\n"


def test_validate_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` of a bad config exits 2 and lists each problem with its key path."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "llmModels:\n"
        "  qwen: {command: fake-vllm, restart_polcy: always}\n"
        "  llama: {command: fake-vllm, max_restarts: -1}\n"
    )
    assert cli.main(["validate", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "llmModels.qwen.restart_polcy: unknown key" in err
    assert "llmModels.llama.max_restarts" in err


@pytest.mark.parametrize(
    ("flags", "options"), [([], (None, False)), (["--replica", "1"], (1, False)), (["--rolling"], (None, True))]
)
def test_restart_passes_replica_and_rolling_to_the_api(
    sup: FakeSupervisor, url: str, flags: list[str], options: tuple[int | None, bool]
) -> None:
    """`restart ID [--replica N | --rolling]` asks the API for exactly that restart."""
    assert cli.main(["restart", "qwen", "--url", url, *flags]) == 0
    assert sup.restart_options == [options]


def test_restart_refuses_replica_and_rolling_together(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """One replica and a rolling restart of all cannot both be meant: usage error, exit 2, nothing sent."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["restart", "qwen", "--url", url, "--replica", "0", "--rolling"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_model_of_several_replicas_lists_each_under_it() -> None:
    """The status table shows a replicated model's row, then one indented row per replica."""
    model = {
        "id": "q", "state": "healthy", "pid": 11, "uptime_seconds": 5, "restart_count": 1, "max_restarts": 3,
        "is_healthy": True, "failure_cause": None,
        "replicas": [
            {"index": 0, "port": 8001, "state": "healthy", "pid": 11, "is_healthy": True, "restart_count": 0,
             "failure_cause": None, "in_flight": 2, "draining": False},
            {"index": 1, "port": 8002, "state": "starting", "pid": 12, "is_healthy": False, "restart_count": 1,
             "failure_cause": "crash", "in_flight": 0, "draining": True},
        ],
    }  # fmt: skip
    lines = cli_format.models_table([model]).splitlines()
    assert lines[1].split()[:2] == ["q", "healthy"]
    assert lines[2].split() == ["#0:8001", "healthy", "11", "0", "ok", "(2", "in", "flight)", "-"]
    assert lines[3].split() == ["#1:8002", "starting", "draining", "12", "1", "-", "crash"]
