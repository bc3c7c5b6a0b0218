"""Reports of a run: a JSON journal (everything, replayable with its seed), JUnit XML, and HTML.

The JUnit test case names are the scenario names, so CI systems line up the same scenario across runs. The
HTML report is one self-contained file (inline CSS and SVG, no scripts or external assets), readable from
an artifact store without a server.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chaos.htmlreport import html_report
from chaos.runner import ScenarioResult
from chaos.traffic import Tally, tally


def request_tally(result: ScenarioResult) -> Tally | None:
    """The scenario's requests sent, succeeded and failed; None for a scenario that sent none."""
    if result.observation is None or not result.observation.requests:
        return None
    return tally(result.observation.requests)


def journal(results: list[ScenarioResult], *, seed: int, command: list[str]) -> dict[str, Any]:
    return {
        "tool": "llm-chaos",
        "seed": seed,
        "replay": f"llm-chaos run ... --seed {seed}",
        "command": command,
        "written_at": time.time(),
        "summary": summary(results),
        "scenarios": [
            {
                "name": r.name,
                "story": r.story,
                "source": r.source,
                "seed": r.seed,
                "outcome": r.outcome,
                "message": r.message,
                "started": r.started,
                "duration": r.duration,
                "workdir": r.workdir,
                "verdicts": [asdict(v) for v in r.verdicts],
                "requests": _counts(request_tally(r)),
                "observation": r.observation.to_json() if r.observation else None,
            }
            for r in results
        ],
    }


def _counts(counts: Tally | None) -> dict[str, int] | None:
    return None if counts is None else {"sent": counts.sent, "succeeded": counts.succeeded, "failed": counts.failed}


def summary(results: list[ScenarioResult]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return counts


def junit_xml(results: list[ScenarioResult]) -> str:
    counts = summary(results)
    suite = ET.Element(
        "testsuite",
        name="llm-chaos",
        tests=str(len(results)),
        failures=str(counts["failed"]),
        errors=str(counts["error"]),
        skipped=str(counts["skipped"]),
        time=f"{sum(r.duration for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname="llm-chaos", name=r.name, time=f"{r.duration:.3f}", file=r.source
        )
        requests = request_tally(r)
        if requests is not None:
            properties = ET.SubElement(case, "properties")
            for key, value in (_counts(requests) or {}).items():
                ET.SubElement(properties, "property", name=f"requests_{key}", value=str(value))
        failed = [v for v in r.verdicts if v.passed is False]
        if r.outcome == "failed":
            node = ET.SubElement(case, "failure", message="; ".join(v.check for v in failed)[:500])
            node.text = "\n".join(f"{v.check}: {v.message}" for v in failed)
        elif r.outcome == "error":
            ET.SubElement(case, "error", message=r.message[:500]).text = r.message
        elif r.outcome == "skipped":
            ET.SubElement(case, "skipped", message=r.message[:500])
        out = [f"seed {r.seed}"] + ([f"requests: {requests.describe()}"] if requests else [])
        out += [f"[{_mark(v.passed)}] {v.check}: {v.message}" for v in r.verdicts]
        ET.SubElement(case, "system-out").text = "\n".join(out)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _mark(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "skip"}[passed]


def write_reports(results: list[ScenarioResult], report_dir: Path, *, seed: int, command: list[str]) -> list[Path]:
    """Write chaos-journal.json, chaos-junit.xml and chaos-report.html; returns their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = [report_dir / "chaos-journal.json", report_dir / "chaos-junit.xml", report_dir / "chaos-report.html"]
    paths[0].write_text(json.dumps(journal(results, seed=seed, command=command), indent=1), encoding="utf-8")
    paths[1].write_text(junit_xml(results), encoding="utf-8")
    paths[2].write_text(html_report(results, seed=seed), encoding="utf-8")
    return paths
