"""Replicas with real fake-vllm processes: each is its own run, restarted on its own, listed in the status."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from supervisor.api.app import create_app
from supervisor.api.metrics import Metrics
from supervisor.core.states import EventKind, State
from supervisor.loop.fleet import Fleet, UnknownReplica
from tests.e2e.conftest import Supervised, replicated, wait_until

pytestmark = pytest.mark.slow


def pids(sup: Fleet) -> list[int | None]:
    return [r.pid for r in sup.status("q").replicas]


def all_healthy(sup: Fleet) -> bool:
    return all(r.is_healthy for r in sup.status("q").replicas)


async def test_each_replica_serves_on_its_own_port_and_is_listed(supervised: Supervised) -> None:
    """Two replicas start on their two ports; the status lists both, healthy, with distinct pids."""
    entry = replicated()
    async with supervised({"q": entry}) as sup:
        await wait_until(lambda: all_healthy(sup), 20, "both replicas healthy")
        status = sup.status("q")
        assert [r.port for r in status.replicas] == entry["ports"]
        assert [r.index for r in status.replicas] == [0, 1]
        assert len(set(pids(sup))) == 2
        assert (status.is_healthy, status.state, status.pid) == (True, State.HEALTHY, status.replicas[0].pid)


async def test_a_crashed_replica_is_restarted_alone(supervised: Supervised) -> None:
    """kill -9 of replica 1: only it restarts (its own count, its own events); replica 0 keeps its pid."""
    async with supervised({"q": replicated()}) as sup:
        await wait_until(lambda: all_healthy(sup), 20, "both replicas healthy")
        first, second = pids(sup)
        assert second is not None
        os.kill(second, signal.SIGKILL)
        await wait_until(lambda: all_healthy(sup) and pids(sup)[1] not in (None, second), 20, "replica 1 back")
        status = sup.status("q")
        assert pids(sup)[0] == first
        assert [r.restart_count for r in status.replicas] == [0, 1]
        assert status.restart_count == 1
        exits = [e for e in sup.events("q") if e.kind is EventKind.EXITED]
        assert [e.replica for e in exits] == [1]


async def test_restart_of_one_replica_leaves_the_other_running(supervised: Supervised) -> None:
    """restart(replica=0) replaces replica 0's run only; an index the model lacks is an error naming it."""
    async with supervised({"q": replicated()}) as sup:
        await wait_until(lambda: all_healthy(sup), 20, "both replicas healthy")
        first, second = pids(sup)
        result = await sup.restart_model("q", replica=0)
        assert result.accepted
        await wait_until(lambda: all_healthy(sup) and pids(sup)[0] != first, 20, "replica 0 restarted")
        assert pids(sup)[1] == second
        with pytest.raises(UnknownReplica, match="model 'q' has no replica 2"):
            await sup.restart_model("q", replica=2)


async def test_rolling_restart_keeps_one_replica_ready_throughout(supervised: Supervised) -> None:
    """A rolling restart replaces every run, one replica at a time: at every change one replica is ready."""
    async with supervised({"q": replicated()}) as sup:
        await wait_until(lambda: all_healthy(sup), 20, "both replicas healthy")
        before = pids(sup)
        model = sup.model("q")
        ready_counts: list[int] = []

        class Watch:
            def on_event(self, event: object) -> None:
                ready_counts.append(len(model.ready_replicas()))

            def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
                pass

        sup.add_observer(Watch())
        result = await sup.restart_model("q", rolling=True)
        assert result.accepted
        assert not (await sup.restart_model("q", rolling=True)).accepted  # one rolling restart at a time
        await wait_until(lambda: not model.rolling, 40, "the rolling restart to finish")
        after = pids(sup)
        assert after[0] != before[0]
        assert after[1] != before[1]
        assert all_healthy(sup)
        assert ready_counts
        assert min(ready_counts) >= 1
        spawned = [e.replica for e in sup.events("q") if e.kind is EventKind.SPAWNED and e.reason == "manual"]
        assert spawned == [0, 1]


async def test_stop_and_start_act_on_every_replica(supervised: Supervised) -> None:
    """An operator's stop stops both replicas; start brings both back."""
    async with supervised({"q": replicated()}) as sup:
        await wait_until(lambda: all_healthy(sup), 20, "both replicas healthy")
        await sup.stop_model("q")
        await wait_until(lambda: sup.status("q").state is State.STOPPED, 10, "both stopped")
        assert pids(sup) == [None, None]
        assert (await sup.start_model("q")).accepted
        await wait_until(lambda: all_healthy(sup), 20, "both replicas healthy again")


async def test_the_api_restarts_one_replica_and_reads_its_log(supervised: Supervised) -> None:
    """POST restart?replica=1 restarts that replica; GET logs?replica=1 reads its own log; a missing one is 404."""
    async with supervised({"q": replicated()}) as sup:
        await wait_until(lambda: all_healthy(sup), 20, "both replicas healthy")
        first, second = pids(sup)
        transport = httpx.ASGITransport(app=create_app(sup, token=None))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            restarted = await client.post("/api/llm/models/q/restart", params={"replica": 1})
            assert restarted.status_code == 200, restarted.text
            assert [r["index"] for r in restarted.json()["status"]["replicas"]] == [0, 1]
            await wait_until(lambda: all_healthy(sup) and pids(sup)[1] != second, 20, "replica 1 restarted")
            assert pids(sup)[0] == first
            log = (await client.get("/api/llm/models/q/logs", params={"replica": 1, "lines": 1000})).json()
            assert any(f"run 2 started (pid {pids(sup)[1]})" in line for line in log["lines"]), log["lines"][-5:]
            missing = await client.get("/api/llm/models/q/logs", params={"replica": 2})
            assert (missing.status_code, missing.json()["detail"]) == (404, "model 'q' has no replica 2")
            both = await client.post("/api/llm/models/q/restart", params={"replica": 0, "rolling": "true"})
            assert both.status_code == 400


async def test_metrics_show_each_replica(supervised: Supervised) -> None:
    """/metrics has up and healthy gauges per replica, and they follow a replica that is stopped by a crash."""
    async with supervised({"q": replicated(max_restarts=0)}) as sup:
        await wait_until(lambda: all_healthy(sup), 20, "both replicas healthy")
        metrics = Metrics(sup)
        text = metrics.render().decode()
        assert 'llm_supervisor_replica_healthy{model="q",replica="0"} 1.0' in text
        assert 'llm_supervisor_replica_healthy{model="q",replica="1"} 1.0' in text
        second = pids(sup)[1]
        assert second is not None
        os.kill(second, signal.SIGKILL)
        await wait_until(lambda: sup.status("q").replicas[1].state is State.FAILED, 20, "replica 1 failed")
        text = metrics.render().decode()
        assert 'llm_supervisor_replica_up{model="q",replica="1"} 0.0' in text
        assert 'llm_supervisor_replica_healthy{model="q",replica="0"} 1.0' in text
        assert sup.status("q").is_healthy
