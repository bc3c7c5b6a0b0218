"""Reports of scenarios with load count requests sent, succeeded and failed, and the HTML timeline marks each
failed request; the resilience table is measured from a run and rendered with its sources."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from chaos.checks import Verdict
from chaos.htmlreport import timeline_svg
from chaos.report import junit_xml, write_reports
from chaos.runner import ScenarioResult
from chaos.scenario import parse_scenario
from chaos.table import DYNAMO_SOURCE, measure, recovered_at, render
from chaos.timeline import Observation
from tests.chaos.timelines import T0, ev, fault, observation, req

FAILED_RED = 'fill="#c62828" opacity="0.7"'


def replica_restart() -> Observation:
    """Two replicas; replica 1 killed at 5 s, healthy again at 6.5 s; 4 requests, one failed during it."""
    events = [
        ev(0.5, "spawned", "starting", replica=0),
        ev(0.6, "spawned", "starting", replica=1),
        ev(1.0, "healthy", "healthy", replica=0),
        ev(1.5, "healthy", "healthy", replica=1),
        ev(5.0, "exited", "backoff", "signal 9", "crash", replica=1),
        ev(5.2, "spawned", "starting", replica=1),
        ev(6.5, "healthy", "healthy", replica=1),
    ]
    requests = [
        req(2.0, 0.1),
        req(3.0, 0.3),
        req(4.9, 0.6, stream=True, error_event="the model server's stream broke"),
        req(5.5, 1.2),
        req(8.0, 0.1),
    ]
    return observation(events, steady=2.0, faults_end=5.0, requests=requests, faults=[fault(5.0)])


def result(obs: Observation | None, outcome: str = "passed") -> ScenarioResult:
    verdicts = [Verdict("requests(m1)", outcome == "passed", "m1 requests: ...")]
    return ScenarioResult(
        "kill-one", "a story", "scenarios/gateway/kill-one.yaml", 7, outcome, verdicts, T0, 9.0, "", obs
    )


def test_the_journal_and_junit_count_requests(tmp_path: Path) -> None:
    paths = write_reports([result(replica_restart()), result(None, "error")], tmp_path, seed=7, command=["x"])
    journal = json.loads(paths[0].read_text())
    assert journal["scenarios"][0]["requests"] == {"sent": 5, "succeeded": 4, "failed": 1}
    assert journal["scenarios"][1]["requests"] is None
    loaded = Observation.from_json(journal["scenarios"][0]["observation"])
    assert loaded.requests == replica_restart().requests
    case = ET.fromstring(junit_xml([result(replica_restart())])).find("testcase")
    assert case is not None
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties == {"requests_sent": "5", "requests_succeeded": "4", "requests_failed": "1"}
    out = case.find("system-out")
    assert out is not None
    assert out.text is not None
    assert "requests: 5 sent, 4 succeeded, 1 failed (error event" in out.text


def test_the_html_counts_requests_and_marks_each_failed_one(tmp_path: Path) -> None:
    svg = timeline_svg(replica_restart())
    assert ">requests</text>" in svg
    assert svg.count(FAILED_RED) == 1
    assert "sent at +4.90s, 0.60s: error event" in svg
    ET.fromstring(svg)
    page = write_reports([result(replica_restart())], tmp_path, seed=7, command=["x"])[2].read_text()
    assert "<td>5 sent, 1 failed</td>" in page
    assert "Requests: 5 sent, 4 succeeded, 1 failed" in page
    assert ">requests</text>" not in timeline_svg(observation([ev(0.5, "spawned", "starting")]))


def test_recovery_is_when_every_replica_is_healthy_again() -> None:
    obs = replica_restart()
    assert recovered_at(obs, "m1", 2, T0 + 5.0) == T0 + 6.5
    assert recovered_at(obs, "m1", 3, T0 + 5.0) is None  # a third replica never reported healthy
    assert recovered_at(obs, "m1", 1, T0 + 0.9) == T0 + 6.5


def test_a_row_measures_added_latency_against_the_steady_state_before_the_fault() -> None:
    scenario = parse_scenario(
        {
            "name": "kill-one",
            "title": "kill -9 of one of 2 replicas",
            "story": "s",
            "target": {"models": {"m1": {"replicas": 2}}},
            "load": {"model": "m1", "concurrency": 8, "stream": "both"},
            "expect": [{"requests": {"model": "m1", "failed_max": 0}}],
        }
    )
    row = measure(scenario, result(replica_restart()))
    assert (row.failure, row.replicas, row.load, row.sent, row.failed) == (
        "kill -9 of one of 2 replicas",
        2,
        "8 clients, streamed + plain",
        5,
        1,
    )
    assert row.before == (0.1, 0.3)  # the two requests that ended before the fault
    assert row.during == (0.6, 1.2)  # in flight from the fault (5 s) until recovery (6.5 s)
    assert row.added is not None
    assert [round(v, 3) for v in row.added] == [0.5, 0.9]
    assert row.recovery == 1.5
    text = render(
        [row], seed=7, command="llm-chaos table --out docs/resilience.md", when="2026-01-01", machine="2 CPUs"
    )
    row_text = "| kill -9 of one of 2 replicas | 2 | 8 clients, streamed + plain | 5 | 1 | 100 / 300 ms |"
    assert f"{row_text} +500 / +900 ms | 1.5 s | `kill-one` |" in text
    assert "Generated by `llm-chaos table --out docs/resilience.md` on 2026-01-01 (seed 7; 2 CPUs)" in text
    assert DYNAMO_SOURCE in text
    assert "| NVIDIA Dynamo | 1 replica | decode worker killed | 800 | 280 |" in text
    assert "| NVIDIA Dynamo | 4 replicas | decode worker killed | 800 | 4 |" in text


def test_a_model_that_never_recovers_and_a_failed_run_say_so() -> None:
    scenario = parse_scenario(
        {
            "name": "kill-one",
            "story": "s",
            "target": {"models": {"m1": {}}},
            "load": {"model": "m1"},
            "expect": [{"requests": {"model": "m1", "failed_max": 0}}],
        }
    )
    down = observation(
        [ev(0.5, "spawned", "starting"), ev(1.0, "healthy", "healthy"), ev(5.0, "failed", "failed")],
        requests=[req(5.5, 0.5, served_by="m2")],
        faults=[fault(5.0)],
    )
    row = measure(scenario, result(down, "failed"))
    assert (row.recovery, row.before, row.failure) == (None, None, "kill-one")
    assert "no request ended before the fault; all of them took 500 / 500 ms (p50 / p99)" in row.note
    assert "m1 was never fully healthy again" in row.note
    text = render([row], seed=1, command="llm-chaos table", when="d", machine="m")
    assert "| n/a | n/a | not recovered | `kill-one` (FAILED) |" in text


def test_each_replica_gets_its_own_row() -> None:
    """Replica 1's restart shows on its own row (the model as a whole stayed healthy on replica 0)."""
    svg = timeline_svg(replica_restart())
    assert ">m1 #0</text>" in svg
    assert ">m1 #1</text>" in svg
    assert svg.count("<path") == 3  # two first starts and replica 1's restart
    assert svg.count('fill="#fdd835"') == 1  # replica 1's backoff band
    assert ">m1</text>" not in svg
    assert ">m1</text>" in timeline_svg(observation([ev(0.5, "spawned", "starting")]))
