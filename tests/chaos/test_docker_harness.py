"""Container scenarios for real: the pytest plugin's `docker` marking and skipping, the harness's container
bookkeeping against a real engine, and a supervisor that leaves its container behind caught and cleaned up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaos.containers import MODEL_LABEL, RUN_ENV, ScenarioContainers
from chaos.docker_image import REQUIRE_ENV, prepare
from chaos.runner import RunOptions, run_scenario
from chaos.scenario import parse_scenario
from tests.chaos.test_cli import STOP_STICKS
from tests.chaos.test_pytest_plugin import pytest_in

IN_CONTAINER: dict[str, Any] = {
    "name": "in-container",
    "story": "a containerised server is stopped and stays stopped",
    "target": {"models": {"m1": {"runtime": "docker", "startup_probe_interval": 0.2}}},
    "steady_state": [{"healthy": {"model": "m1", "within": 30}}],
    "faults": [{"at": 0.2, "action": "api", "target": {"model": "m1"}, "operation": "stop"}],
    "expect": [{"state": {"model": "m1", "is": "stopped", "within": 15}}, {"no_orphans": True}],
    "duration": 0.5,
}


def write(folder: Path, name: str, data: dict[str, Any]) -> None:
    (folder / "scenarios").mkdir(exist_ok=True)
    (folder / "scenarios" / f"{name}.yaml").write_text(yaml.safe_dump(data))


def test_plugin_marks_only_container_scenarios_docker(tmp_path: Path) -> None:
    """A scenario with a container model carries the `docker` marker; a plain one does not."""
    write(tmp_path, "plain", STOP_STICKS)
    write(tmp_path, "boxed", IN_CONTAINER)
    docker_only = pytest_in(tmp_path, "--collect-only", "-q", "-m", "docker", "scenarios")
    assert "scenarios/boxed.yaml::in-container" in docker_only.stdout
    assert "plain.yaml" not in docker_only.stdout
    others = pytest_in(tmp_path, "--collect-only", "-q", "-m", "not docker", "scenarios")
    assert "scenarios/plain.yaml::stop-sticks" in others.stdout
    assert "boxed.yaml" not in others.stdout


@pytest.mark.slow
def test_without_a_daemon_container_scenarios_skip_and_plain_ones_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_leftovers: None
) -> None:
    """No daemon: the container scenario skips saying why; the plain one next to it runs and passes."""
    write(tmp_path, "plain", STOP_STICKS)
    write(tmp_path, "boxed", IN_CONTAINER)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    done = pytest_in(tmp_path, "-q", "-rs", "scenarios")
    assert done.returncode == 0, done.stdout
    assert "1 passed, 1 skipped" in done.stdout
    assert "no Docker daemon reachable" in done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    """The fake-vLLM image (built if needed); skips where no daemon answers or it cannot be built."""
    ready = prepare([])
    if ready.problem is not None:
        if ready.skip:
            pytest.skip(ready.problem)
        pytest.fail(ready.problem)
    assert ready.image is not None
    return ready.image


@pytest.fixture
def docker_client() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=60)
    yield client
    client.close()


def sleeper(client: Any, image: str, model: str, run_id: str) -> Any:
    """A labelled container that just sleeps, carrying the run marker `run_id`."""
    return client.containers.run(
        image,
        ["-c", "import time; time.sleep(60)"],
        entrypoint=["python3"],
        detach=True,
        labels={MODEL_LABEL: model},
        environment={RUN_ENV: run_id},
    )


@pytest.mark.docker
def test_harness_sees_and_removes_only_its_own_run_s_containers(image: str, docker_client: Any) -> None:
    """Containers with the model's label but another run's marker are neither listed nor removed."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    mine, theirs = sleeper(docker_client, image, model, "mine"), sleeper(docker_client, image, model, "theirs")
    try:
        ours = ScenarioContainers("mine", [model])
        [found] = ours.find()
        assert (found.id, found.model, found.status) == (mine.id[:12], model, "running")
        assert found.pid is not None
        assert found.pid > 1
        assert ours.remove_all() == [mine.name]
        assert ours.find() == ()
        theirs.reload()
        assert theirs.status == "running"
    finally:
        for container in (mine, theirs):
            if docker_client.containers.list(all=True, filters={"id": container.id}):
                container.remove(force=True)


@pytest.mark.docker
async def test_container_left_by_a_killed_supervisor_fails_no_orphans_and_is_removed(
    image: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """kill -9 of the supervisor leaves its container running: no_orphans names it, and clean-up removes it."""
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    scenario = parse_scenario(
        {
            **IN_CONTAINER,
            "name": "supervisor-dies",
            "faults": [{"at": 0.2, "action": "supervisor", "signal": "SIGKILL", "restart_after": None}],
            "expect": [{"no_orphans": True}],
        }
    )
    result = await run_scenario(scenario, RunOptions(seed=1, workdir=tmp_path, docker_image=image))
    assert result.outcome == "failed", result.message
    verdict = next(v for v in result.verdicts if v.check == "no_orphans")
    assert verdict.passed is False
    assert "container llm-supervisor-m1-" in verdict.message
    assert "survived the supervisor's shutdown" in verdict.message
    assert result.workdir is not None
    assert ScenarioContainers(Path(result.workdir).name, ["m1"]).find() == ()


@pytest.mark.docker
def test_supervised_fixture_runs_a_container_model_and_removes_it(image: str, supervised: Any) -> None:
    """`supervised` with runtime: docker serves the model from a container and leaves no container behind."""
    target = supervised({"m1": {"runtime": "docker", "docker": {"image": image}, "startup_probe_interval": 0.2}})
    status = target.wait_for("m1", "healthy", within=60)
    containers = ScenarioContainers(target.plan.run_id, ["m1"])
    [running] = containers.find()
    assert running.pid == status["pid"]
    target.stop()
    assert containers.find() == ()
