"""Prometheus metrics hold exact values as a (fake) supervisor's models change state, crash and restart."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from api_helpers import asgi_client, samples, value
from fakes import FakeSupervisor, crash_script

from supervisor.api.app import create_app
from supervisor.api.metrics import EXIT_CAUSES, RESTART_REASONS, Metrics
from supervisor.core.states import EventKind, State

CONTRACT_NAMES = {
    "llm_supervisor_model_state",
    "llm_supervisor_model_up",
    "llm_supervisor_model_healthy",
    "llm_supervisor_restarts_total",
    "llm_supervisor_exits_total",
    "llm_supervisor_health_checks_total",
    "llm_supervisor_health_check_duration_seconds",
    "llm_supervisor_uptime_seconds",
    "llm_supervisor_oom_total",
}


@pytest.fixture
def sup(tmp_path: Path) -> FakeSupervisor:
    return FakeSupervisor(["qwen", "llama"], tmp_path)


def _scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return samples(metrics.render().decode())


def test_every_contract_name_exists_before_any_event(sup: FakeSupervisor) -> None:
    """Every series of docs/design/contract.md section 5 exists at scrape one, counters at 0, for every model."""
    parsed = _scrape(Metrics(sup))
    names = {name for name, _ in parsed}
    for name in CONTRACT_NAMES - {"llm_supervisor_health_check_duration_seconds"}:
        assert name in names, name
    assert "llm_supervisor_health_check_duration_seconds_count" in names
    for model in ("qwen", "llama"):
        assert value(parsed, "llm_supervisor_oom_total", model=model) == 0
        for reason in RESTART_REASONS:
            assert value(parsed, "llm_supervisor_restarts_total", model=model, reason=reason) == 0
        for cause in EXIT_CAUSES:
            assert value(parsed, "llm_supervisor_exits_total", model=model, cause=cause) == 0


@pytest.mark.parametrize("state", list(State))
def test_model_state_is_one_hot(sup: FakeSupervisor, state: State) -> None:
    """model_state is 1 for the current state and 0 for the six others; up/healthy follow the status."""
    sup.set_status("qwen", state)
    parsed = _scrape(Metrics(sup))
    for candidate in State:
        expected = 1.0 if candidate == state else 0.0
        assert value(parsed, "llm_supervisor_model_state", model="qwen", state=candidate.value) == expected
    status = sup.status("qwen")
    assert value(parsed, "llm_supervisor_model_up", model="qwen") == float(status.is_running)
    assert value(parsed, "llm_supervisor_model_healthy", model="qwen") == float(status.is_healthy)
    assert value(parsed, "llm_supervisor_uptime_seconds", model="qwen") == (status.uptime_seconds or 0.0)


def test_counters_after_scripted_crashes_and_restarts(sup: FakeSupervisor) -> None:
    """Two OOM crashes, a manual restart and a clean stop give exact restart, exit and OOM counts."""
    metrics = Metrics(sup)
    crash_script(sup, "qwen")
    crash_script(sup, "qwen")
    sup.emit("qwen", EventKind.SPAWNED, State.STARTING, reason="manual")
    sup.emit("qwen", EventKind.EXITED, State.STOPPING, detail="signal 15")  # a requested stop: no cause
    sup.emit("llama", EventKind.SPAWNED, State.STARTING)  # first start: not a restart
    sup.emit("llama", EventKind.EXITED, State.BACKOFF, detail="exit code 1", reason="crash")
    parsed = _scrape(metrics)
    assert value(parsed, "llm_supervisor_restarts_total", model="qwen", reason="oom") == 2
    assert value(parsed, "llm_supervisor_restarts_total", model="qwen", reason="manual") == 1
    assert value(parsed, "llm_supervisor_restarts_total", model="qwen", reason="crash") == 0
    assert value(parsed, "llm_supervisor_exits_total", model="qwen", cause="oom") == 2
    assert value(parsed, "llm_supervisor_exits_total", model="qwen", cause="none") == 1
    assert value(parsed, "llm_supervisor_oom_total", model="qwen") == 2
    assert (
        sum(v for (n, lb), v in parsed.items() if n == "llm_supervisor_restarts_total" and ("model", "llama") in lb)
        == 0
    )
    assert value(parsed, "llm_supervisor_exits_total", model="llama", cause="crash") == 1
    assert value(parsed, "llm_supervisor_oom_total", model="llama") == 0


def test_probes_count_and_fill_the_histogram(sup: FakeSupervisor) -> None:
    """on_probe counts successes and failures and records each duration in the histogram."""
    metrics = Metrics(sup)
    for ok, duration in ((True, 0.003), (True, 0.02), (False, 5.0)):
        sup.probe("qwen", ok, duration)
    parsed = _scrape(metrics)
    assert value(parsed, "llm_supervisor_health_checks_total", model="qwen", result="success") == 2
    assert value(parsed, "llm_supervisor_health_checks_total", model="qwen", result="failure") == 1
    assert value(parsed, "llm_supervisor_health_check_duration_seconds_count", model="qwen") == 3
    assert value(parsed, "llm_supervisor_health_check_duration_seconds_sum", model="qwen") == pytest.approx(5.023)
    assert value(parsed, "llm_supervisor_health_check_duration_seconds_bucket", model="qwen", le="0.005") == 1
    assert value(parsed, "llm_supervisor_health_check_duration_seconds_bucket", model="qwen", le="5.0") == 3
    assert value(parsed, "llm_supervisor_health_checks_total", model="llama", result="success") == 0


def test_models_added_later_get_series(sup: FakeSupervisor) -> None:
    """A model that appears after the metrics were built is exported too (docs/design/defects.md #10)."""
    metrics = Metrics(sup)
    sup.set_status("late", State.STARTING)
    parsed = _scrape(metrics)
    assert value(parsed, "llm_supervisor_model_state", model="late", state="starting") == 1
    assert value(parsed, "llm_supervisor_oom_total", model="late") == 0


def test_a_removed_model_takes_its_series_with_it(sup: FakeSupervisor) -> None:
    """After a reload removed a model, no series names it: a dashboard or alert must not see it forever. Its
    last events are counted until then, and the others keep their counts."""
    metrics = Metrics(sup)
    crash_script(sup, "qwen")
    crash_script(sup, "llama")
    sup.emit("llama", EventKind.SPAWNED, State.STARTING, reason="manual")
    sup.probe("llama", False, 0.5)
    assert value(_scrape(metrics), "llm_supervisor_restarts_total", model="llama", reason="manual") == 1
    del sup._statuses["llama"]  # what a reload that removed it leaves
    parsed = _scrape(metrics)
    assert not [labels for _, labels in parsed if ("model", "llama") in labels or ("server", "llama") in labels]
    assert value(parsed, "llm_supervisor_oom_total", model="qwen") == 1
    sup.set_status("llama", State.STARTING)  # added back by a later reload: starts from zero
    parsed = _scrape(metrics)
    assert value(parsed, "llm_supervisor_oom_total", model="llama") == 0
    assert value(parsed, "llm_supervisor_restarts_total", model="llama", reason="manual") == 0


def test_two_apps_in_one_process_do_not_collide(sup: FakeSupervisor, tmp_path: Path) -> None:
    """Each Metrics has its own registry: building a second one neither raises nor shares counts."""
    first = Metrics(sup)
    other = FakeSupervisor(["qwen"], tmp_path)
    second = Metrics(other)
    crash_script(sup, "qwen")
    assert value(_scrape(first), "llm_supervisor_oom_total", model="qwen") == 1
    assert value(_scrape(second), "llm_supervisor_oom_total", model="qwen") == 0


def test_the_supervisors_own_process_is_measured(sup: FakeSupervisor) -> None:
    """The standard process_* series describe this process, so its own memory can be watched and alerted on."""
    parsed = _scrape(Metrics(sup))
    own = psutil.Process()
    resident = value(parsed, "process_resident_memory_bytes")
    assert 0.5 * own.memory_info().rss < resident < 2 * own.memory_info().rss
    assert value(parsed, "process_open_fds") > 0
    assert abs(value(parsed, "process_start_time_seconds") - own.create_time()) < 1


async def test_metrics_endpoint_serves_prometheus_text(sup: FakeSupervisor) -> None:
    """GET /metrics answers the text exposition format with the current values."""
    app = create_app(sup, token=None)
    crash_script(sup, "llama")
    async with asgi_client(app) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    parsed = samples(response.text)
    assert value(parsed, "llm_supervisor_restarts_total", model="llama", reason="oom") == 1
    assert value(parsed, "llm_supervisor_model_state", model="llama", state="healthy") == 1
