"""A reload as the gateway's clients see it: a changed model of two replicas is replaced one replica at a time
without a failed request, an added model is served, a removed one is not (its served names forgotten).
Real fake-vllm processes behind the real gateway."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import psutil
import pytest

from supervisor.config.reload_plan import ReloadPlan
from supervisor.config.schema import Config, parse_config
from supervisor.core.machine_types import Desired
from supervisor.loop.model import SupervisedModel
from tests.gateway.conftest import Serve, fake_model, healthy, replicated, wait_until
from tests.gateway.test_gateway_resilience import COMPLETION, load, pid_of

pytestmark = pytest.mark.slow


def _wanted(current: Config, models: dict[str, dict[str, Any]]) -> Config:
    return parse_config({"supervisor": current.supervisor.model_dump(mode="json"), "llmModels": models}, "test")


def _named(name: str) -> dict[str, Any]:
    entry = fake_model()
    entry["args"][1] = name  # the name its server answers to on /v1/models
    return entry


async def _complete(client: httpx.AsyncClient, model: str) -> httpx.Response:
    return await client.post("/v1/completions", json={"model": model, **COMPLETION})


async def test_a_changed_replicated_model_is_rolled_without_a_failed_request(serve: Serve) -> None:
    """Under load, a reload that changes a model of two replicas replaces them one at a time (one is always
    ready), with new pids and every request answered 200; the untouched model keeps its pid."""
    q, other = replicated(2, "--itl", "0.01"), fake_model()
    async with serve({"q": q, "other": other}) as s:
        await wait_until(lambda: healthy(s.fleet, "q", 2) and healthy(s.fleet, "other", 1), 20, "all healthy")
        before = [pid_of(s, "q", 0), pid_of(s, "q", 1)]
        kept = pid_of(s, "other")
        stop, results = asyncio.Event(), []
        clients = [asyncio.ensure_future(load(s.client, "q", stop, results)) for _ in range(2)]
        ready: list[int] = []
        clients.append(asyncio.ensure_future(_count_ready(s.fleet.model("q"), stop, ready)))
        await wait_until(lambda: len(results) > 5, 10, "requests flowing")
        plan = await s.fleet.reload(_wanted(s.fleet.config, {"q": {**q, "max_restarts": 9}, "other": other}))
        assert plan == ReloadPlan(restarted=("q",), unchanged=("other",))

        def replaced() -> bool:
            status = s.fleet.status("q")
            pids = [r.pid for r in status.replicas]
            return healthy(s.fleet, "q", 2) and not set(pids) & set(before) and None not in pids

        await wait_until(replaced, 60, "both replicas replaced and healthy")
        stop.set()
        await asyncio.gather(*clients)
        assert pid_of(s, "other") == kept
        assert s.fleet.status("q").max_restarts == 9
    assert set(results) == {200}
    assert min(ready) == 1  # the rollover took one replica at a time out of routing, never both


async def _count_ready(model: SupervisedModel, stop: asyncio.Event, counts: list[int]) -> None:
    while not stop.is_set():
        counts.append(len(model.ready_replicas()))
        await asyncio.sleep(0.005)


async def test_added_models_are_served_and_removed_ones_forgotten(serve: Serve) -> None:
    """A removed model's name answers 404; a model added later under that same served name is routed to."""
    async with serve({"a": fake_model(), "b": _named("bee-model")}) as s:
        await wait_until(lambda: healthy(s.fleet, "a", 1) and healthy(s.fleet, "b", 1), 20, "both healthy")
        assert (await _complete(s.client, "bee-model")).status_code == 200  # learnt from b's server
        a = s.fleet.config.models["a"].model_dump(mode="json", exclude_defaults=True)

        plan = await s.fleet.reload(_wanted(s.fleet.config, {"a": a}))
        assert plan.removed == ("b",)
        gone = await _complete(s.client, "bee-model")
        assert gone.status_code == 404
        assert "Known models: a" in gone.text

        await s.fleet.reload(_wanted(s.fleet.config, {"a": a, "c": _named("bee-model")}))
        await wait_until(lambda: healthy(s.fleet, "c", 1), 20, "the added model healthy")
        assert (await _complete(s.client, "c")).status_code == 200
        assert (await _complete(s.client, "bee-model")).status_code == 200
        listed = (await s.client.get("/v1/models")).json()["data"]
        assert [m["id"] for m in listed] == ["a", "c"]


async def test_a_changed_model_an_operator_stopped_stays_stopped(serve: Serve) -> None:
    """A reload applies new settings to a model an operator stopped, without starting it."""
    m = fake_model()
    async with serve({"m": m}) as s:
        await wait_until(lambda: healthy(s.fleet, "m", 1), 20, "healthy")
        assert (await s.fleet.stop_model("m")).accepted
        await wait_until(lambda: s.fleet.status("m").state == "stopped", 20, "stopped")
        plan = await s.fleet.reload(_wanted(s.fleet.config, {"m": {**m, "max_restarts": 1}}))
        assert plan.restarted == ("m",)
        await asyncio.sleep(0.5)  # a wrong start would have spawned by now (no restart delay for a first start)
        status = s.fleet.status("m")
        assert (status.state, status.desired, status.max_restarts) == ("stopped", Desired.STOPPED.value, 1)
        assert status.pid is None


async def test_a_reload_during_a_rolling_replacement_ends_it(serve: Serve) -> None:
    """A reload that removes a model whose replicas an earlier reload is still replacing stops that work and
    every process of the model, old and new."""
    q = replicated(2)
    async with serve({"q": q}) as s:
        await wait_until(lambda: healthy(s.fleet, "q", 2), 20, "both replicas healthy")
        await s.fleet.reload(_wanted(s.fleet.config, {"q": {**q, "max_restarts": 9}}))
        await asyncio.sleep(0)  # the replacement begins: replica 0 leaves routing and is being stopped
        plan = await s.fleet.reload(_wanted(s.fleet.config, {}))
        assert plan.removed == ("q",)
        assert "q" not in s.fleet.models()
        assert _serving(q["ports"]) == []


def _serving(ports: list[int]) -> list[psutil.Process]:
    """Live fake-vllm servers on these ports."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and "--port" in cmd:
            with contextlib.suppress(ValueError, IndexError):
                if int(cmd[cmd.index("--port") + 1]) in ports:
                    found.append(proc)
    return found
