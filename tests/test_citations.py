"""The repository explains itself: citations point into docs/design/, and every one of them resolves.

Code, tests, scenarios and docs cite the design documents as `docs/design/defects.md #9` or
`docs/design/contract.md section 6`. Nothing may send a reader to notes outside the repository, a cited item
or section must exist, a path into docs/ must name a file, and each defect the docs call guarded must name
tests that exist and at least two scenarios.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design"
DEFECTS = DESIGN / "defects.md"
SCANNED = ("supervisor/", "chaos/", "fake_vllm/", "tests/", "docs/", "scenarios/", "bench/", "ci/", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".sh", ".toml", ".txt", ".js", ".html", ".css", ""}

# Names of the notes that live outside the repository. Built from parts so that this file does not cite them.
_OUTSIDE = ["PRIOR" + "_ART", "CONTRACT" + " section", "CONTRACT" + ".md"]
_OUTSIDE += [name + ".md" for name in ("ARCHITECTURE", "VLLM", "TESTING", "STYLE")]
_OUTSIDE += ["shared" + "/design"]
OUTSIDE_NOTES = re.compile("|".join(re.escape(n) for n in _OUTSIDE))

# `docs/design/defects.md #9`, `docs/design/contract.md section 6`, `... sections 2 and 7`.
CITATION = re.compile(
    r"docs/design/(?P<file>[\w.-]+\.md)\s+(?:#(?P<item>\d+)|sections?\s+(?P<sections>\d+(?:(?:,\s*|\s+and\s+)\d+)*))"
)
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*?\.md\b")
MARKDOWN_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
TEST_REF = re.compile(r"`(?P<file>tests/[\w/.-]+\.py)::(?P<name>\w+)`")
SCENARIO_REF = re.compile(r"`(?P<path>scenarios/[\w/.-]+\.ya?ml)`")
ITEM_START = re.compile(r"^(?P<n>\d+)\. ", re.MULTILINE)
STATUSES = ("guarded", "guarded by tests only", "not yet guarded")


@cache
def repository_files() -> tuple[str, ...]:
    """The scanned files git knows of: tracked, plus new ones not ignored (so a new file cannot slip by)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SCANNED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return tuple(sorted({f for f in listed if (ROOT / f).is_file() and Path(f).suffix in TEXT_SUFFIXES}))


def read(relative: str) -> str:
    return (ROOT / relative).read_text(encoding="utf-8", errors="replace")


def where(relative: str, text: str, offset: int) -> str:
    return f"{relative}:{text.count(chr(10), 0, offset) + 1}"


def headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]


def numbered_items(path: Path) -> set[int]:
    """The numbers of a document's items: `n. ...` list items and `## n. ...` headings."""
    text = path.read_text(encoding="utf-8")
    found = {int(m["n"]) for m in ITEM_START.finditer(text)}
    return found | {int(m[1]) for h in headings(path) if (m := re.match(r"(\d+)\.\s", h))}


def section_numbers(path: Path) -> set[int]:
    return {int(m[1]) for h in headings(path) if (m := re.match(r"(\d+)\.\s", h))}


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_nothing_cites_notes_outside_the_repository() -> None:
    """No file of the repository sends its reader to design notes kept outside it."""
    found = [
        f"{where(f, text, m.start())}: {m.group()}"
        for f in repository_files()
        for text in [read(f)]
        for m in OUTSIDE_NOTES.finditer(text)
    ]
    assert found == [], "cite docs/design/ instead:\n" + "\n".join(found)


def test_every_design_citation_resolves() -> None:
    """`docs/design/<file>.md #n` names an existing item, `... section n` an existing numbered section."""
    problems = []
    for f in repository_files():
        text = read(f)
        for m in CITATION.finditer(text):
            target = DESIGN / m["file"]
            at = f"{where(f, text, m.start())}: {m.group()}"
            if not target.is_file():
                problems.append(f"{at}: no such file")
            elif m["item"] is not None and int(m["item"]) not in numbered_items(target):
                problems.append(f"{at}: no item {m['item']}")
            elif m["sections"] is not None:
                missing = [n for n in re.findall(r"\d+", m["sections"]) if int(n) not in section_numbers(target)]
                if missing:
                    problems.append(f"{at}: no section {', '.join(missing)}")
    assert problems == [], "\n".join(problems)


