"""Reports: JUnit names are scenario names, the HTML is self-contained with one timeline per scenario."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from chaos.checks import Verdict
from chaos.report import junit_xml, write_reports
from chaos.runner import ScenarioResult
from chaos.timeline import FaultRecord, Observation
from tests.chaos.timelines import T0, crash_loop, observation


def result(
    name: str, outcome: str, verdicts: list[Verdict], obs: Observation | None = None, story: str = "a story"
) -> ScenarioResult:
    """A finished scenario as the runner returns it."""
    return ScenarioResult(
        name,
        story,
        f"scenarios/{name}.yaml",
        42,
        outcome,
        verdicts,
        T0,
        3.5,
        message="boom" if outcome in ("error", "skipped") else "",
        observation=obs,
    )


def sample() -> list[ScenarioResult]:
    """One result of each outcome; the passed one with a recorded timeline and a fault."""
    obs = observation(crash_loop([0.5, 1.0]))
    obs = Observation(
        **{
            **{f: getattr(obs, f) for f in obs.__dataclass_fields__},
            "faults": (FaultRecord(0, "kill", "m1", "kill", T0 + 1, T0 + 2, "done", "SIGKILL"),),
        }
    )
    return [
        result(
            "good-one",
            "passed",
            [Verdict("restarts(m1)", True, "m1 restarted 2 times")],
            obs,
            story="<script>alert(1)</script> & more",
        ),
        result(
            "bad-one",
            "failed",
            [Verdict("state(m1)", False, "m1 did not reach 'failed'"), Verdict("no_orphans", True, "none left")],
        ),
        result("skipped-one", "skipped", []),
        result("broken-one", "error", []),
    ]


def test_junit_testcases_are_named_after_scenarios() -> None:
    """Each scenario is a testcase of its own name, with failure/skipped/error as its outcome says."""
    suite = ET.fromstring(junit_xml(sample()))
    assert suite.get("tests") == "4"
    assert suite.get("failures") == "1"
    assert suite.get("skipped") == "1"
    assert suite.get("errors") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["good-one", "bad-one", "skipped-one", "broken-one"]
    assert cases["good-one"].find("failure") is None
    failure = cases["bad-one"].find("failure")
    assert failure is not None
    assert failure.text == "state(m1): m1 did not reach 'failed'"
    assert cases["skipped-one"].find("skipped") is not None
    assert cases["broken-one"].find("error") is not None


def test_reports_are_written_and_self_contained(tmp_path: Path) -> None:
    """The three files are written; the HTML has no external asset or script and escapes the stories."""
    paths = write_reports(sample(), tmp_path, seed=42, command=["llm-chaos", "run"])
    assert [p.name for p in paths] == ["chaos-journal.json", "chaos-junit.xml", "chaos-report.html"]
    page = paths[2].read_text()
    assert page.count("<svg") == 1  # only the scenario with an observation has a picture
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    for external in ("<link", "src=", "@import", "url("):
        assert external not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    ET.fromstring(page[page.index("<svg") : page.index("</svg>") + 6])  # the picture is well-formed XML
    journal = json.loads(paths[0].read_text())
    assert journal["seed"] == 42
    assert journal["summary"] == {"passed": 1, "failed": 1, "skipped": 1, "error": 1}
    assert Observation.from_json(journal["scenarios"][0]["observation"]) == sample()[0].observation


def test_timeline_picture_shows_states_markers_and_faults() -> None:
    """The SVG has a band per state change, a marker per start and exit, and the fault's span and label."""
    from chaos.htmlreport import timeline_svg

    obs = sample()[0].observation
    assert obs is not None
    svg = timeline_svg(obs)
    assert svg.count('fill="#66bb6a"') == 3  # three healthy stretches
    assert svg.count("<path") == 3  # three starts
    assert svg.count("✕") == 3  # three exits
    assert ">kill</text>" in svg
    assert "0s</text>" in svg
