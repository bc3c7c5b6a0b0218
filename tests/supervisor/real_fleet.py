"""Build configs of real fake-vllm models for tests that drive the real Supervisor through the API."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import psutil

from fake_vllm.testing import free_port

# Short timings so real restarts happen in well under a second; all other keys keep their defaults.
FAST: dict[str, Any] = {
    "restart_delay": 0.2,
    "backoff_multiplier": 2,
    "backoff_max": 2,
    "health_check_interval": 0.5,
    "health_check_timeout": 2,
    "startup_timeout": 30,
    "startup_probe_interval": 0.1,
    "stop_timeout": 5,
}


_given: set[int] = set()


def _distinct_free_port() -> int:
    # free_port closes its probe socket, so two calls in a row may return the same port.
    while (port := free_port()) in _given:
        pass
    _given.add(port)
    return port


def fake_model(*flags: str, **keys: Any) -> dict[str, Any]:
    """One model running `python -m fake_vllm serve` on a free port with extra fake-vllm flags."""
    port = _distinct_free_port()
    return {
        "command": sys.executable,
        "args": ["-m", "fake_vllm", "serve", "test-model", "--port", str(port), *flags],
        "endpoints": {"base_url": f"http://127.0.0.1:{port}/v1"},
        **FAST,
        **keys,
    }


def config_data(state_dir: Path, models: dict[str, dict[str, Any]], port: int = 0) -> dict[str, Any]:
    return {
        "supervisor": {"api": {"host": "127.0.0.1", "port": port}, "state_dir": str(state_dir)},
        "llmModels": models,
    }


def model_processes(model_config: dict[str, Any]) -> list[psutil.Process]:
    """Live fake-vllm API-server processes serving this model's port (orphans included)."""
    port = model_config["args"][model_config["args"].index("--port") + 1]
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            if "fake_vllm" in cmd and "serve" in cmd and "--port" in cmd and cmd[cmd.index("--port") + 1] == port:
                found.append(proc)
        except (psutil.Error, ValueError, IndexError):
            continue
    return found
