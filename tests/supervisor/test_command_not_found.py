"""A command that is not on PATH: `validate` warns, and a real supervisor's spawn failure gets its own cause and
advice naming the command (instead of a crash and "read the traceback")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import samples, value
from real_fleet import config_data, fake_model
from test_cli_run import CLI, WAIT, daemon, wait_status

from supervisor.config.commands import command_warnings
from supervisor.config.schema import parse_config

MISSING = "no-such-vllm-7f3a"


def _models(tmp_path: Path, models: dict[str, dict[str, Any]]) -> list[str]:
    return command_warnings(parse_config({"llmModels": models}, "test", base_dir=tmp_path))


def test_validate_warnings_name_each_unrunnable_command(tmp_path: Path) -> None:
    """Bare names are looked up on the model's PATH; paths relative to cwd; docker models are not checked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "myvllm").write_text("#!/bin/sh\n")
    (bin_dir / "myvllm").chmod(0o755)
    (bin_dir / "plain").write_text("data\n")
    docker = {"command": MISSING, "runtime": "docker", "docker": {"image": "vllm/vllm-openai"}}
    warnings = _models(
        tmp_path,
        {
            "ok_on_env_path": {"command": "myvllm", "env": {"PATH": str(bin_dir)}},
            "ok_absolute": {"command": sys.executable},
            "ok_relative": {"command": "bin/myvllm", "cwd": str(tmp_path)},
            "missing": {"command": MISSING},
            "not_on_env_path": {"command": "myvllm", "env": {"PATH": "/nonexistent"}},
            "no_file": {"command": "./bin/gone", "cwd": str(tmp_path)},
            "not_executable": {"command": str(bin_dir / "plain")},
            "in_docker": docker,
        },
    )
    assert warnings == [
        f"model 'missing': command '{MISSING}' is not on PATH ({os.environ['PATH']}): a start will "
        "fail with command_not_found. Give its absolute path, or add its directory to PATH (the model's env, or "
        "the supervisor's environment)",
        "model 'not_on_env_path': command 'myvllm' is not on PATH (/nonexistent): a start will fail with "
        "command_not_found. Give its absolute path, or add its directory to PATH (the model's env, or the "
        "supervisor's environment)",
        f"model 'no_file': command './bin/gone' does not exist ({tmp_path}/bin/gone): a start will fail with "
        "command_not_found",
        f"model 'not_executable': command '{bin_dir}/plain' is not executable ({bin_dir}/plain): chmod +x it",
    ]


def test_validate_command_warns_and_still_passes(tmp_path: Path) -> None:
    """`llm-supervisor validate` on a valid config whose command is missing: exit 0, a warning on stderr."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"llmModels": {"m": {"command": MISSING}, "ok": {"command": sys.executable}}}))
    done = subprocess.run(
        [*CLI, "validate", "-c", str(path)], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok: 2 models (m, ok)\n"
    assert done.stderr.startswith(f"warning: model 'm': command '{MISSING}' is not on PATH (")
    assert "ok" not in done.stderr.split("\n", 1)[1]


@pytest.mark.slow
@pytest.mark.usefixtures("no_process_left")
def test_real_supervisor_reports_the_missing_command(tmp_path: Path) -> None:
    """A model whose command does not exist fails with command_not_found, its advice and events naming it."""
    model = {**fake_model(), "command": MISSING, "max_restarts": 1}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_data(tmp_path / "state", {"m": model})))
    with daemon(path) as d:
        status = wait_status(d.url, "m", lambda s: s["state"] == "failed")
        assert status["failure_cause"] == "command_not_found"
        assert f"'{MISSING}' was not found" in status["failure_advice"]
        assert "traceback" not in status["failure_advice"]
        events = httpx.get(f"{d.url}/api/llm/models/m/events").json()
        exits = [e for e in events if e["kind"] == "exited"]
        assert exits
        assert all(e["reason"] == "command_not_found" for e in exits)
        assert f"command '{MISSING}' not found" in exits[0]["detail"]
        parsed = samples(httpx.get(f"{d.url}/metrics").text)
        assert value(parsed, "llm_supervisor_exits_total", model="m", cause="command_not_found") == len(exits)
