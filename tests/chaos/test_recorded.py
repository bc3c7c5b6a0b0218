"""Timelines recorded from this project's supervisor pass their scenarios; the same recordings with one
defect edited in fail, as the judging of a defective supervisor would."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from chaos.checks import judge
from chaos.scenario import load_scenario
from chaos.timeline import Event, Observation

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


def recorded(name: str) -> tuple[Observation, Path]:
    """A recorded observation and its scenario file."""
    data = json.loads((DATA / f"recorded-{name}.json").read_text())
    return Observation.from_json(data["observation"]), ROOT / data["scenario"]


def failures(obs: Observation, scenario_path: Path) -> dict[str, str]:
    """check -> message of every failed verdict."""
    return {v.check: v.message for v in judge(load_scenario(scenario_path), obs) if v.passed is False}


def test_recorded_crash_loop_passes() -> None:
    """The crash loop as our supervisor ran it meets every expectation."""
    obs, path = recorded("crash-loop-reaches-failed")
    assert failures(obs, path) == {}


def test_recorded_crash_loop_with_a_fourth_restart_fails() -> None:
    """The same recording with one extra respawn after `failed` breaks `restarts` and `state ... stays`."""
    obs, path = recorded("crash-loop-reaches-failed")
    last = obs.events[-1]
    extra = Event("m1", last.seq + 1, last.time + 0.5, "spawned", "starting", "run 5", "crash")
    failed = failures(replace(obs, events=(*obs.events, extra)), path)
    assert set(failed) == {"restarts(m1)", "state(m1)"}
    assert "restarted 4 times, expected exactly 3" in failed["restarts(m1)"]
    assert "but left it: spawned" in failed["state(m1)"]


def test_recorded_orphan_scenario_passes_and_fails_with_a_live_child() -> None:
    """Our supervisor killed the whole group; had an engine child of the first run lived on, no_orphans fails."""
    obs, path = recorded("orphan-engine-children")
    assert failures(obs, path) == {}
    first_run = min(s.run_pid for s in obs.sightings)
    child = next(s for s in obs.sightings if s.run_pid == first_run and s.pid != first_run)
    leaky = replace(obs, alive_at_end=obs.alive_at_end | {child.key})
    assert f"orphan pid {child.pid}" in failures(leaky, path)["no_orphans"]


def test_observation_json_round_trip() -> None:
    """An observation saved to the journal loads back equal, so a run can be judged again later."""
    obs, _ = recorded("orphan-engine-children")
    assert Observation.from_json(json.loads(json.dumps(obs.to_json()))) == obs
