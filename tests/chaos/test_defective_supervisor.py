"""The catalogue catches real defects in a real supervisor process, not only in recorded timelines.

Each test runs one catalogue scenario against this project's supervisor with one known supervision defect
(docs/design/defects.md) patched in (through `--supervisor-cmd`, the way a team holds another supervisor to
the catalogue) and expects the run to fail with a verdict that names the problem.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from chaos.cli import main

CATALOGUE = Path(__file__).resolve().parents[2] / "scenarios"

# Each defect is a few lines run before the supervisor's own CLI.
DEFECTS = {
    # supervisord's kind of backoff: it never grows.
    "constant-backoff": (
        "from supervisor.core import policy\npolicy.Backoff.base_delay = lambda self, attempt: self.initial\n"
    ),
    # Only the parent is signalled, and nobody waits for the rest of the group (its engine children live on).
    "parent-only-kill": (
        "import os\nfrom supervisor.runtime import process\n"
        "process.ProcessRun._signal_group = lambda self, sig: os.kill(self._pgid, sig)\n"
        "async def gone(pgid):\n    return None\n"
        "process.wait_group_gone = gone\n"
    ),
}


def defective(tmp_path: Path, defect: str) -> str:
    script = tmp_path / f"{defect}.py"
    script.write_text(DEFECTS[defect] + "import sys\nfrom supervisor.cli.main import main\nsys.exit(main())\n")
    return f"{sys.executable} {script}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scenario", "defect", "failing_check"),
    [
        ("backoff-timing", "constant-backoff", "backoff_delays"),
        ("orphan-engine-children", "parent-only-kill", "no_orphans"),
    ],
)
def test_a_defective_supervisor_fails_the_catalogue_scenario(
    tmp_path: Path, no_leftovers: None, scenario: str, defect: str, failing_check: str
) -> None:
    """The scenario that guards against a defect fails, naming it, when the supervisor has that defect."""
    reports = tmp_path / "reports"
    code = main(
        [
            "run",
            str(CATALOGUE / f"{scenario}.yaml"),
            "--supervisor-cmd",
            defective(tmp_path, defect),
            "--report-dir",
            str(reports),
            "--seed",
            "7",
        ]
    )
    assert code == 1
    journal = json.loads((reports / "chaos-journal.json").read_text())
    failed = [v for result in journal["scenarios"] for v in result["verdicts"] if v["passed"] is False]
    assert any(v["check"].startswith(failing_check) for v in failed), failed
