"""Imports go the way ARCHITECTURE.md says: a pure core, adapters around it, the API and CLI on the outside,
and a fake vLLM that knows nothing of the supervisor. Read from the source, so a wrong import fails here."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PURE_CORE = {
    "policy",
    "machine",
    "machine_types",
    "diagnosis",
    "status",
    "clock",
    "config",
    "config_files",
    "config_messages",
}
PARSING = {"config", "config_files", "config_messages"}  # may use pydantic and yaml to read the config
ADAPTERS = {"runtime.process", "probe", "journal", "logs", "redact"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    found |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return found - {"__future__"}


def modules(package: str) -> dict[str, set[str]]:
    """Module name inside the package (e.g. 'runtime.process') -> what it imports."""
    base = ROOT / package
    return {str(p.relative_to(base).with_suffix("")).replace("/", "."): imports(p) for p in base.rglob("*.py")}


SUPERVISOR = modules("supervisor")


def internal(imported: set[str]) -> set[str]:
    return {m.removeprefix("supervisor.") for m in imported if m.startswith("supervisor.")}


@pytest.mark.parametrize("module", sorted(PURE_CORE))
def test_pure_core_imports_only_the_standard_library_and_itself(module: str) -> None:
    """The decision core does no IO: stdlib (and pydantic/yaml for parsing the config) plus core modules."""
    imported = SUPERVISOR[module]
    third_party = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names and "supervisor" not in m}
    allowed = {"pydantic", "pydantic_core", "yaml"} if module in PARSING else set()
    assert {m.split(".")[0] for m in third_party} <= allowed
    assert internal(imported) <= PURE_CORE | {"runtime.base"}
    assert not imported & {"asyncio", "subprocess", "socket", "time"} or module == "clock"


@pytest.mark.parametrize("module", sorted(ADAPTERS))
def test_adapters_never_import_each_other_or_the_loop(module: str) -> None:
    """An adapter depends on core types only; the loop wires adapters together."""
    assert not internal(SUPERVISOR[module]) & (ADAPTERS - {"redact"} | {"supervisor", "owner", "api", "cli"})


def test_nothing_imports_the_cli_and_only_the_daemon_serves_the_api() -> None:
    """The entry points sit on the outside: no module imports cli, and only daemon imports api."""
    assert [m for m, imported in SUPERVISOR.items() if "cli" in internal(imported)] == []
    assert [m for m, imported in SUPERVISOR.items() if "api" in internal(imported)] == ["daemon"]


def test_the_docker_sdk_stays_inside_the_docker_runtime() -> None:
    """`docker` is an optional extra: only supervisor/runtime/docker*.py may import it."""
    users = {m for m, imported in SUPERVISOR.items() if any(i.split(".")[0] == "docker" for i in imported)}
    assert users <= {"runtime.docker", "runtime.docker_run", "runtime.docker_spec", "runtime.docker_streams"}


@pytest.mark.parametrize(
    ("package", "forbidden"), [("supervisor", {"chaos", "fake_vllm"}), ("fake_vllm", {"supervisor", "chaos"})]
)
def test_packages_stay_apart(package: str, forbidden: set[str]) -> None:
    """The supervisor knows nothing of the harness or the fake; the fake imitates vLLM and nothing else."""
    offenders = {(m, i) for m, imported in modules(package).items() for i in imported if i.split(".")[0] in forbidden}
    assert offenders == set()
