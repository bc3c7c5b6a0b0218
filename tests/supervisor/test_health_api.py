"""GET /api/status, GET /api/diagnostics and POST /api/heal over the real Fleet and real fake-vllm processes,
and memory limits on a process whose resident memory really grows."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from api_helpers import asgi_client, samples, value
from real_fleet import config_data, fake_model, model_processes

from supervisor.api.app import create_app
from supervisor.api.ratelimit import ActionRateLimiter
from supervisor.config.schema import parse_config
from supervisor.loop import memory_watch
from supervisor.loop.fleet import Fleet
from supervisor.runtime.gpu import Nvml
from supervisor.runtime.process_group import RUN_MARKER_ENV
from supervisor.runtime.usage import INSTANCE_ENV
from supervisor.store.journal import JOURNAL_FILENAME, Journal

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]
WAIT = 30.0
GIB = 1 << 30


@asynccontextmanager
async def running(tmp_path: Path, models: dict[str, dict[str, Any]]) -> AsyncIterator[tuple[httpx.AsyncClient, Fleet]]:
    config = parse_config(config_data(tmp_path / "state", models), "test")
    journal = Journal.open(config.supervisor.state_dir / JOURNAL_FILENAME)
    fleet = Fleet(config, store=journal, seed=1)
    app = create_app(fleet, token=None, rate_limiter=ActionRateLimiter(limit=1000))
    await fleet.start()
    try:
        async with asgi_client(app) as client:
            yield client, fleet
    finally:
        await fleet.shutdown()
        journal.close()


async def until(client: httpx.AsyncClient, path: str, pred: Callable[[Any], bool], timeout: float = WAIT) -> Any:
    """GET `path` until its JSON satisfies `pred`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await client.get(path)
        assert answer.status_code == 200, answer.text
        body = answer.json() if "json" in answer.headers.get("content-type", "") else answer.text
        if pred(body):
            return body
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{path} never matched; last: {body}")
        await asyncio.sleep(0.05)


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value in Prometheus text; None when the series is absent."""
    try:
        return value(samples(text), name, **labels)
    except KeyError:
        return None


def state_is(*states: str) -> Callable[[Any], bool]:
    return lambda s: s["state"] in states


def stand_in_nvml(holders: Callable[[], dict[int, int]]) -> Nvml:
    """NVML for one 80 GiB GPU whose processes (pid -> bytes) come from `holders` at each read."""

    class NvmlError(Exception):
        pass

    def processes(handle: int) -> list[types.SimpleNamespace]:
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in holders().items()]

    module = types.SimpleNamespace(
        NVMLError=NvmlError,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: "NVIDIA H200",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * GIB, used=50 * GIB),
        nvmlDeviceGetComputeRunningProcesses=processes,
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [],
    )
    return Nvml(module)


async def test_status_and_diagnostics_of_a_healthy_model(tmp_path: Path) -> None:
    """Counts per state, host figures, the model's resident memory over its whole group, and it in /metrics."""
    model = fake_model()
    async with running(tmp_path, {"m": model}) as (client, _):
        healthy = await until(client, "/api/llm/models/m", state_is("healthy"))
        status = (await client.get("/api/status")).json()
        assert status["models"] == {
            "total": 1,
            "healthy": 1,
            "unhealthy": 0,
            "starting": 0,
            "backoff": 0,
            "stopping": 0,
            "stopped": 0,
            "failed": 0,
        }
        assert status["uptime_seconds"] > 0
        assert status["restarts_total"] == 0
        assert status["recoveries"] == {"attempted": 0, "succeeded": 0, "success_rate": None}
        body = (await client.get("/api/diagnostics")).json()
        assert 0 < body["host"]["memory"]["available"] <= body["host"]["memory"]["total"]
        assert body["host"]["disk"]["path"] == str(tmp_path / "state")
        assert (body["gpus"] == []) == (body["gpu_error"] is not None)  # no NVML: no figures, and why
        (entry,) = body["models"]
        assert (entry["id"], entry["state"], entry["failure_cause"], entry["findings"]) == ("m", "healthy", None, [])
        group = [
            psutil.Process(p)
            for p in [healthy["pid"], *(c.pid for c in psutil.Process(healthy["pid"]).children(recursive=True))]
        ]
        assert len(group) == 3  # the server, EngineCore and its worker
        assert entry["memory"]["rss"] == pytest.approx(sum(p.memory_info().rss for p in group), rel=0.25)
        assert body["leftovers"] == []
        text = await until(
            client, "/metrics", lambda t: metric(t, "llm_supervisor_model_memory_bytes", model="m", kind="rss")
        )
        assert metric(text, "llm_supervisor_model_cpu_seconds_total", model="m")
        assert metric(text, "llm_supervisor_model_memory_bytes", model="m", kind="gpu") is None  # no NVML: no series


