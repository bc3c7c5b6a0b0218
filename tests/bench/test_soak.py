"""bench/soak.py, briefly: a real supervisor over 3 fake-vllm models under seeded faults, its report and exit code."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "bench" / "soak.py"


def _load_drive() -> ModuleType:
    """bench/soak_drive.py, loaded by its path: bench/ is a folder of scripts, not a package on sys.path."""
    spec = importlib.util.spec_from_file_location("soak_drive", SOAK.with_name("soak_drive.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_drive"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


drive = _load_drive()


def test_the_schedule_is_a_function_of_the_seed() -> None:
    """One seed gives one schedule; another seed another; the slow-start fault always aims at the slow model."""
    models = [f"m{i:02d}" for i in range(5)]
    first = drive.schedule(1, models, "m00", 600, 8)
    assert first == drive.schedule(1, models, "m00", 600, 8)
    assert first != drive.schedule(2, models, "m00", 600, 8)
    assert {f.kind for f in first} == set(drive.Kind)
    assert all(f.model == "m00" for f in first if f.kind is drive.Kind.SLOW_START)
    assert all(0 < f.at < 600 for f in first)
    only = drive.schedule(1, models, "m00", 600, 8, [drive.Kind.OOM, drive.Kind.RELOAD])
    assert {f.kind for f in only} == {drive.Kind.OOM, drive.Kind.RELOAD}


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_short_soak_reports_no_orphans_gaps_or_5xx(tmp_path: Path) -> None:
    """20 s over 3 models with a fault every 2 s: exit 0, faults applied, events read without gaps, no orphan."""
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(SOAK), "--models", "3", "--minutes", "0.33", "--seed", "5"]
    done = subprocess.run(
        [*argv, "--fault-every", "2", "--sample-every", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert "RSS MiB" in done.stdout
    assert "orphans   0 after shutdown" in done.stdout
    assert set(report["rss_mib"]) == {"first", "last", "max", "slope_mib_per_hour_second_half", "parts"}
    assert set(report["rss_mib"]["parts"]) == {"anon", "file", "shmem"}
    assert report["series_fields"] == ["at", "rss", "anon", "file", "shmem", "fds"]
    assert set(report["fds"]) == {"first", "last", "max"}
    assert report["samples"] >= 5
    assert len(report["series"]) == report["samples"]
    assert sum(report["faults"]["applied"].values()) >= 3
    assert report["orphans"] == 0
    assert report["marked_before_shutdown"] >= 3  # the orphan count sees live servers by their marker
    assert report["events"]["gaps"] == 0
    assert report["events"]["read"] == report["events"]["checked_up_to"] > 0
    assert report["api"]["5xx"] == 0
    assert report["api"]["requests"] > 0
    assert report["supervisor_exit"] == 0
