"""The reload planner: the running config against the re-read one, as added/removed/restarted/unchanged and the
supervisor keys that need a full restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.config.reload_plan import ReloadPlan, applied_config, plan_reload
from supervisor.config.schema import Config, load_config, parse_config


def _model(port: int, **keys: Any) -> dict[str, Any]:
    return {"command": "vllm", "args": ["serve", "m", "--port", str(port)], **keys}


def _config(models: dict[str, dict[str, Any]], **settings: Any) -> Config:
    return parse_config({"supervisor": settings, "llmModels": models}, base_dir="/srv")


def test_same_config_changes_nothing() -> None:
    """Reading the same settings again plans no change at all."""
    config = _config({"a": _model(1), "b": _model(2)})
    plan = plan_reload(config, _config({"a": _model(1), "b": _model(2)}))
    assert plan == ReloadPlan(unchanged=("a", "b"))
    assert not plan.changes_models


def test_each_model_lands_in_exactly_one_list() -> None:
    """New ids are added, missing ones removed, different settings restarted, equal ones left alone."""
    old = _config({"keep": _model(1), "drop": _model(2), "edit": _model(3)})
    new = _config({"edit": _model(3, max_restarts=9), "keep": _model(1), "fresh": _model(4)})
    plan = plan_reload(old, new)
    assert plan.added == ("fresh",)
    assert plan.removed == ("drop",)
    assert plan.restarted == ("edit",)
    assert plan.unchanged == ("keep",)
    assert plan.needs_restart == ()
    assert plan.changes_models


@pytest.mark.parametrize(
    "change",
    [
        {"args": ["serve", "m", "--port", "1", "--max-model-len", "4096"]},
        {"env": {"HF_HOME": "/data"}},
        {"health_check_interval": 3},
        {"replicas": 2, "ports": [5, 6], "args": ["--port", "{port}"]},
        {"cwd": "models"},
    ],
)
def test_any_changed_key_restarts_the_model(change: dict[str, Any]) -> None:
    """A difference in any model key, a relative path's resolution included, means a restart."""
    plan = plan_reload(_config({"a": _model(1)}), _config({"a": {**_model(1), **change}}))
    assert plan.restarted == ("a",)


def test_a_default_written_out_is_no_change() -> None:
    """Spelling out a default (or FluidMCP's shutdown_timeout alias) is the same setting: no restart."""
    plan = plan_reload(_config({"a": _model(1)}), _config({"a": _model(1, max_restarts=3, shutdown_timeout=30)}))
    assert plan.restarted == ()
    assert plan.unchanged == ("a",)


def test_supervisor_keys_that_differ_are_named() -> None:
    """Each supervisor key that differs is named by its full path; equal ones are not."""
    old = _config({"a": _model(1)}, api={"port": 8099}, state_dir="state", log_backups=5)
    new = _config(
        {"a": _model(1)},
        api={"port": 9000, "host": "127.0.0.1"},
        state_dir="other",
        log_backups=5,
        token_env="MY_TOKEN",
    )
    plan = plan_reload(old, new)
    assert plan.needs_restart == ("supervisor.api.port", "supervisor.state_dir", "supervisor.token_env")
    assert plan.unchanged == ("a",)


def test_gateway_added_removed_or_changed_is_named() -> None:
    """The gateway's listener is opened once: adding, removing or changing its section needs a restart."""
    bare = _config({"a": _model(1)})
    with_gateway = _config({"a": _model(1)}, gateway={"port": 8000})
    moved = _config({"a": _model(1)}, gateway={"port": 8001, "hold_timeout": 5})
    assert plan_reload(bare, with_gateway).needs_restart == ("supervisor.gateway",)
    assert plan_reload(with_gateway, bare).needs_restart == ("supervisor.gateway",)
    changed = ("supervisor.gateway.port", "supervisor.gateway.hold_timeout")
    assert plan_reload(with_gateway, moved).needs_restart == changed


def test_applied_config_keeps_the_running_supervisor_settings() -> None:
    """After a reload the fleet runs the new models under the supervisor settings it started with."""
    old = _config({"a": _model(1)}, api={"port": 8099})
    new = _config({"b": _model(2)}, api={"port": 9000})
    applied = applied_config(old, new)
    assert applied.supervisor == old.supervisor
    assert applied.models == new.models


def test_a_loaded_config_remembers_its_file(tmp_path: Path) -> None:
    """load_config keeps the file's path for a reload; parsed data has none."""
    path = tmp_path / "c.yaml"
    path.write_text("llmModels:\n  a: {command: vllm}\n")
    assert load_config(path).path == path.resolve()
    assert _config({"a": _model(1)}).path is None
    assert applied_config(load_config(path), _config({})).path == path.resolve()
