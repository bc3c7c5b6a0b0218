"""The API over the REAL Supervisor and real fake-vllm processes: races, sticky stop, budgets, purity, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import asgi_client, samples, value
from real_fleet import config_data, fake_model, model_processes

from supervisor.api.app import create_app
from supervisor.api.ratelimit import ActionRateLimiter
from supervisor.config.schema import parse_config
from supervisor.loop.fleet import Fleet
from supervisor.store.journal import JOURNAL_FILENAME, Journal

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]
WAIT = 30.0  # generous: real processes on a loaded two-core machine


@asynccontextmanager
async def running(
    tmp_path: Path, models: dict[str, dict[str, Any]], rate_limit: int = 1000
) -> AsyncIterator[httpx.AsyncClient]:
    """A real Fleet with a journal, started, behind the app (rate limit raised unless given)."""
    config = parse_config(config_data(tmp_path / "state", models), "test")
    journal = Journal.open(config.supervisor.state_dir / JOURNAL_FILENAME)
    sup = Fleet(config, store=journal, seed=1)
    app = create_app(sup, token=None, rate_limiter=ActionRateLimiter(limit=rate_limit))
    await sup.start()
    try:
        async with asgi_client(app) as client:
            yield client
    finally:
        await sup.shutdown()
        journal.close()


async def status(client: httpx.AsyncClient, model_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/llm/models/{model_id}")
    assert response.status_code == 200
    return dict(response.json())


async def wait_for(
    client: httpx.AsyncClient, model_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT
) -> dict[str, Any]:
    """Poll GET status until `pred` holds (GETs are pure, so polling changes nothing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await status(client, model_id)
        if pred(current):
            return current
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{model_id} never reached the expected status; last: {current}")
        await asyncio.sleep(0.05)


def healthy(s: dict[str, Any]) -> bool:
    return bool(s["state"] == "healthy")


async def kinds(client: httpx.AsyncClient, model_id: str) -> list[str]:
    return [e["kind"] for e in (await client.get(f"/api/llm/models/{model_id}/events")).json()]


@pytest.mark.parametrize("rate_limit", [1000, 10])
async def test_prior_art_7_fifty_simultaneous_restarts_make_one_new_run(tmp_path: Path, rate_limit: int) -> None:
    """50 concurrent POST restart calls end with exactly one new run, and one process (docs/design/defects.md #7);
    with the default limit of 10 a minute, the other 40 are answered 429."""
    model = fake_model()
    async with running(tmp_path, {"m": model}, rate_limit) as client:
        first = await wait_for(client, "m", healthy)
        spawned_before = (await kinds(client, "m")).count("spawned")
        answers = await asyncio.gather(*(client.post("/api/llm/models/m/restart") for _ in range(50)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 409, 429}, codes
        assert 200 in codes
        assert codes.count(429) == max(0, 50 - rate_limit)
        after = await wait_for(client, "m", lambda s: healthy(s) and s["pid"] != first["pid"])
        # Give any (wrong) second restart time to show itself before counting.
        await asyncio.sleep(1.0)
        assert (await kinds(client, "m")).count("spawned") == spawned_before + 1
        assert (await status(client, "m"))["pid"] == after["pid"]
        assert [p.pid for p in model_processes(model)] == [after["pid"]]


async def test_prior_art_9_stop_sticks_even_under_always_until_start(tmp_path: Path) -> None:
    """After stop, `always` does not restart the model; start brings it back (docs/design/defects.md #9)."""
    model = fake_model(restart_policy="always")
    async with running(tmp_path, {"m": model}) as client:
        await wait_for(client, "m", healthy)
        stop = await client.post("/api/llm/models/m/stop?force=true")
        assert stop.status_code == 200, stop.text
        stopped = await wait_for(client, "m", lambda s: s["state"] == "stopped")
        # Several restart delays (0.2 s) pass: nothing may start it again.
        await asyncio.sleep(1.5)
        still = await status(client, "m")
        assert still["state"] == "stopped"
        assert still["desired"] == "stopped"
        assert still["restart_count"] == stopped["restart_count"] == 0  # a forced stop is not a crash
        assert model_processes(model) == []
        again = await client.post("/api/llm/models/m/stop")
        assert again.json()["message"] == "already stopped"
        assert again.json()["status"]["state"] == "stopped"
        assert (await client.post("/api/llm/models/m/start")).status_code == 200
        await wait_for(client, "m", healthy)


async def test_start_of_failed_model_gets_a_fresh_budget(tmp_path: Path) -> None:
    """A model whose budget is spent is `failed`; start resets the budget and it is restarted again."""
    model = fake_model("--crash-after", "0.3", max_restarts=1, restart_window=None)
    async with running(tmp_path, {"m": model}) as client:
        failed = await wait_for(client, "m", lambda s: s["state"] == "failed")
        assert failed["restart_count"] == 1
        assert failed["failure_cause"] == "crash"
        spawned = (await kinds(client, "m")).count("spawned")
        started = await client.post("/api/llm/models/m/start")
        assert started.status_code == 200, started.text
        assert started.json()["status"]["restart_count"] == 0
        again = await wait_for(client, "m", lambda s: s["state"] == "failed")
        assert again["restart_count"] == 1
        # The start's run, then exactly one automatic restart within the fresh budget.
        assert (await kinds(client, "m")).count("spawned") == spawned + 2


async def test_restart_during_backoff_restarts_now(tmp_path: Path) -> None:
    """A model waiting 30 s in backoff is restarted at once by POST restart."""
    model = fake_model("--crash-after", "0.5", restart_delay=30)
    async with running(tmp_path, {"m": model}) as client:
        waiting = await wait_for(client, "m", lambda s: s["state"] == "backoff")
        assert waiting["next_restart_at"] is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert (await client.post("/api/llm/models/m/restart")).status_code == 200
        await wait_for(client, "m", lambda s: s["state"] in ("starting", "healthy") and s["pid"] is not None)
        assert loop.time() - t0 < 10  # not the 30 s backoff


async def test_prior_art_6_get_endpoints_do_not_probe_or_move_counters(tmp_path: Path) -> None:
    """Hammering every GET path changes no probe time, counter or timeline; POST health-check does."""
    model = fake_model(health_check_interval=300)  # no scheduled probe during the test
    async with running(tmp_path, {"m": model}) as client:
        await wait_for(client, "m", healthy)
        before = await status(client, "m")
        events_before = await kinds(client, "m")
        for _ in range(20):
            for url in (
                "/api/llm/models",
                "/api/llm/models/m",
                "/api/llm/models/m/events",
                "/api/llm/models/m/logs?lines=50",
                "/metrics",
            ):
                assert (await client.get(url)).status_code == 200
        after = await status(client, "m")
        for key in ("consecutive_health_failures", "restart_count", "pid", "state"):
            assert after[key] == before[key], key
        # Wall times are derived from the monotonic clock at read time: equal to within float noise.
        assert after["last_health_check_time"] == pytest.approx(before["last_health_check_time"], abs=1e-3)
        assert await kinds(client, "m") == events_before
        report = (await client.post("/api/llm/models/m/health-check")).json()
        assert report["is_healthy"] is True
        assert report["last_health_check_time"] > before["last_health_check_time"]


async def test_metrics_after_real_crashes_and_restarts(tmp_path: Path) -> None:
    """After real crashes until the budget is spent, the metrics equal what the timeline says."""
    model = fake_model("--crash-after", "0.8", max_restarts=2, restart_window=None)
    async with running(tmp_path, {"m": model, "steady": fake_model()}) as client:
        await wait_for(client, "m", lambda s: s["state"] == "failed")
        await wait_for(client, "steady", healthy)
        events = (await client.get("/api/llm/models/m/events")).json()
        steady_events = (await client.get("/api/llm/models/steady/events")).json()
        parsed = samples((await client.get("/metrics")).text)
    restarts = [e for e in events if e["kind"] == "spawned" and e["reason"]]
    exits = [e for e in events if e["kind"] == "exited"]
    assert len(restarts) == 2
    assert len(exits) == 3
    assert value(parsed, "llm_supervisor_restarts_total", model="m", reason="crash") == 2
    assert value(parsed, "llm_supervisor_exits_total", model="m", cause="crash") == 3
    assert value(parsed, "llm_supervisor_model_state", model="m", state="failed") == 1
    assert value(parsed, "llm_supervisor_model_state", model="m", state="healthy") == 0
    assert value(parsed, "llm_supervisor_model_up", model="m") == 0
    assert value(parsed, "llm_supervisor_model_state", model="steady", state="healthy") == 1
    assert value(parsed, "llm_supervisor_model_healthy", model="steady") == 1
    assert value(parsed, "llm_supervisor_uptime_seconds", model="steady") > 0
    assert value(parsed, "llm_supervisor_restarts_total", model="steady", reason="crash") == 0, steady_events
    assert value(parsed, "llm_supervisor_health_checks_total", model="steady", result="success") >= 1
    assert value(parsed, "llm_supervisor_health_check_duration_seconds_count", model="steady") >= 1
    assert value(parsed, "llm_supervisor_oom_total", model="m") == 0
