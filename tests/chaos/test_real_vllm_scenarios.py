"""A catalogue scenario made ready for real vLLM: what changes (server, slack, per-model keys) and what may not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos.real_vllm import VllmServer, for_real_vllm, not_on_real_vllm
from chaos.scenario import ScenarioError, load_scenario, parse_scenario, scenario_files
from chaos.target import build_config, plan_local

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def scenario(**extra: Any) -> dict[str, Any]:
    return {
        "name": "s",
        "story": "a story",
        "target": {"models": {"m1": {"fake_vllm": ["--engine-children", "2"], "stop_timeout": 1}}},
        "steady_state": [{"healthy": {"model": "m1", "within": 15}}],
        "faults": [{"action": "kill", "target": {"model": "m1", "process": "VLLM::EngineCore"}}],
        "expect": [{"healthy_within": {"model": "m1", "within": 20}}, {"no_orphans": True}],
        "observe_at_most": 30,
        **extra,
    }


def test_a_scenario_without_the_block_stays_on_the_fake() -> None:
    """No real_vllm block: the run on real vLLM skips it, saying why."""
    assert not_on_real_vllm(parse_scenario(scenario())) == "written for fake-vllm only (it has no real_vllm block)"
    with pytest.raises(ValueError, match="no real_vllm block"):
        for_real_vllm(parse_scenario(scenario()))


def test_a_scenario_without_a_target_cannot_start_real_vllm() -> None:
    """real_vllm without target.models: skipped with the reason, not an exception mid-run."""
    data = {k: v for k, v in scenario(real_vllm={}).items() if k != "target"}
    assert not_on_real_vllm(parse_scenario(data)) == "it has no target to start (a real_vllm block needs target.models)"


def test_slack_goes_to_every_within_and_the_fake_flags_go() -> None:
    """Each `within` and observe_at_most grow by the slack; fake-vllm's flags are dropped; the rest stays."""
    real = for_real_vllm(parse_scenario(scenario(real_vllm={"slack": 100})))
    assert real.steady_state[0].healthy.within == 115
    assert real.timed()[0].within == 120
    assert real.observe_at_most == 130
    assert real.target is not None
    spec = real.target.models["m1"]
    assert (spec.fake_vllm, spec.stop_timeout) == ([], 1)
    assert real.faults == parse_scenario(scenario()).faults


def test_per_model_keys_replace_the_scenarios() -> None:
    """real_vllm.models.m1 keys win over target.models.m1 on real vLLM; the other keys are kept."""
    block = {"models": {"m1": {"inference_probe": {"interval": 2, "timeout": 5}, "stop_timeout": 3}}}
    real = for_real_vllm(parse_scenario(scenario(real_vllm=block)))
    assert real.target is not None
    spec = real.target.models["m1"]
    assert spec.stop_timeout == 3
    assert spec.supervisor_keys()["inference_probe"] == {"interval": 2, "timeout": 5}


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"faults": [{"action": "oom", "target": {"model": "m1"}}]}, "faults.0 (oom) need fake-vllm's /admin/faults"),
        ({"real_vllm": {"models": {"m9": {}}}}, "unknown model(s) ['m9']"),
    ],
)
def test_what_real_vllm_cannot_do_is_refused(extra: dict[str, Any], problem: str) -> None:
    """Steps only the fake answers, and models the target lacks, are refused at validation, by name."""
    data = scenario(**{"real_vllm": {}, **extra})
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data)
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_the_config_runs_vllm_serve_on_the_model_directory(tmp_path: Path) -> None:
    """Each model becomes `vllm serve DIR --port P --enforce-eager FLAGS ARGS`, on the port the plan chose."""
    real = for_real_vllm(parse_scenario(scenario(real_vllm={"args": ["--dtype", "float32"]})))
    plan = plan_local(real, tmp_path)
    server = VllmServer("/opt/vllm/bin/vllm", "/models/tiny", ("--max-model-len", "256"))
    entry = build_config(real, plan, seed=1, vllm=server)["llmModels"]["m1"]
    port = str(plan.server_ports["m1"][0])
    assert entry["command"] == "/opt/vllm/bin/vllm"
    assert entry["args"] == [
        "serve", "/models/tiny", "--port", port, "--enforce-eager", "--max-model-len", "256", "--dtype", "float32",
    ]  # fmt: skip
    assert entry["endpoints"] == {"base_url": f"http://127.0.0.1:{port}/v1"}


def test_the_catalogue_has_its_real_vllm_subset() -> None:
    """The scenarios chosen for real vLLM are there and each makes a valid real-vLLM scenario."""
    chosen = []
    for path in scenario_files([SCENARIOS]):
        loaded = load_scenario(path)
        if loaded.real_vllm is not None:
            for_real_vllm(loaded)
            chosen.append(loaded.name)
    assert sorted(chosen) == [
        "engine-hung-health-200",
        "engine-killed-api-server-lives",
        "orphan-engine-children",
        "shutdown-kills-a-loading-server",
    ]
