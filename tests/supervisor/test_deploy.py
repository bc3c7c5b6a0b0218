"""The shipped deploy/ files: the systemd unit's keys (and `systemd-analyze verify`), and every metric the alert
rules and the Grafana dashboard query is served by a real supervisor with its gateway."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_helpers import samples
from promql import PROMTOOL
from real_fleet import _distinct_free_port, config_data, fake_model
from test_cli_run import WAIT, daemon, wait_status

from supervisor.config.schema import ModelConfig
from supervisor.loop.fleet import SHUTDOWN_GRACE

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "llm-supervisor.service"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "llm-supervisor.json"
INSTALLED = "/opt/llm-supervisor/bin/llm-supervisor"
# PromQL functions with an underscore in their name; every other such word in an expression is a metric name
# (label names and values here have none outside quotes, which are dropped first).
FUNCTIONS = {"histogram_quantile", "label_values", "label_replace", "absent_over_time", "max_over_time"}


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(UNIT)
    return parser


def test_systemd_unit_stops_models_through_the_supervisor() -> None:
    """KillMode=mixed, a TimeoutStopSec above stop_timeout's default plus the shutdown grace, restart on failure,
    reload by SIGHUP, and an API on loopback."""
    service = _unit()["Service"]
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > ModelConfig.model_fields["stop_timeout"].default + SHUTDOWN_GRACE + 5
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].startswith(f"{INSTALLED} run -c ")
    assert service["ExecStart"].endswith("--host 127.0.0.1")
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` has nothing to say (it warns, exit 0, on unknown keys: any output is a failure)."""
    here = Path(sys.executable).with_name("llm-supervisor")  # this environment's, installed with the project
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(here)))  # verify wants the binary to exist
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def _alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [var["definition"] for var in board["templating"]["list"] if var["type"] == "query"]
    return exprs


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($model, $__rate_interval)
    return {word for word in re.findall(r"[A-Za-z_:][\w:]*", expr) if "_" in word and word not in FUNCTIONS}


def _served(tmp_path: Path) -> set[str]:
    """Sample names on a real supervisor's /metrics: one healthy model that served one request by the gateway."""
    gateway_port = _distinct_free_port()
    data: dict[str, Any] = config_data(tmp_path / "state", {"m": fake_model()})
    data["supervisor"]["gateway"] = {"port": gateway_port}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data))
    with daemon(config) as d:
        wait_status(d.url, "m", lambda s: s["is_healthy"])
        reply = httpx.post(
            f"http://127.0.0.1:{gateway_port}/v1/completions",
            json={"model": "m", "prompt": "hi", "max_tokens": 1},
            timeout=WAIT,
        )
        assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + WAIT
        while "llm_supervisor_model_memory_bytes{" not in (text := httpx.get(f"{d.url}/metrics").text):
            assert time.monotonic() < deadline, "no memory figures were ever served"
            time.sleep(0.1)
        return {name for name, _ in samples(text)}


@pytest.mark.slow
@pytest.mark.usefixtures("no_process_left")
def test_every_metric_queried_is_served(tmp_path: Path) -> None:
    """Each metric name in deploy/prometheus/alerts.yaml and deploy/grafana/llm-supervisor.json is on /metrics."""
    served = _served(tmp_path)
    for source, exprs in [("alerts", _alert_expressions()), ("dashboard", _dashboard_expressions())]:
        used = set().union(*(_metric_names(e) for e in exprs))
        assert used, f"no metric names found in the {source}"
        assert used - served == set(), f"the {source} query metrics the supervisor does not serve"


def test_the_dashboard_covers_the_asked_for_panels() -> None:
    """State, restarts and exits by cause, probe latency, memory, and the gateway's rate, errors and latency."""
    used = set().union(*(_metric_names(e) for e in _dashboard_expressions()))
    assert {
        "llm_supervisor_model_state",
        "llm_supervisor_restarts_total",
        "llm_supervisor_exits_total",
        "llm_supervisor_health_check_duration_seconds_bucket",
        "llm_supervisor_model_memory_bytes",
        "llm_supervisor_gateway_requests_total",
        "llm_supervisor_gateway_request_duration_seconds_bucket",
    } <= used


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus; ci/setup-system.sh installs it)")
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses (checked as recording rules by promtool, Grafana's variables filled in)."""
    exprs = [
        e.replace("$__rate_interval", "5m").replace("$model", ".*")
        for e in _dashboard_expressions()
        if not e.startswith("label_values(")  # Grafana's own function, not PromQL
    ]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"q:{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
