"""Issue 10's rough edges, each against the real Fleet and real fake-vllm processes where it matters: the rate
limit (stop never refused, no-ops not counted), the restart answer, a stopped model's health message, the last
failure after a recovery, an operator's stop from an earlier life, /metrics without `_created`, `make clean`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from api_helpers import asgi_client
from fakes import FakeSupervisor
from real_fleet import config_data, fake_model, model_processes
from test_api_real import healthy, running, status, wait_for

from fake_vllm.testing import free_port
from supervisor.api.app import create_app
from supervisor.cli.format import model_detail
from supervisor.config.schema import load_config, parse_config
from supervisor.loop import fleet as fleet_module
from supervisor.loop.fleet import Fleet
from supervisor.store.base import PersistedModel
from supervisor.store.journal import JOURNAL_FILENAME, Journal

ROOT = Path(__file__).resolve().parents[2]

slow = pytest.mark.slow
real = pytest.mark.usefixtures("no_process_left")


@slow
@real
async def test_stop_is_never_rate_limited_and_no_ops_do_not_count(tmp_path: Path) -> None:
    """With a limit of 2: starts of a running model do not count, two restarts do, the third is 429, and
    stop (forced or not) still gets through."""
    model = fake_model()
    async with running(tmp_path, {"m": model}, rate_limit=2) as client:
        await wait_for(client, "m", healthy)
        for _ in range(5):
            noop = await client.post("/api/llm/models/m/start")
            assert noop.status_code == 200
            assert noop.json()["message"] == "already healthy"
        for _ in range(2):
            assert (await client.post("/api/llm/models/m/restart")).status_code == 200
        assert (await client.post("/api/llm/models/m/restart")).status_code == 429
        assert (await client.post("/api/llm/models/m/start")).status_code == 429  # a real start would count
        stop = await client.post("/api/llm/models/m/stop?force=true")
        assert stop.status_code == 200, stop.text
        await wait_for(client, "m", lambda s: s["state"] == "stopped")
        assert (await client.post("/api/llm/models/m/stop")).status_code == 200  # already stopped: still no 429
        assert model_processes(model) == []


async def test_refused_actions_do_not_count(tmp_path: Path) -> None:
    """Actions the supervisor refused (409) give their slot back: the limit counts only what was done."""
    sup = FakeSupervisor(["m"], tmp_path)
    app = create_app(sup, token=None)
    async with asgi_client(app) as client:
        for _ in range(15):
            sup.refuse_next = "the supervisor is shutting down"
            assert (await client.post("/api/llm/models/m/restart")).status_code == 409
        for _ in range(10):
            assert (await client.post("/api/llm/models/m/restart")).status_code == 200
        assert (await client.post("/api/llm/models/m/restart")).status_code == 429
        for _ in range(3):
            assert (await client.post("/api/llm/models/m/stop")).status_code in (200, 409)


@slow
@real
async def test_restart_answer_shows_the_new_run(tmp_path: Path) -> None:
    """The restart's answer carries the new run's pid (its process), not the old one's."""
    model = fake_model()
    async with running(tmp_path, {"m": model}) as client:
        old = await wait_for(client, "m", healthy)
        answer = (await client.post("/api/llm/models/m/restart")).json()
        assert answer["status"]["pid"] is not None
        assert answer["status"]["pid"] != old["pid"]
        assert answer["status"]["is_running"] is True
        assert answer["uptime_seconds"] is not None
        assert answer["uptime_seconds"] < 10
        assert [p.pid for p in model_processes(model)] == [answer["status"]["pid"]]


