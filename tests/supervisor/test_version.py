"""The version is written once, in pyproject.toml; the package, the CLI and the API's OpenAPI all say it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from fakes import FakeSupervisor

import supervisor
from supervisor.api.app import create_app

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def test_the_package_reads_its_version_from_the_installed_metadata() -> None:
    """supervisor.__version__ is pyproject's version, not a second copy that could drift."""
    assert supervisor.__version__ == VERSION


def test_the_cli_prints_the_version() -> None:
    """`llm-supervisor --version` prints the program name and the version, and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli.main", "--version"], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"llm-supervisor {VERSION}")


def test_the_openapi_document_carries_the_version(tmp_path: Path) -> None:
    """The API's /openapi.json names the same version."""
    app = create_app(FakeSupervisor(["m"], tmp_path / "logs"), token=None)
    assert app.openapi()["info"]["version"] == VERSION


def test_the_package_ships_a_py_typed_marker() -> None:
    """Type checkers of projects that import supervisor see its annotations (PEP 561)."""
    assert (ROOT / "supervisor" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["supervisor"]