async def test_gpu_processes_are_attributed_to_their_model_or_foreign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU process in the model's group (its EngineCore) is the model's; any other process is foreign."""
    engine: list[int] = []
    monkeypatch.setattr(
        memory_watch, "NVML", stand_in_nvml(lambda: {**dict.fromkeys(engine, 30 * GIB), os.getpid(): GIB})
    )
    async with running(tmp_path, {"m": fake_model()}) as (client, _):
        healthy = await until(client, "/api/llm/models/m", state_is("healthy"))
        engine.append(next(p.pid for p in psutil.Process(healthy["pid"]).children() if "EngineCore" in p.name()))
        body = (await client.get("/api/diagnostics")).json()
        assert body["gpu_error"] is None
        (gpu,) = body["gpus"]
        owners = {p["pid"]: p["owner"] for p in gpu["processes"]}
        assert owners == {engine[0]: "m", os.getpid(): "foreign"}
        assert body["models"][0]["memory"]["gpu"] == 30 * GIB
        await until(
            client,
            "/metrics",
            lambda t: metric(t, "llm_supervisor_model_memory_bytes", model="m", kind="gpu") == 30 * GIB,
        )


def crash_until(flag: Path) -> dict[str, Any]:
    """A fake-vllm model that crashes 0.2 s after it serves, until `flag` exists; then it serves for good."""
    model = fake_model()
    argv = [sys.executable, *model["args"]]
    crashing = " ".join([*argv, "--crash-after", "0.2"])
    command = f"if [ -e {flag} ]; then exec {' '.join(argv)}; else exec {crashing}; fi"
    return {**model, "command": "/bin/sh", "args": ["-c", command]}


async def test_heal_restarts_a_really_failed_model_and_leaves_a_stopped_one_alone(tmp_path: Path) -> None:
    """A model whose crashes spent max_restarts is failed; heal starts it with a fresh budget and it serves.
    A model an operator stopped stays stopped. The recoveries count the attempts and the one that worked."""
    flag = tmp_path / "fixed"
    models = {"m": crash_until(flag) | {"max_restarts": 1, "restart_window": None}, "s": fake_model()}
    async with running(tmp_path, models) as (client, _):
        await until(client, "/api/llm/models/s", state_is("healthy"))
        assert (await client.post("/api/llm/models/s/stop")).status_code == 200
        await until(client, "/api/llm/models/s", state_is("stopped"))
        failed = await until(client, "/api/llm/models/m", state_is("failed"))
        assert failed["failure_cause"] == "crash"
        flag.touch()  # whatever made it crash is gone now
        answer = await client.post("/api/heal")
        assert answer.status_code == 200, answer.text
        actions = {a["model"]: a for a in answer.json()["actions"]}
        assert actions["m"]["action"] == "started"
        assert "fresh restart budget" in actions["m"]["reason"]
        assert (actions["s"]["action"], actions["s"]["reason"]) == (
            "none",
            "stopped: heal never starts a stopped model",
        )
        healed = await until(client, "/api/llm/models/m", state_is("healthy"))
        assert healed["restart_count"] == 0
        stopped = (await client.get("/api/llm/models/s")).json()
        assert (stopped["state"], stopped["pid"]) == ("stopped", None)
        assert model_processes(models["s"]) == []
        status = (await client.get("/api/status")).json()
        assert status["models"]["healthy"] == 1
        assert status["models"]["stopped"] == 1
        assert status["restarts_total"] == 1  # the policy's one restart; heal's start is an operator's
        # Each run served before it crashed: the policy's restart and heal's start both reached healthy.
        assert status["recoveries"] == {"attempted": 2, "succeeded": 2, "success_rate": 1.0}


async def test_heal_stops_a_leftover_process_of_this_supervisor_only(tmp_path: Path) -> None:
    """A process marked with this supervisor's instance for a run that is over is listed, and heal stops it;
    one marked by another supervisor is neither listed nor touched."""
    async with running(tmp_path, {"m": fake_model()}) as (client, fleet):
        await until(client, "/api/llm/models/m", state_is("healthy"))
        sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
        ours = subprocess.Popen(sleep, env={**os.environ, INSTANCE_ENV: fleet.instance, RUN_MARKER_ENV: "m:0"})
        other = subprocess.Popen(sleep, env={**os.environ, INSTANCE_ENV: "another", RUN_MARKER_ENV: "m:0"})
        try:
            body = await until(client, "/api/diagnostics", lambda b: b["leftovers"] != [])
            (leftover,) = body["leftovers"]
            assert (leftover["pid"], leftover["model"], leftover["replica"], leftover["run"]) == (ours.pid, "m", 0, 0)
            actions = (await client.post("/api/heal")).json()["actions"]
            assert actions == [
                {
                    "model": f"pid {ours.pid}",
                    "action": "stopped_leftover",
                    "reason": f"left behind by run 0 of m ({leftover['name']})",
                }
            ]
            assert not psutil.pid_exists(ours.pid)
            assert other.poll() is None
            assert (await client.get("/api/llm/models/m")).json()["state"] == "healthy"  # its own run untouched
        finally:
            for proc in (ours, other):
                proc.kill()
                proc.wait()


async def test_a_model_over_max_memory_is_restarted_with_cause_memory_limit(tmp_path: Path) -> None:
    """fake-vllm leaking 100 MB/s under max_memory 150M: each run is stopped with a memory_limit entry and
    restarted; once max_restarts is spent it is failed with cause memory_limit, which heal leaves alone."""
    model = fake_model(
        "--grow-memory", "100", max_memory="150M", memory_check_interval=0.2, max_restarts=1, restart_window=None
    )
    async with running(tmp_path, {"m": model}) as (client, _):
        failed = await until(client, "/api/llm/models/m", state_is("failed"))
        assert failed["failure_cause"] == "memory_limit"
        assert "max_memory" in failed["failure_advice"]
        events = (await client.get("/api/llm/models/m/events")).json()
        limits = [e for e in events if e["kind"] == "memory_limit"]
        assert len(limits) == 2
        assert "over max_memory 150.0 MiB" in limits[0]["detail"]
        assert [e["reason"] for e in events if e["kind"] == "spawned"] == [None, "memory_limit"]
        assert [e["reason"] for e in events if e["kind"] == "exited"] == ["memory_limit", "memory_limit"]
        (action,) = (await client.post("/api/heal")).json()["actions"]
        assert (action["model"], action["action"]) == ("m", "none")
        assert model_processes(model) == []


async def test_a_model_over_max_gpu_memory_is_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU memory as NVML reports it for the model's processes (a stand-in here) over max_gpu_memory: restart."""
    leaders: list[int] = []
    monkeypatch.setattr(memory_watch, "NVML", stand_in_nvml(lambda: dict.fromkeys(leaders, 41 * GIB)))
    model = fake_model(max_gpu_memory="40GiB", memory_check_interval=0.2)
    async with running(tmp_path, {"m": model}) as (client, _):
        first = await until(client, "/api/llm/models/m", state_is("healthy"))
        leaders.append(first["pid"])
        events = await until(
            client, "/api/llm/models/m/events", lambda es: any(e["kind"] == "memory_limit" for e in es)
        )
        (limit,) = [e for e in events if e["kind"] == "memory_limit"]
        assert limit["detail"] == "GPU memory 41984.0 MiB over max_gpu_memory 40960.0 MiB"
        again = await until(client, "/api/llm/models/m", lambda s: s["state"] == "healthy" and s["pid"] != first["pid"])
        assert again["restart_count"] == 1