@slow
@real
async def test_restart_answer_of_a_slow_stop_comes_while_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that ignores SIGTERM keeps the answer waiting only RESTART_ANSWER_WAIT: it says `stopping`, and
    the new run follows once the old one is killed."""
    monkeypatch.setattr(fleet_module, "RESTART_ANSWER_WAIT", 0.5)
    model = fake_model("--ignore-sigterm", stop_timeout=3)
    async with running(tmp_path, {"m": model}) as client:
        old = await wait_for(client, "m", healthy)
        started = time.monotonic()
        answer = (await client.post("/api/llm/models/m/restart")).json()
        assert time.monotonic() - started < 2.5
        assert answer["status"]["state"] == "stopping"
        new = await wait_for(client, "m", lambda s: healthy(s) and s["pid"] != old["pid"])
        assert [p.pid for p in model_processes(model)] == [new["pid"]]


@slow
@real
async def test_a_stopped_model_shows_no_stale_health_message(tmp_path: Path) -> None:
    """A model whose probes were failing says nothing about health once it is stopped."""
    model = fake_model()
    model["endpoints"] = {"base_url": f"http://127.0.0.1:{free_port()}/v1"}  # probes find nothing there
    async with running(tmp_path, {"m": model}) as client:
        failing = await wait_for(client, "m", lambda s: s["health_message"] is not None)
        assert failing["state"] in ("starting", "backoff")
        assert (await client.post("/api/llm/models/m/stop?force=true")).status_code == 200
        stopped = await wait_for(client, "m", lambda s: s["state"] == "stopped")
        assert stopped["health_message"] is None


@slow
@real
async def test_status_keeps_the_last_failure_after_recovery(tmp_path: Path) -> None:
    """kill -9, then healthy again: failure_cause is cleared, last_failure keeps cause, time and exit code."""
    model = fake_model()
    async with running(tmp_path, {"m": model}) as client:
        first = await wait_for(client, "m", healthy)
        assert first["last_failure"] is None
        killed_at = time.time()
        os.kill(first["pid"], signal.SIGKILL)
        again = await wait_for(client, "m", lambda s: healthy(s) and s["pid"] != first["pid"])
        assert again["failure_cause"] is None
        failure = again["last_failure"]
        assert failure["cause"] == "crash"
        assert failure["exit_code"] == -signal.SIGKILL
        assert killed_at - 1 <= failure["time"] <= time.time()
        shown = model_detail(again)
        assert "last failure:" in shown
        assert "crash at " in shown
        assert ", exit code -9" in shown


@slow
@real
async def test_a_model_stopped_in_an_earlier_life_stays_stopped_and_says_how_to_start_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At start-up, a model the journal says an operator stopped is logged as staying stopped, with the command."""
    models = {"kept": fake_model(), "up": fake_model()}
    config = parse_config(config_data(tmp_path / "state", models), "test")
    journal = Journal.open(config.supervisor.state_dir / JOURNAL_FILENAME)
    journal.save_model("kept", PersistedModel("stopped", (), 0, 0, failed=False, run=None))
    fleet = Fleet(config, store=journal, seed=1)
    with caplog.at_level(logging.WARNING, logger="supervisor.loop.fleet"):
        await fleet.start()
    try:
        messages = [r.getMessage() for r in caplog.records]
        assert any("kept: stopped by an operator" in m and "llm-supervisor start kept" in m for m in messages)
        assert not any(m.startswith("up:") for m in messages)
        await asyncio.sleep(0.5)
        assert fleet.status("kept").state == "stopped"
        assert model_processes(models["kept"]) == []
    finally:
        await fleet.shutdown()
        journal.close()


async def test_metrics_have_no_created_series(tmp_path: Path) -> None:
    """/metrics no longer doubles every counter and histogram with a `*_created` series."""
    sup = FakeSupervisor(["m"], tmp_path)
    async with asgi_client(create_app(sup, token=None)) as client:
        await client.post("/api/llm/models/m/restart")
        text = (await client.get("/metrics")).text
    assert "llm_supervisor_restarts_total" in text
    assert "_created" not in text


def test_make_clean_removes_the_demo_state() -> None:
    """`make clean` removes the state_dir of each example config (the demo's journal and logs)."""
    dry = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    removed = {(ROOT / word).resolve() for line in dry.splitlines() if line.startswith("rm ") for word in line.split()}
    for example in ("fake-fleet.yaml", "fake-gateway.yaml", "fluidmcp.json"):
        assert load_config(ROOT / "examples" / example).supervisor.state_dir in removed, example


async def test_status_answer_has_last_failure_field(tmp_path: Path) -> None:
    """The API schema carries last_failure (null until a run fails)."""
    sup = FakeSupervisor(["m"], tmp_path)
    async with asgi_client(create_app(sup, token=None)) as client:
        body = await status(client, "m")
    assert body["last_failure"] is None
