"""The harness treats the supervisor as a black box: `chaos` imports nothing from `supervisor` or `fake_vllm`."""

from __future__ import annotations

import ast
from pathlib import Path

CHAOS = Path(__file__).resolve().parents[2] / "chaos"


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports."""
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return names


def test_chaos_talks_to_the_supervisor_only_over_processes_and_http() -> None:
    """No module of chaos imports the supervisor or the fake, so it can judge any supervisor."""
    offenders = {
        (p.name, m)
        for p in CHAOS.glob("*.py")
        for m in imported_modules(p)
        if m.split(".")[0] in ("supervisor", "fake_vllm")
    }
    assert offenders == set()


def test_checks_are_pure() -> None:
    """checks.py imports no IO: no asyncio, httpx, psutil, os, subprocess or time."""
    assert not imported_modules(CHAOS / "checks.py") & {"asyncio", "httpx", "psutil", "os", "subprocess", "time"}
