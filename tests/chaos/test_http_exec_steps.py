"""The `http` and `exec` steps: a user's own faults, without editing the harness."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from chaos.actions import ActionError, Context, Reach, perform, refusal
from chaos.observer import Observer
from chaos.steps import Step

API = "http://127.0.0.1:9"  # the supervisor's API as the steps see it; nothing needs to listen there


class Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None, bytes]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Recorder.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        self.send_response(503 if self.path == "/down" else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def step(data: dict[str, Any]) -> Any:
    return TypeAdapter(Step).validate_python(data)


async def run(data: dict[str, Any]) -> str:
    async with httpx.AsyncClient(headers={"Authorization": "Bearer api-secret"}) as client:
        ctx = Context(
            client, API, Observer(client, API, processes_visible=False), local=True, allow_process_actions=True
        )
        message, revert = await perform(step(data), ctx)
        assert revert is None
        return message


async def test_http_calls_the_url_with_its_body_and_never_the_apis_token(server: str) -> None:
    """POST with a JSON body reaches the URL; the API's bearer token stays with the API."""
    message = await run({"action": "http", "method": "POST", "url": f"{server}/flag", "json": {"on": True}})
    assert message == f"POST {server}/flag: 200"
    assert Recorder.seen == [("POST", "/flag", None, b'{"on":true}')]


async def test_http_fails_the_step_on_an_unexpected_status(server: str) -> None:
    with pytest.raises(ActionError, match="503, expected 200"):
        await run({"action": "http", "url": f"{server}/down", "expect_status": 200})


async def test_http_to_nowhere_fails_the_step() -> None:
    with pytest.raises(ActionError, match="ConnectError"):
        await run({"action": "http", "url": "http://127.0.0.1:9/x", "timeout": 2})


async def test_exec_runs_the_argv_with_the_api_url(tmp_path: Path) -> None:
    """The command runs without a shell; `{api}` becomes the supervisor's API URL; its output is recorded."""
    out = tmp_path / "out"
    code = f"import sys; open({str(out)!r}, 'w').write(sys.argv[1]); print('done; $HOME stays literal')"
    message = await run({"action": "exec", "command": [sys.executable, "-c", code, "{api}/x"]})
    assert out.read_text() == f"{API}/x"
    assert message.endswith("exit 0: done; $HOME stays literal")


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ([sys.executable, "-c", "raise SystemExit(3)"], "exit 3 (expected exit 0)"),
        (["/nonexistent/tool"], "cannot run '/nonexistent/tool'"),
    ],
)
async def test_exec_fails_the_step_when_the_command_fails(command: list[str], problem: str) -> None:
    with pytest.raises(ActionError, match=re.escape(problem)):
        await run({"action": "exec", "command": command})


async def test_exec_past_its_timeout_is_killed() -> None:
    with pytest.raises(ActionError, match=re.escape("still running after 0.5 s; killed")):
        await run({"action": "exec", "command": [sys.executable, "-c", "import time; time.sleep(60)"], "timeout": 0.5})


def test_exec_is_refused_against_a_remote_target() -> None:
    """A command runs on this host: a remote target skips the step, saying why; http runs anywhere."""
    assert refusal(step({"action": "exec", "command": ["true"]}), Reach()) == (
        "exec runs a command on this host: local targets only"
    )
    assert refusal(step({"action": "http", "url": "http://example.test/"}), Reach()) is None
