"""The pytest plugin collects only scenario files under `scenarios/`, one test each, and runs them for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chaos.test_cli import STOP_STICKS


def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a separate pytest in `folder` (the plugin loads from its entry point there too)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_collects_scenarios_and_nothing_else(tmp_path: Path) -> None:
    """Scenario YAML under scenarios/ is collected by name; other YAML, there or elsewhere, is not."""
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "stop.yaml").write_text(yaml.safe_dump(STOP_STICKS))
    (tmp_path / "scenarios" / "broken.yaml").write_text("name: [oops\n")
    (tmp_path / "scenarios" / "config.yaml").write_text("llmModels: {}\n")
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(STOP_STICKS))
    done = pytest_in(tmp_path, "--collect-only", "-q")
    assert "scenarios/stop.yaml::stop-sticks" in done.stdout
    assert "scenarios/broken.yaml::broken" in done.stdout
    assert "config" not in done.stdout
    assert "elsewhere" not in done.stdout


def test_invalid_scenario_is_a_failing_test(tmp_path: Path) -> None:
    """A scenario with an unknown key fails as a test and names the key path."""
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "typo.yaml").write_text(yaml.safe_dump({**STOP_STICKS, "expct": 1}))
    done = pytest_in(tmp_path, "-q")
    assert done.returncode == 1
    assert "invalid scenario" in done.stdout
    assert "expct: unknown key" in done.stdout


@pytest.mark.slow
def test_runs_a_scenario_and_writes_reports(tmp_path: Path, no_leftovers: None) -> None:
    """`pytest scenarios/` runs the scenario against our supervisor, and --chaos-report-dir writes the reports."""
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "stop.yaml").write_text(yaml.safe_dump(STOP_STICKS))
    done = pytest_in(tmp_path, "-q", "scenarios", "--chaos-seed", "3", "--chaos-report-dir", "rep")
    assert done.returncode == 0, done.stdout
    assert "1 passed" in done.stdout
    assert (tmp_path / "rep" / "chaos-junit.xml").read_text().count('name="stop-sticks"') == 1


@pytest.mark.slow
def test_failing_scenario_reports_its_verdicts(tmp_path: Path, no_leftovers: None) -> None:
    """A scenario whose expectation does not hold fails with the verdict's message in the report."""
    wrong: dict[str, Any] = {**STOP_STICKS, "expect": [{"restarts": {"model": "m1", "count": 2}}]}
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    done = pytest_in(tmp_path, "-q", "scenarios")
    assert done.returncode == 1
    assert "FAIL restarts(m1): m1 restarted 0 times, expected exactly 2" in done.stdout
