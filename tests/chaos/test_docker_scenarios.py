"""Container scenarios without a daemon: the strict `runtime: docker` keys, the config they become, container
leftovers judged by `no_orphans`, the image/daemon readiness rules, and the catalogue in scenarios/docker/."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chaos import docker_image
from chaos.checks import judge_expectation
from chaos.containers import RUN_ENV
from chaos.docker_image import build_fake_vllm_image, prepare
from chaos.scenario import ScenarioError, load_scenario, parse_scenario, scenario_files
from chaos.target import CONTAINER_PORT, build_config, plan_local
from chaos.timeline import Container, Observation
from supervisor.config.schema import parse_config
from tests.chaos.timelines import ev, expect, observation, sighting, snap

CATALOGUE = Path(__file__).resolve().parents[2] / "scenarios" / "docker"


def scenario(model: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "c",
        "story": "a container story",
        "target": {"models": {"m1": model}},
        "expect": [{"no_orphans": True}],
        **extra,
    }


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"docker": {"image": "x"}}, "target.models.m1: docker: needs runtime: docker"),
        ({"runtime": "docker", "docker": {"imgae": "x"}}, "target.models.m1.docker.imgae: unknown key"),
        ({"runtime": "docker", "docker": {"mem_limit": "0m"}}, "target.models.m1.docker.mem_limit: must be a size"),
        ({"runtime": "docker", "docker": {"mem_limit": "lots"}}, "target.models.m1.docker.mem_limit: must be a size"),
        ({"runtime": "docker", "docker": {"image": ""}}, "target.models.m1.docker.image"),
        ({"runtime": "podman"}, "target.models.m1.runtime"),
        ({"runtime": "docker", "fake_vllm": ["--fake-gpu-dir", "{gpu_dir}"]}, "{gpu_dir} is a directory on this host"),
    ],
)
def test_container_keys_are_strict(model: dict[str, Any], expected: str) -> None:
    """Wrong container keys fail with their key path and what is wrong."""
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(scenario(model))
    assert any(p.startswith(expected) or expected in p for p in caught.value.problems), caught.value.problems


def test_container_model_becomes_a_docker_config_the_supervisor_accepts(tmp_path: Path) -> None:
    """runtime: docker writes the image, the published port, the run marker and base_url on the host port."""
    spec = parse_scenario(
        scenario(
            {"runtime": "docker", "fake_vllm": ["--crash-after", "1"], "docker": {"mem_limit": "8m"}, "stop_timeout": 2}
        )
    )
    plan = plan_local(spec, tmp_path / "run-1", docker_image="llm-supervisor/fake-vllm:abc")
    config = build_config(spec, plan, seed=7)
    entry = config["llmModels"]["m1"]
    host_port = plan.server_ports["m1"][0]
    assert entry["command"] == "fake-vllm"
    assert entry["args"][:6] == ["serve", "m1", "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
    assert entry["args"][6:8] == ["--crash-after", "1"]
    assert entry["runtime"] == "docker"
    assert entry["docker"] == {
        "image": "llm-supervisor/fake-vllm:abc",
        "ports": {f"{CONTAINER_PORT}/tcp": host_port},
        "env": {RUN_ENV: "run-1"},
        "mem_limit": "8m",
    }
    assert entry["endpoints"]["base_url"] == f"http://127.0.0.1:{host_port}/v1"
    assert entry["stop_timeout"] == 2
    assert plan.process_ports == {}
    parsed = parse_config(config).models["m1"]
    assert parsed.docker is not None
    assert parsed.docker.mem_limit == 8 * 1024 * 1024


def test_named_image_wins_and_process_models_are_unchanged(tmp_path: Path) -> None:
    """A scenario's own image is used as named; a process model next to it keeps the host command."""
    spec = parse_scenario(
        {
            **scenario({"runtime": "docker", "docker": {"image": "mine:1"}}),
            "target": {"models": {"m1": {"runtime": "docker", "docker": {"image": "mine:1"}}, "m2": {}}},
        }
    )
    plan = plan_local(spec, tmp_path / "run-2")
    models = build_config(spec, plan, seed=1)["llmModels"]
    assert models["m1"]["docker"]["image"] == "mine:1"
    assert "runtime" not in models["m2"]
    assert "--host" not in models["m2"]["args"]
    assert plan.process_ports == {"m2": plan.server_ports["m2"]}
    assert spec.container_models() == ["m1"]
    assert spec.container_images() == {"mine:1"}


def with_containers(obs: Observation, at_end: list[Container], after: list[Container] | None) -> Observation:
    return replace(
        obs, containers_at_end=tuple(at_end), containers_after_shutdown=None if after is None else tuple(after)
    )


