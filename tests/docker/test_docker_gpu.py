"""The real vllm/vllm-openai image on a GPU through the Docker runtime: served, healthy, stopped, removed.

Runs only where a GPU, the image and a model are at hand (nothing is downloaded):
  LLM_SUPERVISOR_VLLM_IMAGE   image reference (default vllm/vllm-openai:latest), already on the Docker host
  LLM_SUPERVISOR_VLLM_MODEL   host directory of a small model (e.g. Qwen2.5-0.5B-Instruct), mounted read-only
Otherwise it skips and says which one is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from docker_helpers import Lines, wait_until

from supervisor.runtime.docker import DockerRuntime
from supervisor.runtime.docker_spec import ContainerSpec

pytestmark = [pytest.mark.docker, pytest.mark.gpu]

IMAGE = os.environ.get("LLM_SUPERVISOR_VLLM_IMAGE", "vllm/vllm-openai:latest")
MODEL_DIR = os.environ.get("LLM_SUPERVISOR_VLLM_MODEL")
SERVED_NAME = "gpu-test-model"


def gpu_missing() -> str | None:
    """Why no NVIDIA GPU can be used, or None."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU here (nvidia-smi not found)"
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False, timeout=30)
    if listed.returncode != 0 or "GPU" not in listed.stdout:
        return f"nvidia-smi lists no GPU: {(listed.stderr or listed.stdout).strip()[:200]}"
    return None


@pytest.fixture
def vllm_ready(docker_client: Any) -> str:
    """The model directory to serve, once the GPU, the image and the model are known to be there."""
    problem = gpu_missing()
    if problem is None:
        try:
            docker_client.images.get(IMAGE)
        except docker.errors.ImageNotFound:
            problem = f"image {IMAGE} is not on the Docker host (no registry is reached: load it first)"
    if problem is None and not (MODEL_DIR and Path(MODEL_DIR).is_dir()):
        problem = "LLM_SUPERVISOR_VLLM_MODEL does not name a local model directory"
    if problem is not None:
        pytest.skip(problem)
    assert MODEL_DIR is not None
    return MODEL_DIR


@pytest.mark.timeout(900)
async def test_vllm_openai_on_all_gpus_becomes_healthy_and_stops(vllm_ready: str, model_id: str, lines: Lines) -> None:
    """gpus: all + ipc_mode: host runs the real server: /health 200, /v1/models lists it, stop exits it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    spec = ContainerSpec(
        image=IMAGE,
        entrypoint=["vllm"],
        command=[
            "serve",
            "/model",
            "--served-model-name",
            SERVED_NAME,
            "--port",
            "8000",
            "--gpu-memory-utilization",
            "0.5",
            "--max-model-len",
            "2048",
        ],
        env={"HF_HUB_OFFLINE": "1"},
        ports={"8000/tcp": port},
        gpus="all",
        ipc_mode="host",
        volumes={vllm_ready: "/model:ro"},
        stop_timeout=60,
    )
    run = await DockerRuntime(spec).spawn(model_id, 1, lines)
    base = f"http://127.0.0.1:{port}"

    exited = asyncio.ensure_future(run.wait_exit())

    async def healthy() -> bool:
        if exited.done():
            last = "\n".join(line for _, line, _ in lines.seen[-20:])
            pytest.fail(f"vLLM exited while loading ({exited.result().describe()}):\n{last}")
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                return (await client.get(f"{base}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(healthy, 780, "vLLM to load the model and answer /health")
    async with httpx.AsyncClient(timeout=10) as client:
        models = (await client.get(f"{base}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [SERVED_NAME]
    run.terminate()
    status = await asyncio.wait_for(exited, 90)
    assert status.signal is None, f"vLLM needed the kill to stop: {status.describe()}"
    await asyncio.wait_for(run.wait_gone(), 60)