def test_every_docs_path_names_a_file() -> None:
    """A path like docs/api.md written anywhere in the repository names a file that exists."""
    missing = [
        f"{where(f, text, m.start())}: {m.group()}"
        for f in repository_files()
        for text in [read(f)]
        for m in DOCS_PATH.finditer(text)
        if not (ROOT / m.group()).is_file()
    ]
    assert missing == [], "\n".join(missing)


def test_relative_links_in_the_docs_resolve() -> None:
    """Every relative Markdown link in README.md and docs/ reaches a file, and a heading when it names one."""
    problems = []
    for f in repository_files():
        if not (f == "README.md" or f.startswith("docs/")) or not f.endswith(".md"):
            continue
        text = read(f)
        for m in MARKDOWN_LINK.finditer(text):
            target = m["target"]
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path, _, fragment = target.partition("#")
            resolved = (ROOT / f).parent / path
            at = f"{where(f, text, m.start())}: {target}"
            if not resolved.exists():
                problems.append(f"{at}: no such file")
            elif fragment and resolved.suffix == ".md" and fragment not in {anchor(h) for h in headings(resolved)}:
                problems.append(f"{at}: no heading with that anchor")
    assert problems == [], "\n".join(problems)


# --- docs/design/defects.md ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    number: int
    status: str
    tests: tuple[tuple[str, str], ...]
    scenarios: tuple[str, ...]


def defects() -> list[Defect]:
    text = DEFECTS.read_text(encoding="utf-8")
    starts = list(ITEM_START.finditer(text))
    found = []
    for m, end in zip(starts, [*starts[1:], None], strict=True):
        body = text[m.start() : end.start() if end else len(text)]
        status = re.search(r"^\s+- Status: (guarded by tests only|not yet guarded|guarded)\b", body, re.MULTILINE)
        tests_line = re.search(r"^\s+- Tests: (.*?)(?=^\s+- |\Z)", body, re.MULTILINE | re.DOTALL)
        scenarios_line = re.search(r"^\s+- Scenarios: (.*?)(?=^\s+- |^\S|\Z)", body, re.MULTILINE | re.DOTALL)
        found.append(
            Defect(
                int(m["n"]),
                status[1] if status else "",
                tuple((t["file"], t["name"]) for t in TEST_REF.finditer(tests_line[1] if tests_line else "")),
                tuple(s["path"] for s in SCENARIO_REF.finditer(scenarios_line[1] if scenarios_line else "")),
            )
        )
    return found


def test_defects_are_one_list_numbered_from_1() -> None:
    """Items are numbered 1, 2, 3, ... once each, so `#n` means one defect for good; each has a status."""
    items = defects()
    assert [d.number for d in items] == list(range(1, len(items) + 1))
    assert len(items) >= 31
    assert [d.number for d in items if d.status not in STATUSES] == []


def test_each_guarded_defect_names_two_scenarios_that_run_without_docker() -> None:
    """A guarded defect is caught by at least two scenarios of the catalogue (container ones come on top)."""
    problems = []
    for d in defects():
        missing = [s for s in d.scenarios if not (ROOT / s).is_file()]
        if missing:
            problems.append(f"#{d.number}: no such scenario {missing}")
        local = {s for s in d.scenarios if not s.startswith("scenarios/docker/")}
        if d.status == "guarded" and len(local) < 2:
            problems.append(f"#{d.number}: guarded, but names {len(local)} scenario(s) outside scenarios/docker/")
        if d.status.startswith("guarded") and not d.tests:
            problems.append(f"#{d.number}: guarded, but names no test")
    assert problems == [], "\n".join(problems)


def functions_in(relative: str) -> set[str]:
    tree = ast.parse(read(relative))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_each_test_a_defect_names_exists() -> None:
    """Every `tests/...py::test_name` in docs/design/defects.md is a test function in that file."""
    missing = [
        f"#{d.number}: {file}::{name}"
        for d in defects()
        for file, name in d.tests
        if not (ROOT / file).is_file() or name not in functions_in(file)
    ]
    assert missing == [], "\n".join(missing)
