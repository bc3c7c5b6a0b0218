"""FluidMCP's documented commands against a real `llm-supervisor run`: its curl + jq lines under FMCP_SECURE_MODE,
its three Prometheus alerts evaluated by promtool on our scraped metrics, and its cron check (docs/fluidmcp.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import samples
from promql import PROMTOOL, fires, series_name
from real_fleet import config_data, fake_model, model_processes
from test_cli_run import CLI, WAIT, daemon

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]
TOKEN = "fmcp-daemon-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# FluidMCP's three documented alerts, verbatim.
DOWN = 'fluidmcp_server_status{server="vllm"} == 0'
RESTARTING = "rate(fluidmcp_server_restarts_total[5m]) > 0"
RECENT = "fluidmcp_server_uptime_seconds < 60"
# docs/fluidmcp.md's cron test: anything but a literal `true` (false, null, no answer at all) is a failure.
# (`curl | jq -e` is not enough: jq 1.6 exits 0 on empty input, so a dead supervisor would pass.)
CRON = '[ "$(curl -sf -H "Authorization: Bearer $FMCP_BEARER_TOKEN" "$URL/llm/models/vllm" | jq .is_healthy)" = true ]'
# docs/fluidmcp.md's other cron test: our own client (exit 0 healthy, 1 not, 3 supervisor unreachable).
CHECK = "llm-supervisor check vllm --url $URL --token-env FMCP_BEARER_TOKEN >/dev/null"
SEED_CRON = 'curl -sf -H "Authorization: Bearer $FMCP_BEARER_TOKEN" "$URL/llm/models/vllm" | jq .is_healthy'


def _config(tmp_path: Path, model: dict[str, Any], **others: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_data(tmp_path / "state", {"vllm": model, **others})))
    return path


def _fmcp_env(monkeypatch: pytest.MonkeyPatch, token: str = TOKEN) -> dict[str, str]:
    monkeypatch.delenv("LLM_SUPERVISOR_TOKEN", raising=False)
    return {"FMCP_SECURE_MODE": "true", "FMCP_BEARER_TOKEN": token}


def _wait(url: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = httpx.get(f"{url}/llm/models/vllm", headers=AUTH, timeout=5).json()
        if pred(last):
            return last
        time.sleep(0.05)
    pytest.fail(f"vllm never reached the expected status; last: {last}")


def _sh(line: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run a documented shell line as cron would (/bin/sh, real curl and jq)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # where llm-supervisor is installed
    env = {**os.environ, "URL": url, "FMCP_BEARER_TOKEN": TOKEN, "PATH": path}
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, env=env, timeout=WAIT, check=False)


def _fluidmcp_scrape(url: str) -> dict[str, float]:
    """The fluidmcp_* series of the model "vllm" (the one its documented alerts name, or judge alone)."""
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=5).text
    return {
        series_name(name, dict(labels)): v
        for (name, labels), v in samples(text).items()
        if name.startswith("fluidmcp_") and dict(labels) == {"server": "vllm"}
    }


@pytest.mark.skipif(
    PROMTOOL is None or shutil.which("curl") is None or shutil.which("jq") is None,
    reason="needs promtool, curl and jq (ci/setup-system.sh installs them)",
)
def test_fluidmcp_commands_and_alerts_work_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under FMCP_SECURE_MODE the seed's curl/jq lines answer, its alerts fire as they should, the cron line alerts."""
    model = fake_model()
    oomy = fake_model("--oom", "startup", max_restarts=0)  # CUDA out of memory while loading, then failed
    with daemon(_config(tmp_path, model, oomy=oomy), env=_fmcp_env(monkeypatch)) as d:
        assert httpx.get(f"{d.url}/llm/models").status_code == 401
        first = _wait(d.url, lambda s: s["is_healthy"])
        auth = '-H "Authorization: Bearer $FMCP_BEARER_TOKEN"'
        for line, expected in [
            (f'curl -sf {auth} "$URL/llm/models/vllm" | jq .has_cuda_oom', "false"),
            (f'curl -sf {auth} "$URL/llm/models" | jq .total', "2"),
            (f'curl -sf -X POST {auth} "$URL/llm/models/vllm/health-check" | jq .is_healthy', "true"),
            (f'curl -sf {auth} "$URL/llm/models/vllm/logs?lines=100" | jq -r ".lines[]" | grep -c "startup comp"', "1"),
        ]:
            done = _sh(line, d.url)
            assert (done.returncode, done.stdout.strip()) == (0, expected), (line, done.stderr)
        deadline = time.monotonic() + WAIT
        while (oom := _sh(f'curl -sf {auth} "$URL/llm/models/oomy" | jq .has_cuda_oom', d.url)).stdout != "true\n":
            assert time.monotonic() < deadline, oom
            time.sleep(0.1)
        assert _sh(CRON, d.url).returncode == 0
        assert _sh(CHECK, d.url).returncode == 0

        healthy = _fluidmcp_scrape(d.url)
        os.kill(first["pid"], signal.SIGKILL)  # a real crash: the policy restarts it
        _wait(d.url, lambda s: s["is_healthy"] and s["restart_count"] == 1 and s["pid"] != first["pid"])
        recovered = _fluidmcp_scrape(d.url)
        assert not fires(DOWN, [healthy, recovered])
        assert fires(RESTARTING, [healthy, recovered])
        assert not fires(RESTARTING, [healthy, healthy])
        assert fires(RECENT, [healthy, recovered])

        # The seed's own crash test: a forced stop here is an operator's stop, not a crash (docs/fluidmcp.md).
        stop = _sh(f'curl -sf -X POST {auth} "$URL/llm/models/vllm/stop?force=true" | jq -r .message', d.url)
        assert (stop.returncode, stop.stdout) == (0, "stopping\n")
        stopped = _wait(d.url, lambda s: s["state"] == "stopped")
        assert stopped["restart_count"] == 1
        assert model_processes(model) == []
        assert fires(DOWN, [recovered, _fluidmcp_scrape(d.url)])
        assert _sh(CRON, d.url).returncode != 0  # ours alerts ...
        assert _sh(CHECK, d.url).returncode == 1
        seed = _sh(SEED_CRON, d.url)
        assert (seed.returncode, seed.stdout.strip()) == (0, "false")  # ... FluidMCP's line never could
        url = d.url
    assert _sh(CRON, url).returncode != 0  # and nor does a supervisor that is gone go unnoticed
    assert _sh(CHECK, url).returncode == 3


def test_secure_mode_without_a_token_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FMCP_SECURE_MODE=true with no token at all: run exits 2 naming FMCP_BEARER_TOKEN, and starts no model."""
    model = fake_model()
    env = {**os.environ, **_fmcp_env(monkeypatch, token="")}
    env.pop("LLM_SUPERVISOR_TOKEN", None)
    done = subprocess.run(
        [*CLI, "run", "-c", str(_config(tmp_path, model))],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "FMCP_SECURE_MODE=true but no token is set: set $FMCP_BEARER_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert model_processes(model) == []


def test_secure_mode_alone_does_not_open_a_public_bind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With FluidMCP's variables only, run still refuses --host 0.0.0.0 (docs/fluidmcp.md: name the token_env)."""
    model = fake_model()
    env = {**os.environ, **_fmcp_env(monkeypatch)}
    env.pop("LLM_SUPERVISOR_TOKEN", None)
    done = subprocess.run(
        [*CLI, "run", "-c", str(_config(tmp_path, model)), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on 0.0.0.0 without a token" in done.stderr
    assert model_processes(model) == []
