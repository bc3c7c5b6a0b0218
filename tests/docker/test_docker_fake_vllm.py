"""The fake vLLM served from its container image through the Docker runtime: health over a published port,
a graceful stop, and a CUDA OOM traceback read from the container's output and classified like a process's."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from docker_helpers import Lines, wait_until

from supervisor.core.diagnosis import classify_line
from supervisor.core.states import Cause
from supervisor.runtime.base import Stream
from supervisor.runtime.docker import DockerRuntime
from supervisor.runtime.docker_spec import ContainerSpec

pytestmark = pytest.mark.docker


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fake_vllm_spec(image: str, *flags: str, host_port: int) -> ContainerSpec:
    """`command: vllm, args: [serve, ...]` as a real vLLM config says it: the image answers to `vllm` too."""
    return ContainerSpec(
        image=image,
        entrypoint=["vllm"],
        command=["serve", "fake/model", "--host", "0.0.0.0", "--port", "8000", *flags],
        ports={"8000/tcp": host_port},
        stop_timeout=10,
    )


async def test_fake_vllm_container_serves_health_on_the_published_port_and_stops_gracefully(
    fake_image: str, model_id: str, lines: Lines
) -> None:
    """/health answers 200 on 127.0.0.1:<host port>; terminate() stops the server without the kill."""
    port = free_port()
    run = await DockerRuntime(fake_vllm_spec(fake_image, host_port=port)).spawn(model_id, 1, lines)

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(healthy, 60, "the containerised fake vLLM to answer /health")
    run.terminate()
    status = await asyncio.wait_for(run.wait_exit(), 30)
    assert status.signal is None  # it exited by itself on SIGTERM, before stop_timeout's SIGKILL
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_cuda_oom_traceback_from_a_container_is_diagnosed_before_the_exit(
    fake_image: str, model_id: str, lines: Lines
) -> None:
    """The fake's CUDA OOM traceback reaches the sink on stderr before wait_exit returns, and reads as OOM."""
    spec = fake_vllm_spec(fake_image, "--oom", "startup", host_port=free_port())
    run = await DockerRuntime(spec).spawn(model_id, 1, lines)
    status = await asyncio.wait_for(run.wait_exit(), 60)
    causes = {finding.cause for line in lines.of(Stream.STDERR) if (finding := classify_line(line)) is not None}
    assert status.code == 1
    assert Cause.OOM in causes
    assert not status.oom_killed  # a CUDA OOM is the program's error, not the kernel's memory limit
    await asyncio.wait_for(run.wait_gone(), 30)
