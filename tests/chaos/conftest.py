"""Shared helpers for the chaos tests: scenario files written on the fly, and a no-leftover check."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml


@pytest.fixture
def write_scenario(tmp_path: Path) -> Any:
    """Write a scenario mapping to <tmp>/scenarios/<name>.yaml and return the path."""

    def write(data: dict[str, Any]) -> Path:
        folder = tmp_path / "scenarios"
        folder.mkdir(exist_ok=True)
        path = folder / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
def no_leftovers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After the test, no process started during it (marked through an inherited env var) is running.

    The mark keeps the check to this test's own processes: other people's tests run fakes at the same time.
    """
    mark = uuid.uuid4().hex
    monkeypatch.setenv("LLM_CHAOS_TEST_MARK", mark)
    yield
    left = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error):
            if (
                proc.info.get("status") != psutil.STATUS_ZOMBIE
                and proc.environ().get("LLM_CHAOS_TEST_MARK") == mark
                and proc.pid != os.getpid()
            ):
                left.append((proc.pid, " ".join(proc.cmdline())))
    for pid, _ in left:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert left == []
