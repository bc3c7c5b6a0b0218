"""GET .../logs and .../logs/stream over log files written by the real LogWriter (rotation, redaction)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from api_helpers import asgi_client, serve_in_thread
from fakes import FakeSupervisor

from supervisor.api.app import create_app
from supervisor.store.logs import LogWriter
from supervisor.store.redact import Redactor


@pytest.fixture
def sup(tmp_path: Path) -> FakeSupervisor:
    return FakeSupervisor(["qwen"], tmp_path / "logs")


def _body(line: str) -> str:
    """The model's text of a stored line ('<time> <stream> | <text>')."""
    return line.split(" | ", 1)[1]


async def test_logs_returns_newest_lines_of_both_streams_in_order(sup: FakeSupervisor) -> None:
    """?lines=N gives the newest N lines, stdout and stderr interleaved as written, oldest first."""
    with LogWriter(sup.log_dir(), "qwen") as writer:
        for i in range(10):
            writer.write("stdout" if i % 2 else "stderr", f"line {i}")
    async with asgi_client(create_app(sup, token=None)) as client:
        body = (await client.get("/api/llm/models/qwen/logs?lines=3")).json()
    assert body["model_id"] == "qwen"
    assert body["total_lines"] == 10
    assert body["returned_lines"] == 3
    assert [_body(x) for x in body["lines"]] == ["line 7", "line 8", "line 9"]
    assert " stdout | " in body["lines"][0]
    assert " stderr | " in body["lines"][1]


async def test_logs_span_rotated_files_and_runs(sup: FakeSupervisor) -> None:
    """Lines from rotated files and earlier runs are included, in order, with the total across files."""
    with LogWriter(sup.log_dir(), "qwen", max_bytes=1024, backups=5) as writer:
        writer.start_run(1, 100)
        for i in range(30):
            writer.write("stdout", f"run1 line {i:02d}")
        writer.start_run(2, 200)
        for i in range(5):
            writer.write("stderr", f"run2 line {i}")
    assert (sup.log_dir() / "qwen.log.1").exists()
    async with asgi_client(create_app(sup, token=None)) as client:
        body = (await client.get("/api/llm/models/qwen/logs?lines=10000")).json()
    texts = [_body(x) for x in body["lines"]]
    assert texts[-6:] == ["--- run 2 started (pid 200) ---", *(f"run2 line {i}" for i in range(5))]
    run1 = [t for t in texts if t.startswith("run1")]
    assert run1 == sorted(run1)
    assert len(run1) > 10  # more than the current file alone holds
    assert body["total_lines"] == len(texts)


async def test_logs_are_redacted(sup: FakeSupervisor) -> None:
    """Bearer tokens, hf_ and sk- tokens and secret-named env values never come back from the API."""
    hf = "hf_" + "a" * 34
    sk = "sk-" + "b" * 40
    env = {"HF_TOKEN": hf, "MY_SERVICE_PASSWORD": "hunter2-long", "HF_HOME": "/data/hf"}
    with LogWriter(sup.log_dir(), "qwen", redactor=Redactor(env)) as writer:
        writer.write("stdout", f"Authorization: Bearer abcdefghijklmnop and {sk}")
        writer.write("stderr", f"login with {hf}; db password hunter2-long; cache /data/hf")
    async with asgi_client(create_app(sup, token=None)) as client:
        text = "\n".join((await client.get("/api/llm/models/qwen/logs")).json()["lines"])
    for secret in (hf, sk, "abcdefghijklmnop", "hunter2-long"):
        assert secret not in text
    assert "Bearer [REDACTED]" in text
    assert "cache /data/hf" in text  # HF_HOME is not a secret


async def test_logs_of_a_model_that_never_ran_are_empty(sup: FakeSupervisor) -> None:
    """No log file yet: an empty answer, not an error."""
    async with asgi_client(create_app(sup, token=None)) as client:
        body = (await client.get("/api/llm/models/qwen/logs?lines=5")).json()
    assert body == {"model_id": "qwen", "lines": [], "total_lines": 0, "returned_lines": 0}


def test_stream_sends_the_tail_then_new_lines(sup: FakeSupervisor) -> None:
    """GET .../logs/stream sends the newest lines, then each new line as it is written."""
    writer = LogWriter(sup.log_dir(), "qwen")
    for i in range(5):
        writer.write("stdout", f"old {i}")
    try:
        with (
            serve_in_thread(create_app(sup, token=None)) as url,
            httpx.Client(base_url=url) as client,
            client.stream("GET", "/api/llm/models/qwen/logs/stream?lines=2", timeout=20) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            lines = response.iter_lines()
            assert [_body(next(lines)), _body(next(lines))] == ["old 3", "old 4"]
            started = time.monotonic()
            writer.write("stderr", "fresh line")
            assert _body(next(lines)) == "fresh line"
            assert time.monotonic() - started < 10  # polled every 0.25 s; generous for a loaded machine
    finally:
        writer.close()
