"""Imports go the way docs/design/architecture.md says, read from the source so a wrong import fails here.

The rules come from the packages, not from lists of modules: each package of `supervisor/` has a layer, and
a module may import its own package or a lower layer. The core (layer 0) imports nothing of the project
and nothing outside the standard library; adapters (layer 1) import only the core; the loop imports
those; the API and then the CLI sit on top.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "core": 0,
    "config": 1,
    "runtime": 1,
    "store": 1,
    "probe": 1,
    "loop": 2,
    "api": 3,
    "gateway": 3,  # beside the API: both read the fleet, neither knows the other
    "cli": 4,
}
# Third-party packages a layer may use beyond the standard library: the core uses none.
THIRD_PARTY_ALLOWED_IN_CORE: set[str] = set()
# The core does no IO and reads no clock; only core.clock, the seam the loop asks for time, touches them.
IO_MODULES = {"asyncio", "subprocess", "socket", "time", "os", "sqlite3"}
DOCKER_SDK_PACKAGE = "runtime"  # `docker` is an optional extra: only the docker runtime may import it


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    found |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return found - {"__future__"}


def modules(package: str) -> dict[str, set[str]]:
    """Module name inside the package (e.g. 'runtime.process') -> what it imports."""
    base = ROOT / package
    return {str(p.relative_to(base).with_suffix("")).replace("/", "."): imports(p) for p in base.rglob("*.py")}


def package_of(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def violations(tree: dict[str, set[str]]) -> list[str]:
    """Every import in `tree` (the supervisor's modules) that breaks the layer rules, in words."""
    found = []
    for module, imported in sorted(tree.items()):
        if module == "__init__":
            continue
        package = package_of(module)
        if package not in LAYERS:
            found.append(f"{module}: package {package!r} has no layer (add it to LAYERS)")
            continue
        for name in sorted(imported):
            if name.startswith("supervisor."):
                target = package_of(name.removeprefix("supervisor."))
                layer = LAYERS.get(target)
                if target != package and (layer is None or layer >= LAYERS[package]):
                    found.append(f"{module} imports {name}: layer {LAYERS[package]} may not import layer {layer}")
            elif LAYERS[package] == 0:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in THIRD_PARTY_ALLOWED_IN_CORE:
                    found.append(f"{module} imports {name}: the core uses the standard library only")
    return found


SUPERVISOR = modules("supervisor")


def test_every_import_in_the_supervisor_follows_the_layers() -> None:
    """No module imports a package of its own layer or above, and the core imports only the standard library."""
    assert violations(SUPERVISOR) == []


@pytest.mark.parametrize(
    ("module", "imported", "complaint"),
    [
        ("core.machine", "supervisor.loop.owner", "layer 0 may not import layer 2"),
        ("store.journal", "supervisor.runtime.base", "layer 1 may not import layer 1"),
        ("loop.fleet", "supervisor.api.app", "layer 2 may not import layer 3"),
        ("api.app", "supervisor.cli.main", "layer 3 may not import layer 4"),
        ("core.policy", "httpx", "standard library only"),
        ("frontdoor.router", "supervisor.core.states", "has no layer"),
    ],
)
def test_the_layer_check_catches_an_upward_import(module: str, imported: str, complaint: str) -> None:
    """Added to the real tree, one wrong import (or a package nobody placed) is reported by name."""
    tree = {name: set(found) for name, found in SUPERVISOR.items()}
    tree.setdefault(module, set()).add(imported)
    found = violations(tree)
    assert len(found) == 1
    assert found[0].startswith(module)
    assert complaint in found[0]


def test_the_core_does_no_io_and_reads_no_clock() -> None:
    """Only the clock module of the core may touch asyncio or time; nothing in the core opens files or sockets."""
    core = {m: imported for m, imported in SUPERVISOR.items() if package_of(m) == "core"}
    offenders = {m: imported & IO_MODULES for m, imported in core.items() if imported & IO_MODULES}
    assert set(offenders) <= {"core.clock"}
    assert offenders.get("core.clock", set()) <= {"asyncio", "time"}


def test_every_supervisor_package_has_a_layer() -> None:
    """A new folder under supervisor/ must be placed in a layer before its imports can be checked."""
    folders = {p.name for p in (ROOT / "supervisor").iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS)
    assert [m for m in SUPERVISOR if "." not in m] == ["__init__"]


def test_the_docker_sdk_stays_inside_the_docker_runtime() -> None:
    """`docker` is an optional extra: only supervisor/runtime/docker*.py may import it."""
    users = {m for m, imported in SUPERVISOR.items() if any(i.split(".")[0] == "docker" for i in imported)}
    assert users
    assert all(package_of(m) == DOCKER_SDK_PACKAGE and m.split(".")[1].startswith("docker") for m in users)


@pytest.mark.parametrize(
    ("package", "forbidden"), [("supervisor", {"chaos", "fake_vllm"}), ("fake_vllm", {"supervisor", "chaos"})]
)
def test_packages_stay_apart(package: str, forbidden: set[str]) -> None:
    """The supervisor knows nothing of the harness or the fake; the fake imitates vLLM and nothing else."""
    offenders = {(m, i) for m, imported in modules(package).items() for i in imported if i.split(".")[0] in forbidden}
    assert offenders == set()
