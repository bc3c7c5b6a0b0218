"""The scenario model is strict: unknown keys and bad values fail with their key path; the catalogue is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from chaos.scenario import ScenarioError, load_scenario, parse_scenario, scenario_files
from supervisor.config.schema import ConfigError, parse_config

CATALOGUE = Path(__file__).resolve().parents[2] / "scenarios"


def base(**changes: Any) -> dict[str, Any]:
    """A minimal valid scenario, with top-level keys replaced."""
    data: dict[str, Any] = {
        "name": "s",
        "story": "a story",
        "target": {"models": {"m1": {"fake_vllm": ["--crash-after", "1"], "restart_delay": 0.5}}},
        "faults": [{"at": 1, "action": "kill", "target": {"model": "m1"}}],
        "expect": [{"restarts": {"model": "m1", "count": 1}}],
    }
    data.update(changes)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "x.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"target": {"models": {"m1": {"restart_polcy": "always"}}}},
            "target.models.m1.restart_polcy: unknown key (did you mean restart_policy?)",
        ),
        (
            {"faults": [{"action": "signal", "target": {"model": "m1"}, "signal": "SIGNOPE"}]},
            "faults.0.signal.signal: unknown signal 'SIGNOPE'",
        ),
        (
            {"faults": [{"action": "net", "target": {"model": "m1"}, "toxic": "latency"}]},
            "faults.0.net: toxic latency needs attributes ['latency']",
        ),
        (
            {"faults": [{"action": "net", "target": {"model": "m1"}, "toxic": "blackhole", "attributes": {"rate": 1}}]},
            "faults.0.net: toxic blackhole has no attributes ['rate']",
        ),
        ({"faults": [{"action": "explode"}]}, "faults.0: Input tag 'explode' found using 'action' does not match"),
        (
            {"expect": [{"restarts": {"model": "m1", "count": 1}, "no_orphans": True}]},
            "expect.0: one expectation per item, got ['no_orphans', 'restarts']",
        ),
        ({"expect": [{"state": {"model": "m1", "is": "sleeping", "within": 1}}]}, "expect.0.state.is: Input should be"),
        ({"expect": [{"restarts": {"model": "m2", "count": 1}}]}, "expect.0: unknown model 'm2' (target has ['m1'])"),
        ({"expect": []}, "expect: List should have at least 1 item"),
        ({"name": "Has Spaces"}, "name: String should match pattern"),
        ({"surprise": 1}, "surprise: unknown key"),
    ],
)
def test_bad_scenarios_name_the_key_path(change: dict[str, Any], expected: str) -> None:
    """Each mistake is reported with the path of the key that holds it."""
    assert any(p.startswith(expected) for p in problems(base(**change))), problems(base(**change))


def test_supervisor_keys_keep_explicit_nulls_and_drop_unset() -> None:
    """Keys the scenario sets go into the config (null kept: unlimited); keys it leaves out do not."""
    spec = parse_scenario(base(target={"models": {"m1": {"max_restarts": None, "restart_delay": 1}}})).target
    assert spec is not None
    assert spec.models["m1"].supervisor_keys() == {"max_restarts": None, "restart_delay": 1.0}


def _supervisor_accepts(key: str, value: object) -> bool:
    try:
        parse_config({"llmModels": {"m1": {"command": "fake-vllm", key: value}}})
    except ConfigError:
        return False
    return True


def _scenario_accepts(key: str, value: object) -> bool:
    try:
        parse_scenario(base(target={"models": {"m1": {key: value}}}))
    except ScenarioError:
        return False
    return True


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("backoff_jitter", 1, False),
        ("backoff_jitter", 0.99, True),
        ("backoff_jitter", 0, True),
        ("backoff_jitter", -0.1, False),
        ("restart_window", 0, False),
        ("restart_window", 0.1, True),
        ("backoff_reset_after", 0, False),
        ("backoff_reset_after", 0.1, True),
        ("backoff_multiplier", 0.5, False),
        ("success_exit_codes", [256], False),
        ("success_exit_codes", [0, 3], True),
        ("max_restarts", None, True),
        ("restart_window", None, True),
        ("restart_delay", None, False),
        ("stop_timeout", None, False),
    ],
)
def test_supervisor_key_bounds_match_the_supervisor_config(key: str, value: object, valid: bool) -> None:
    """A value `validate` accepts is one the supervisor accepts too, so no run dies at start-up on it."""
    assert _supervisor_accepts(key, value) is valid
    assert _scenario_accepts(key, value) is valid


def test_for_is_the_duration_of_net_and_hang() -> None:
    """`for` (a Python keyword) is read into the step's duration and extends the faults' end."""
    scenario = parse_scenario(
        base(
            faults=[
                {"at": 1, "action": "net", "target": {"model": "m1"}, "toxic": "blackhole", "for": 3},
                {"at": 2, "action": "hang", "target": {"model": "m1"}, "for": 0.5},
            ]
        )
    )
    assert scenario.faults_end() == 4.0


def test_load_reports_yaml_errors_and_non_mappings(tmp_path: Path) -> None:
    """A file that is not YAML, or not a mapping, fails with the file named."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match=r"broken\.yaml"):
        load_scenario(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n")
    with pytest.raises(ScenarioError, match="a scenario is a mapping"):
        load_scenario(listed)


def test_catalogue_is_valid_and_complete() -> None:
    """Every catalogue file validates, names are unique and match the file, and there are at least 14."""
    files = scenario_files([CATALOGUE])
    scenarios = [load_scenario(f) for f in files]
    assert len(scenarios) >= 14
    assert sorted(s.name for s in scenarios) == sorted(f.stem for f in files)
    assert all(len(s.story.split()) >= 15 for s in scenarios)


@pytest.mark.parametrize(
    "name",
    [
        "crash-loop-reaches-failed",
        "backoff-timing",
        "backoff-reset-after-stable-health",
        "slow-start-not-killed",
        "startup-timeout",
        "hang-sigstop",
        "engine-dead-exit-zero",
        "oom-at-startup",
        "orphan-engine-children",
        "sigterm-ignored-escalates",
        "health-flap-below-threshold",
        "network-blackhole-restart",
        "manual-stop-sticks",
        "concurrent-restarts-one-run",
        "supervisor-kill9-restart",
    ],
)
def test_issue_catalogue_entries_exist(name: str) -> None:
    """Each failure the issue lists has its scenario in the catalogue."""
    data = yaml.safe_load((CATALOGUE / f"{name}.yaml").read_text())
    assert load_scenario(CATALOGUE / f"{name}.yaml").name == data["name"] == name


def test_a_directory_expands_to_the_scenarios_of_its_sub_folders(tmp_path: Path) -> None:
    """`llm-chaos run scenarios/` takes scenarios/docker/ too, as `pytest scenarios/` does; other files are not."""
    (tmp_path / "docker").mkdir()
    for name in ("b.yaml", "docker/a.yml", "notes.txt"):
        (tmp_path / name).write_text("")
    assert scenario_files([tmp_path]) == [tmp_path / "b.yaml", tmp_path / "docker" / "a.yml"]
