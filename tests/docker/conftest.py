"""Fixtures for tests against a real Docker Engine.

Tests marked `docker` skip, with the reason, when no daemon answers (a laptop without Docker); with
LLM_SUPERVISOR_REQUIRE_DOCKER=1 (CI) they fail instead, so a daemon that did not come up cannot hide.
The fake-vLLM image is built by ci/build-fake-vllm-image.sh (through chaos.docker_image) once per session,
when collection is over and before any test runs: a first build takes about a minute, longer than one
test's timeout should allow.
Every test uses its own model id, and teardown fails the test if a container labelled with it is left.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker_helpers import Lines

from chaos.docker_image import build_fake_vllm_image, daemon_problem
from supervisor.runtime.docker_spec import MODEL_LABEL

ROOT = Path(__file__).resolve().parents[2]

_state: dict[str, Any] = {}


def _unavailable(reason: str) -> None:
    if os.environ.get("LLM_SUPERVISOR_REQUIRE_DOCKER") == "1":
        pytest.fail(f"LLM_SUPERVISOR_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the fake-vLLM image before the first docker test, outside any test's timeout."""
    wanted = [
        item
        for item in session.items
        if item.get_closest_marker("docker") and Path(str(item.path)).is_relative_to(ROOT / "tests" / "docker")
    ]
    if not wanted or session.config.option.collectonly:
        return
    problem = daemon_problem()
    _state["daemon_problem"] = problem
    if problem is not None:
        return
    build = build_fake_vllm_image()  # ci/build-fake-vllm-image.sh, shared with the chaos plugin
    _state["build_seconds"] = build.seconds
    if build.image is not None:
        _state["image"] = build.image
    else:
        _state["image_problem"] = (build.problem, build.cannot_build_here)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client for the local daemon; skips (or fails, in CI) when none answers."""
    problem = _state["daemon_problem"] if "daemon_problem" in _state else daemon_problem()
    if problem is not None:
        _unavailable(problem)
    client = docker.from_env(timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="session")
def fake_image(docker_client: Any) -> str:
    """The fake-vLLM image reference (python3 and the fake_vllm package on Debian bookworm)."""
    problem = _state.get("image_problem")
    if problem is not None:
        message, cannot_build = problem
        if cannot_build:
            _unavailable(message)
        pytest.fail(message)
    if "image" not in _state:
        pytest.fail("the fake-vLLM image was not built before the tests (see tests/docker/conftest.py)")
    return str(_state["image"])


@pytest.fixture
def model_id(docker_client: Any) -> Iterator[str]:
    """A model id unique to the test; teardown fails the test if a container labelled with it is left."""
    mid = f"t-{uuid.uuid4().hex[:10]}"
    yield mid
    left = docker_client.containers.list(all=True, filters={"label": f"{MODEL_LABEL}={mid}"})
    for container in left:
        container.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"


@pytest.fixture
def lines() -> Lines:
    return Lines()
