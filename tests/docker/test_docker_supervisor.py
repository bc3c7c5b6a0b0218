"""The supervisor looking after a containerised fake vLLM: crash -> exit seen -> backoff -> new container -> healthy."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker_helpers import wait_until

from supervisor.config.schema import parse_config
from supervisor.core.states import EventKind, State
from supervisor.loop.fleet import Fleet
from supervisor.runtime.docker_spec import MODEL_LABEL

pytestmark = pytest.mark.docker


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def docker_model(image: str, port: int, *flags: str) -> dict[str, Any]:
    return {
        "command": "fake-vllm",
        "args": ["serve", "fake/model", "--host", "0.0.0.0", "--port", "8000", *flags],
        "runtime": "docker",
        "docker": {"image": image, "ports": {"8000/tcp": port}},
        "endpoints": {"base_url": f"http://127.0.0.1:{port}/v1"},
        "restart_policy": "on-failure",
        "restart_delay": 0.5,
        "max_restarts": 5,
        "startup_probe_interval": 0.2,
        "startup_timeout": 60,
        "stop_timeout": 5,
    }


async def test_crashing_container_is_restarted_in_a_new_container_and_becomes_healthy(
    docker_client: Any, fake_image: str, model_id: str, tmp_path: Path
) -> None:
    """A container that crashes 2 s after start is seen exiting, replaced by a new container, healthy again."""
    port = free_port()
    config = parse_config(
        {
            "supervisor": {"state_dir": str(tmp_path / "state")},
            "llmModels": {model_id: docker_model(fake_image, port, "--crash-after", "2", "--exit-code", "3")},
        }
    )
    supervisor = Fleet(config)
    await supervisor.start()
    try:

        def kinds() -> list[EventKind]:
            return [event.kind for event in supervisor.events(model_id)]

        # healthy, crash, and healthy again in the second container
        await wait_until(lambda: kinds().count(EventKind.HEALTHY) >= 2, 90, "a second healthy run")
        events = supervisor.events(model_id)
        exited = next(e for e in events if e.kind is EventKind.EXITED)
        assert exited.detail == "exit code 3"
        assert exited.reason == "crash"
        assert kinds().index(EventKind.BACKOFF) > kinds().index(EventKind.EXITED)
        assert supervisor.status(model_id).restart_count >= 1
        # The crashed container was removed; only the live one carries the model's label.
        live = docker_client.containers.list(all=True, filters={"label": f"{MODEL_LABEL}={model_id}"})
        assert len(live) <= 1
    finally:
        await supervisor.shutdown()
    assert supervisor.status(model_id).state is State.STOPPED
    assert docker_client.containers.list(all=True, filters={"label": f"{MODEL_LABEL}={model_id}"}) == []


async def test_restarted_supervisor_removes_the_container_its_killed_predecessor_left(
    docker_client: Any, fake_image: str, model_id: str, tmp_path: Path
) -> None:
    """After `kill -9` of the supervisor, the next one stops and removes the orphaned container, then starts anew."""
    port, api_port = free_port(), free_port()
    config_file = tmp_path / "supervisor.json"
    config_file.write_text(
        json.dumps(
            {
                "supervisor": {"state_dir": str(tmp_path / "state"), "api": {"host": "127.0.0.1", "port": api_port}},
                "llmModels": {model_id: docker_model(fake_image, port)},
            }
        )
    )
    label = {"label": f"{MODEL_LABEL}={model_id}"}

    def containers() -> list[Any]:
        return list(docker_client.containers.list(all=True, filters=label))

    first = start_supervisor(config_file)
    try:
        await wait_until(lambda: model_state(api_port) == "healthy", 90, "the first supervisor's model to be healthy")
        [orphan] = containers()
    finally:
        first.kill()  # no shutdown: the container is left running, as after a crash of the supervisor
        first.wait(30)
    assert docker_client.containers.get(orphan.id).status == "running"

    second = start_supervisor(config_file)
    try:
        await wait_until(lambda: model_state(api_port) == "healthy", 90, "the second supervisor's model to be healthy")
        [current] = containers()
        assert current.id != orphan.id
        events = httpx.get(f"http://127.0.0.1:{api_port}/api/llm/models/{model_id}/events", timeout=5).json()
        assert any("left behind" in (event["detail"] or "") for event in events)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    assert containers() == []


def start_supervisor(config_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli.main", "run", "-c", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def model_state(api_port: int) -> str | None:
    try:
        reply = httpx.get(f"http://127.0.0.1:{api_port}/api/llm/models", timeout=2)
    except httpx.HTTPError:
        return None
    models = reply.json()["models"]
    return str(models[0]["state"]) if models else None
