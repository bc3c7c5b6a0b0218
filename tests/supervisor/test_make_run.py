"""`make run PORT=N`: the Makefile passes the port to the daemon."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("make_args", "expected"), [([], None), (["PORT=9123"], "9123")])
def test_make_run_passes_port_to_the_daemon(make_args: list[str], expected: str | None) -> None:
    """`make run PORT=N` runs the daemon with `--port N`; without PORT the config's port stays."""
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "MAKEFLAGS")}
    done = subprocess.run(
        ["make", "-n", "run", *make_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=30,
    )
    line = next(x for x in done.stdout.splitlines() if "llm-supervisor run" in x)
    if expected:
        assert line.split()[-2:] == ["--port", expected]
    else:
        assert "--port" not in line