def container(pid: int | None, status: str = "running", name: str = "llm-supervisor-m1-1-abc") -> Container:
    return Container("m1", "0123456789ab", name, status, pid)


def base_observation() -> Observation:
    return observation(
        [ev(0.5, "spawned", "starting", "run 1"), ev(1.0, "healthy", "healthy")],
        [snap(2.0, pid=500, state="healthy")],
        sightings=[sighting(500, 500)],
        alive=[500],
        after_shutdown=[],
    )


def test_no_orphans_accepts_the_current_container_and_none_after_shutdown() -> None:
    """Only the current run's running container at the end, none after shutdown: no orphans."""
    obs = with_containers(base_observation(), [container(500)], [])
    verdict = judge_expectation(expect({"no_orphans": True}), obs)
    assert verdict.passed, verdict.message
    assert "containers" in verdict.message


@pytest.mark.parametrize(
    ("at_end", "after", "message"),
    [
        (
            [container(500), container(None, "exited", "old-run")],
            [],
            "container old-run of m1 (exited, pid None) was still there at the end, while the current run is 500",
        ),
        ([container(450, name="twin")], [], "container twin of m1 (running, pid 450) was still there at the end"),
        (
            [container(500)],
            [container(500, name="survivor")],
            "container survivor of m1 (running) survived the supervisor's shutdown",
        ),
    ],
)
def test_no_orphans_catches_containers_left_behind(
    at_end: list[Container], after: list[Container], message: str
) -> None:
    """An exited container not removed, a second run's container, or one surviving shutdown fail no_orphans."""
    verdict = judge_expectation(expect({"no_orphans": True}), with_containers(base_observation(), at_end, after))
    assert verdict.passed is False
    assert message in verdict.message


def test_observation_with_containers_survives_json() -> None:
    """The journal keeps the containers seen, so a run can be judged again from it."""
    obs = with_containers(base_observation(), [container(500)], [container(None, "exited")])
    assert Observation.from_json(obs.to_json()) == obs


def test_no_daemon_means_skip_and_require_docker_makes_it_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a daemon container scenarios are skipped, unless LLM_SUPERVISOR_REQUIRE_DOCKER=1 says fail."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    monkeypatch.delenv(docker_image.REQUIRE_ENV, raising=False)
    ready = prepare([])
    assert (ready.image, ready.skip) == (None, True)
    assert ready.problem is not None
    assert "no Docker daemon reachable" in ready.problem
    monkeypatch.setenv(docker_image.REQUIRE_ENV, "1")
    ready = prepare([])
    assert not ready.skip
    assert ready.problem is not None
    assert ready.problem.startswith("LLM_SUPERVISOR_REQUIRE_DOCKER")


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "ci" / "build.sh"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("body", "image", "cannot_build_here"),
    [
        ("echo building >&2; echo llm-supervisor/fake-vllm:0123", "llm-supervisor/fake-vllm:0123", False),
        ("echo 'debootstrap needs root' >&2; exit 3", None, True),
        ("echo 'mirror unreachable' >&2; exit 1", None, False),
    ],
)
def test_build_outcome_follows_the_script(
    tmp_path: Path, body: str, image: str | None, cannot_build_here: bool
) -> None:
    """The image is the script's last line; exit 3 means "cannot build here" (skip), other failures are errors."""
    build = build_fake_vllm_image(script(tmp_path, body), timeout=30)
    assert (build.image, build.cannot_build_here) == (image, cannot_build_here)
    if image is None:
        assert build.problem is not None
        assert "build.sh exited" in build.problem


def test_catalogue_of_container_scenarios() -> None:
    """scenarios/docker/ validates, every model in it runs in a container, and it covers the container failures."""
    files = scenario_files([CATALOGUE])
    loaded = [load_scenario(f) for f in files]
    assert sorted(s.name for s in loaded) == sorted(f.stem for f in files)
    assert all(s.target is not None and s.container_models() == sorted(s.target.models) for s in loaded)
    assert all(len(s.story.split()) >= 15 and any(e.kind == "no_orphans" for e in s.expect) for s in loaded)
    assert {s.name for s in loaded} >= {
        "container-crash-loop-reaches-failed",
        "container-kill9-main-process",
        "container-oom-at-startup",
        "container-engine-dead-exit-zero",
        "container-sigterm-ignored-escalates",
        "container-manual-stop-sticks",
        "container-hang-sigstop",
        "container-memory-limit-oomkilled",
        "container-outlives-killed-supervisor",
    }
