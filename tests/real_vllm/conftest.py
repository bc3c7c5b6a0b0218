"""Real vLLM for CPUs under the supervisor: gated, built at test time, and never leaving a process behind.

These tests run only under `make test-real`, which installs vLLM (ci/real-vllm.sh) and sets
LLM_SUPERVISOR_REAL_VLLM=1; anywhere else (`make test`) each one skips. Once enabled, a missing install or
a model that cannot be built fails the tests loudly: the lane never passes by skipping.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real_vllm.harness import (
    BUILDER,
    ENABLE_ENV,
    VLLM,
    VLLM_ENV,
    VLLM_PYTHON,
    VLLM_VENV,
    describe,
    enabled,
    kill_all,
    tagged,
)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if enabled():
        return
    skip = pytest.mark.skip(reason=f"real vLLM runs under `make test-real` ({ENABLE_ENV}=1)")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tag() -> Iterator[str]:
    """A tag in the environment of every server these tests start; at the end, nothing may carry it."""
    value = f"real-vllm-{uuid.uuid4().hex}"
    yield value
    left = tagged(value)
    described = describe(left)
    kill_all(left)
    assert not left, f"processes of real vLLM left behind: {described}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama, built now with .venv-vllm's python (no download). Fails if it cannot be."""
    if not (VLLM_PYTHON.exists() and VLLM.exists()):
        pytest.fail(
            f"real vLLM is not installed in {VLLM_VENV}: run ci/real-vllm.sh (make test-real does)", pytrace=False
        )
    out = tmp_path_factory.mktemp("real-vllm") / "tiny-llama"
    result = subprocess.run(
        [str(VLLM_PYTHON), str(BUILDER), str(out)],
        env={**os.environ, **VLLM_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or not (out / "config.json").is_file():
        output = (result.stdout + result.stderr)[-4000:]
        pytest.fail(f"building the tiny model failed (exit {result.returncode}):\n{output}", pytrace=False)
    return out
