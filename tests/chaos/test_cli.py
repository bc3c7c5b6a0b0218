"""`llm-chaos` exit codes and modes: list, validate, --dry-run touches nothing, run writes its reports."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from chaos import cli
from chaos.cli import main
from chaos.scenario import load_scenario, scenario_files

STOP_STICKS = {
    "name": "stop-sticks",
    "story": "An operator stops a model and it stays stopped.",
    "target": {"models": {"m1": {"restart_policy": "always", "restart_delay": 0.2, "startup_probe_interval": 0.2}}},
    "steady_state": [{"healthy": {"model": "m1", "within": 20}}],
    "faults": [{"at": 0.2, "action": "api", "target": {"model": "m1"}, "operation": "stop"}],
    "expect": [
        {"state": {"model": "m1", "is": "stopped", "within": 5, "stays": True}},
        {"restarts": {"model": "m1", "count": 0}},
        {"no_orphans": True},
    ],
    "duration": 1,
}


def test_list_and_validate_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    """`list` names every catalogue scenario with its story; `validate` exits 0 on it."""
    root = Path(__file__).resolve().parents[2] / "scenarios"
    assert main(["list", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "crash-loop-reaches-failed" in listing
    stories = [" ".join(load_scenario(f).story.split()) for f in scenario_files([root])]
    assert stories
    assert all(story in listing for story in stories)
    assert main(["validate", str(root)]) == 0


def test_a_closed_stdout_ends_list_quietly_with_141() -> None:
    """`llm-chaos list | head`: a reader that is gone ends the command with 141 and no traceback."""
    root = Path(__file__).resolve().parents[2] / "scenarios"
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all, before the command writes: its first write (or flush) fails
    try:
        result = subprocess.run(
            [sys.executable, "-m", "chaos.cli", "list", str(root)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == ""


def test_invalid_scenario_exits_2_with_its_path(write_scenario: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown key makes validate and run exit 2, printing file and key path."""
    path = write_scenario({**STOP_STICKS, "name": "typo", "expct": []})
    assert main(["validate", str(path)]) == 2
    assert "expct: unknown key" in capsys.readouterr().err
    assert main(["run", str(path), "--dry-run"]) == 2


def test_duplicate_names_are_invalid(write_scenario: Any, tmp_path: Path) -> None:
    """Two files with one scenario name would collide in JUnit, so they are refused."""
    write_scenario(STOP_STICKS)
    other = tmp_path / "scenarios" / "copy.yaml"
    other.write_text((tmp_path / "scenarios" / "stop-sticks.yaml").read_text())
    assert main(["validate", str(tmp_path / "scenarios")]) == 2


def test_dry_run_prints_the_plan_and_starts_nothing(
    write_scenario: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run describes target, faults and expectations, and never runs the supervisor command."""
    marker = tmp_path / "started"
    probe = tmp_path / "probe.py"
    probe.write_text(f"open({str(marker)!r}, 'w').close()\n")
    path = write_scenario(STOP_STICKS)
    code = main(
        [
            "run",
            str(path),
            "--dry-run",
            "--seed",
            "5",
            "--supervisor-cmd",
            f"{sys.executable} {probe}",
            "--report-dir",
            str(tmp_path / "rep"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "at +0.2s: api target={'model': 'm1'}, operation=stop" in out
    assert "expect state" in out
    assert not marker.exists()
    assert not (tmp_path / "rep").exists()


def test_dry_run_against_a_remote_says_what_would_be_skipped(
    write_scenario: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Process actions on a remote target without allow_process_actions are shown as skipped."""
    data = {**STOP_STICKS, "faults": [{"at": 1, "action": "kill", "target": {"model": "m1"}}]}
    path = write_scenario(data)
    assert main(["run", str(path), "--dry-run", "--supervisor", "http://10.1.2.3:8099"]) == 0
    assert "would be SKIPPED: process actions need remote.allow_process_actions" in capsys.readouterr().out


def test_run_with_a_broken_supervisor_exits_1_with_reports(
    write_scenario: Any, tmp_path: Path, no_leftovers: None
) -> None:
    """A supervisor command that dies at once is an error: exit 1, and the JUnit file says error."""
    path = write_scenario(STOP_STICKS)
    code = main(
        [
            "run",
            str(path),
            "--supervisor-cmd",
            f"{sys.executable} -c 'raise SystemExit(3)'",
            "--report-dir",
            str(tmp_path / "rep"),
            "--seed",
            "9",
        ]
    )
    assert code == 1
    case = ET.parse(tmp_path / "rep" / "chaos-junit.xml").getroot().find("testcase")
    assert case is not None
    error = case.find("error")
    assert error is not None
    assert "exited with 3" in (error.get("message") or "")


@pytest.mark.slow
def test_run_passes_against_our_supervisor(write_scenario: Any, tmp_path: Path, no_leftovers: None) -> None:
    """A real run against this project's supervisor exits 0 and records its seed in the journal."""
    path = write_scenario(STOP_STICKS)
    assert main(["run", str(path), "--report-dir", str(tmp_path / "rep"), "--seed", "1234"]) == 0
    assert '"seed": 1234' in (tmp_path / "rep" / "chaos-journal.json").read_text()


def test_progress_to_a_closed_stderr_is_dropped_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """`llm-chaos run ... 2>&1 | head`: once the reader is gone, progress lines vanish; the run goes on."""

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stderr", ClosedPipe())
    cli._say("[1/1] crash-loop-reaches-failed: healthy")  # must not raise


def test_gateway_goes_with_a_remote_supervisor(write_scenario: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A local target's gateway is the harness's own: --gateway alone is a usage error (2)."""
    path = write_scenario(STOP_STICKS)
    assert main(["run", str(path), "--gateway", "http://127.0.0.1:8000", "--dry-run"]) == 2
    assert "--gateway goes with --supervisor" in capsys.readouterr().err


def test_table_needs_scenarios_with_load(write_scenario: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`table` over scenarios that send no request has nothing to measure: 2, and it starts nothing."""
    path = write_scenario(STOP_STICKS)
    assert main(["table", str(path)]) == 2
    assert "no scenario with load" in capsys.readouterr().err


def test_dry_run_of_a_load_scenario_names_the_gateway(write_scenario: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data = {**STOP_STICKS, "name": "with-load", "load": {"model": "m1", "stream": True}}
    data["expect"] = [*STOP_STICKS["expect"], {"requests": {"model": "m1", "failed_max": 0}}]
    path = write_scenario(data)
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "the supervisor's gateway on a free port" in capsys.readouterr().out
    assert main(["run", str(path), "--dry-run", "--supervisor", "http://10.0.0.1:8099"]) == 0
    assert "[would be SKIPPED: no --gateway URL]" in capsys.readouterr().out
    remote = ["--supervisor", "http://10.0.0.1:8099", "--gateway", "http://10.0.0.1:8000"]
    assert main(["run", str(path), "--dry-run", *remote]) == 0
    assert "via http://10.0.0.1:8000" in capsys.readouterr().out
