"""Runs against staging: model ids mapped with --model, --fail-on-skip, and clean-up that survives errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from chaos import drive as drive_module
from chaos import runner
from chaos.actions import Context
from chaos.cli import main
from chaos.fixtures import Supervised
from chaos.mapping import MappingError, parse_model_map, rename_models
from chaos.observer import Observer
from chaos.runner import RunOptions, run_scenario
from chaos.scenario import Scenario, parse_scenario

STORY: dict[str, Any] = {
    "name": "mapped",
    "story": "s",
    "target": {"models": {"m1": {"fallback": "m2"}, "m2": {}}},
    "steady_state": [{"healthy": {"model": "m1", "within": 20}}],
    "load": {"model": "m1"},
    "faults": [{"at": 0.2, "action": "api", "target": {"model": "m1"}, "operation": "stop"}],
    "cleanup": [{"action": "api", "target": {"model": "m1"}, "operation": "start"}],
    "expect": [
        {"state": {"model": "m1", "is": "stopped", "within": 5}},
        {"requests": {"model": "m1", "failed_max": 0}},
    ],
}


def test_every_reference_to_a_model_is_renamed() -> None:
    """--model m1=qwen renames m1 in the target, steady state, load, faults, clean-up, expectations, fallbacks."""
    mapped = rename_models(parse_scenario(STORY), {"m1": "qwen", "m2": "llama"})
    assert mapped.target is not None
    assert sorted(mapped.target.models) == ["llama", "qwen"]
    assert mapped.target.models["qwen"].fallback == "llama"
    assert mapped.steady_state[0].healthy.model == "qwen"
    assert mapped.load is not None
    assert mapped.load.model == "qwen"
    assert [e.model for e in mapped.expect] == ["qwen", "qwen"]
    dumped = str(mapped.model_dump(mode="json"))
    assert "'m1'" not in dumped
    assert "'m2'" not in dumped


def test_ids_left_out_of_the_mapping_stay() -> None:
    mapped = rename_models(parse_scenario(STORY), {"m2": "llama"})
    assert mapped.steady_state[0].healthy.model == "m1"
    assert rename_models(parse_scenario(STORY), {}) == parse_scenario(STORY)


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        (["m1"], "give CATALOGUE_ID=DEPLOYMENT_ID"),
        (["m1=has space"], "give CATALOGUE_ID=DEPLOYMENT_ID"),
        (["m1=a", "m1=b"], "m1 is already mapped to a"),
        (["m1=a", "m2=a"], "two catalogue ids map to the same model"),
    ],
)
def test_a_bad_mapping_is_refused_by_name(items: list[str], problem: str) -> None:
    with pytest.raises(MappingError, match=problem):
        parse_model_map(items)


def test_the_cli_runs_the_mapped_scenario(write_scenario: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A dry run with --model shows the deployment's model ids; a bad --model exits 2 and says why."""
    path = write_scenario(
        {k: v for k, v in STORY.items() if k not in ("load", "expect")} | {"expect": [{"no_orphans": True}]}
    )
    assert main(["run", str(path), "--dry-run", "--supervisor", "http://10.1.2.3:8099", "--model", "m1=qwen"]) == 0
    out = capsys.readouterr().out
    assert "target={'model': 'qwen'}" in out
    assert "'m1'" not in out
    assert main(["run", str(path), "--dry-run", "--model", "m1"]) == 2
    assert "give CATALOGUE_ID=DEPLOYMENT_ID" in capsys.readouterr().err


def test_fail_on_skip_turns_a_skipped_run_red(write_scenario: Any, tmp_path: Any) -> None:
    """A scenario skipped against staging exits 0, or 1 with --fail-on-skip (nothing is touched either way)."""
    data = {**STORY, "faults": [{"action": "kill", "target": {"model": "m1"}}], "expect": [{"no_orphans": True}]}
    data.pop("load")
    data.pop("target")
    path = write_scenario(data)
    common = ["run", str(path), "--supervisor", "http://127.0.0.1:9", "--report-dir", str(tmp_path / "rep")]
    assert main(common) == 0
    assert main([*common, "--fail-on-skip"]) == 1


@pytest.mark.slow
async def test_clean_up_runs_when_the_run_breaks_off(
    no_leftovers: None, supervised: Callable[..., Supervised], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging model the scenario stopped is started again even when the run fails half-way."""
    target = supervised({"m1": {"startup_probe_interval": 0.2}})
    target.wait_for("m1", "healthy")

    async def broken_drive(scenario: Scenario, ctx: Context, *args: Any) -> Any:
        await ctx.client.post(f"{ctx.api_url}/api/llm/models/m1/stop")
        raise httpx.ReadTimeout("the staging API stopped answering")

    monkeypatch.setattr(runner, "drive", broken_drive)
    data = {k: v for k, v in STORY.items() if k not in ("target", "load")} | {"expect": [{"no_orphans": True}]}
    options = RunOptions(supervisor_url=target.url, token=target.supervisor.token)
    result = await run_scenario(parse_scenario(data), options)
    assert result.outcome == "error"
    assert "ReadTimeout" in result.message
    assert target.status("m1")["desired"] == "running"


async def test_a_fault_with_for_is_undone_when_the_run_breaks_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hang with `for: 60` is reverted at once when a later step raises, and the error still propagates."""
    undone: list[str] = []

    async def revert() -> str:
        undone.append("SIGCONT")
        return "continued"

    async def perform(step: Any, ctx: Any) -> tuple[str, Any]:
        if step.action == "hang":
            return "stopped", revert
        raise RuntimeError("the harness broke")

    monkeypatch.setattr(drive_module, "perform", perform)
    scenario = parse_scenario(
        {
            "name": "broken",
            "story": "s",
            "faults": [
                {"at": 0, "action": "hang", "target": {"model": "m1"}, "for": 60},
                {"at": 0, "action": "kill", "target": {"model": "m1"}},
            ],
            "expect": [{"no_orphans": True}],
        }
    )
    async with httpx.AsyncClient() as client:
        ctx = Context(
            client, "http://127.0.0.1:9", Observer(client, "http://127.0.0.1:9", processes_visible=False), False, False
        )
        with pytest.raises(RuntimeError, match="the harness broke"):
            await asyncio.wait_for(drive_module._inject(scenario, ctx, 0.0, lambda _: None), 10)
    assert undone == ["SIGCONT"]
