"""Reload of a real `llm-supervisor run` (SIGHUP and POST /api/reload) with real fake-vllm processes: unchanged
models keep their pids, removed ones stop, changed ones restart, new ones start; a bad file changes nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from real_fleet import config_data, fake_model, model_processes
from test_cli_run import WAIT, daemon, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]


def _write(path: Path, models: dict[str, dict[str, Any]], **settings: Any) -> None:
    data = config_data(path.parent / "state", models)
    data["supervisor"].update(settings)
    path.write_text(json.dumps(data))


def _group_alive(pgid: int) -> bool:
    return any(_pgid(p) == pgid for p in psutil.process_iter() if p.pid != os.getpid())


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return None if proc.status() == psutil.STATUS_ZOMBIE else os.getpgid(proc.pid)
    except (psutil.Error, ProcessLookupError):
        return None


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"never: {what}")
        time.sleep(0.05)


def test_sighup_applies_the_file_and_leaves_unchanged_models_alone(tmp_path: Path) -> None:
    """kill -HUP: the unchanged model keeps its pid, the removed one's group is gone, the changed one has a
    new pid, the new one becomes healthy, and the daemon says what it did."""
    config = tmp_path / "config.json"
    keep, drop, edit, fresh = fake_model(), fake_model(), fake_model(), fake_model()
    _write(config, {"keep": keep, "drop": drop, "edit": edit})
    with daemon(config) as d:
        before = {m: wait_status(d.url, m, lambda s: s["state"] == "healthy") for m in ("keep", "drop", "edit")}
        dropped_group = os.getpgid(before["drop"]["pid"])
        _write(config, {"keep": keep, "edit": {**edit, "max_restarts": 7}, "fresh": fresh})
        os.kill(d.proc.pid, signal.SIGHUP)

        wait_status(d.url, "fresh", lambda s: s.get("state") == "healthy")
        edited = wait_status(d.url, "edit", lambda s: s["state"] == "healthy" and s["pid"] != before["edit"]["pid"])
        assert edited["max_restarts"] == 7
        _eventually(lambda: not _group_alive(dropped_group), "the removed model's process group is gone")
        assert model_processes(drop) == []
        assert httpx.get(f"{d.url}/api/llm/models/drop").status_code == 404
        kept = httpx.get(f"{d.url}/api/llm/models/keep").json()
        assert kept["pid"] == before["keep"]["pid"]
        assert kept["state"] == "healthy"
        assert [p.pid for p in model_processes(keep)] == [before["keep"]["pid"]]
        assert d.proc.poll() is None  # SIGHUP used to kill the supervisor and leave every model unsupervised
        _eventually(lambda: "reloaded:" in d.stderr(), "the reload is logged")
        assert "reloaded: added fresh; removed drop; restarted edit; unchanged keep" in d.stderr()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=WAIT) == 0
    assert all(model_processes(m) == [] for m in (keep, edit, fresh))


def test_api_reload_refuses_a_bad_file_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    """POST /api/reload (and SIGHUP): an invalid file is 422 listing every problem and changes nothing; a changed
    supervisor.api.port is named in needs_restart while the model change is applied."""
    config = tmp_path / "config.json"
    model = fake_model()
    _write(config, {"a": model})
    with daemon(config) as d:
        first = wait_status(d.url, "a", lambda s: s["state"] == "healthy")
        _write(config, {"a": {**model, "restart_polcy": "always", "max_restarts": -1}, "b": {"args": []}})
        bad = httpx.post(f"{d.url}/api/reload", timeout=WAIT)
        assert bad.status_code == 422
        problems = bad.json()["problems"]
        assert "llmModels.a.restart_polcy: unknown key (did you mean restart_policy?)" in problems
        assert "llmModels.a.max_restarts: must be >= 0 (got -1)" in problems
        assert "llmModels.b.command: required key is missing" in problems
        assert len(problems) == 3
        assert all(problem in bad.json()["detail"] for problem in problems)
        assert all(problem in d.stderr() for problem in problems)  # the log lists them too
        os.kill(d.proc.pid, signal.SIGHUP)  # the same file by SIGHUP: refused and logged, the daemon lives on
        _eventually(lambda: d.stderr().count("reload refused, nothing changed") == 2, "the SIGHUP refusal logged")
        assert d.proc.poll() is None
        after = httpx.get(f"{d.url}/api/llm/models/a").json()
        assert (after["pid"], after["state"]) == (first["pid"], "healthy")
        assert httpx.get(f"{d.url}/api/llm/models/b").status_code == 404

        _write(config, {"a": model}, api={"host": "127.0.0.1", "port": 1})
        same = httpx.post(f"{d.url}/api/reload", timeout=WAIT)
        assert same.status_code == 200
        assert same.json() == {
            "added": [],
            "removed": [],
            "restarted": [],
            "unchanged": ["a"],
            "needs_restart": ["supervisor.api.port"],
        }
        assert "supervisor.api.port changed" in d.stderr()
        assert httpx.get(f"{d.url}/api/llm/models/a").json()["pid"] == first["pid"]
