"""The Docker runtime against a real engine: exits, signals, OOMKilled, stop escalation, output, removal."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import docker
import psutil
import pytest
from docker_helpers import Lines, wait_until

from supervisor.runtime.base import Stream
from supervisor.runtime.docker import DockerRuntime, ImageMissing, PortInUse
from supervisor.runtime.docker_run import DockerRun
from supervisor.runtime.docker_spec import MODEL_LABEL, RUN_LABEL, ContainerSpec

pytestmark = pytest.mark.docker

# A loaded 2-core CI machine shared by several test runs: the engine may take a while to start a container.
EXIT_SEEN_WITHIN = 2.0


def python_spec(image: str, code: str, **settings: Any) -> ContainerSpec:
    """A container that runs `python3 -u -c code` in the fake-vLLM image."""
    return ContainerSpec(image=image, entrypoint=["python3", "-u", "-c"], command=[code], **settings)


async def spawn(spec: ContainerSpec, model_id: str, lines: Lines, run_number: int = 1) -> DockerRun:
    return await DockerRuntime(spec).spawn(model_id, run_number, lines)


def gone(client: Any, container_id: str) -> bool:
    try:
        client.containers.get(container_id)
    except docker.errors.NotFound:
        return True
    return False


async def test_crash_exit_code_is_seen_from_the_event_stream_promptly(
    docker_client: Any, fake_image: str, model_id: str, lines: Lines
) -> None:
    """A container that exits 3 is reported as exit code 3 within a couple of seconds, then removed; the run
    then lets go of its sink (which refers to the model's owner, which refers to the run: a cycle)."""
    code = "import sys, time\ntime.sleep(0.5)\nprint('dying at', time.time())\nsys.exit(3)"
    run = await spawn(python_spec(fake_image, code), model_id, lines)
    status = await asyncio.wait_for(run.wait_exit(), 30)
    seen_at = time.time()
    assert (status.code, status.signal, status.oom_killed) == (3, None, False)
    dying_at = float(lines.of(Stream.STDOUT)[-1].split()[-1])
    assert seen_at - dying_at < EXIT_SEEN_WITHIN
    await asyncio.wait_for(run.wait_gone(), 30)
    assert gone(docker_client, run.ident)
    assert all(held is not lines for held in vars(run).values())


async def test_output_lines_of_both_streams_arrive_in_order_before_the_exit(
    fake_image: str, model_id: str, lines: Lines
) -> None:
    """stdout and stderr lines are separated, each in order, complete (last partial line too) before exit."""
    code = (
        "import sys\n"
        "for i in range(200):\n"
        "    print('out', i)\n"
        "    print('err', i, file=sys.stderr)\n"
        "sys.stderr.write('CUDA out of memory. Tried to allocate 2.00 GiB')\n"
        "sys.exit(1)"
    )
    run = await spawn(python_spec(fake_image, code), model_id, lines)
    status = await asyncio.wait_for(run.wait_exit(), 30)
    # Read right at the exit: nothing may arrive after the supervisor learned of it.
    out, err = lines.of(Stream.STDOUT), lines.of(Stream.STDERR)
    assert status.code == 1
    assert out == [f"out {i}" for i in range(200)]
    assert err == [*(f"err {i}" for i in range(200)), "CUDA out of memory. Tried to allocate 2.00 GiB"]
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_docker_kill_from_outside_is_seen_as_sigkill(
    docker_client: Any, fake_image: str, model_id: str, lines: Lines
) -> None:
    """`docker kill` by someone else is reported as signal 9 (the engine's exit code 137)."""
    run = await spawn(python_spec(fake_image, "import time\nprint('up')\ntime.sleep(600)"), model_id, lines)
    await wait_until(lambda: lines.of(Stream.STDOUT) == ["up"], 30, "the container to print 'up'")
    assert run.pid is not None
    assert psutil.pid_exists(run.pid)
    docker_client.containers.get(run.ident).kill()
    status = await asyncio.wait_for(run.wait_exit(), 30)
    assert (status.code, status.signal, status.oom_killed) == (137, 9, False)
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_memory_limit_exceeded_is_reported_as_oom_killed(fake_image: str, model_id: str, lines: Lines) -> None:
    """A container allocating past mem_limit is killed by the kernel and reported with oom_killed=True."""
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))"
    run = await spawn(python_spec(fake_image, code, mem_limit="48m"), model_id, lines)
    status = await asyncio.wait_for(run.wait_exit(), 60)
    assert status.oom_killed
    assert status.signal == 9
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_terminate_stops_a_cooperative_container_gracefully(fake_image: str, model_id: str, lines: Lines) -> None:
    """terminate() delivers SIGTERM: a server that exits on it does so at once, with its own exit code."""
    code = (
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nprint('up')\ntime.sleep(600)"
    )
    run = await spawn(python_spec(fake_image, code, stop_timeout=30), model_id, lines)
    await wait_until(lambda: lines.of(Stream.STDOUT) == ["up"], 30, "the container to print 'up'")
    asked = time.monotonic()
    run.terminate()
    status = await asyncio.wait_for(run.wait_exit(), 30)
    assert (status.code, status.signal) == (0, None)
    assert time.monotonic() - asked < 10  # far below stop_timeout: no kill was needed
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_stop_of_a_hung_container_needs_the_kill_after_stop_timeout(
    fake_image: str, model_id: str, lines: Lines
) -> None:
    """A container ignoring SIGTERM is killed after stop_timeout, not before, and reported as SIGKILL."""
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up')\ntime.sleep(600)"
    run = await spawn(python_spec(fake_image, code, stop_timeout=2), model_id, lines)
    await wait_until(lambda: lines.of(Stream.STDOUT) == ["up"], 30, "the container to print 'up'")
    asked = time.monotonic()
    run.terminate()
    status = await asyncio.wait_for(run.wait_exit(), 30)
    took = time.monotonic() - asked
    assert (status.code, status.signal) == (137, 9)
    assert 1.8 <= took < 12, took
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_kill_stops_the_run_at_once(fake_image: str, model_id: str, lines: Lines) -> None:
    """kill() needs no grace period even when SIGTERM is ignored."""
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up')\ntime.sleep(600)"
    run = await spawn(python_spec(fake_image, code, stop_timeout=60), model_id, lines)
    await wait_until(lambda: lines.of(Stream.STDOUT) == ["up"], 30, "the container to print 'up'")
    asked = time.monotonic()
    run.kill()
    status = await asyncio.wait_for(run.wait_exit(), 30)
    assert status.signal == 9
    assert time.monotonic() - asked < 10
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_container_carries_model_and_run_labels(
    docker_client: Any, fake_image: str, model_id: str, lines: Lines
) -> None:
    """The container is labelled with the model id and run number, and publishes on 127.0.0.1 only."""
    spec = python_spec(fake_image, "import time\nprint('up')\ntime.sleep(600)", ports={"8000/tcp": free_port()})
    run = await spawn(spec, model_id, lines, run_number=7)
    container = docker_client.containers.get(run.ident)
    assert container.labels[MODEL_LABEL] == model_id
    assert container.labels[RUN_LABEL] == "7"
    bindings = container.attrs["HostConfig"]["PortBindings"]["8000/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    run.kill()
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_missing_image_is_a_clear_spawn_error_and_nothing_is_pulled(
    docker_client: Any, model_id: str, lines: Lines
) -> None:
    """An image that is not on the host fails the spawn with a message naming it and the pull setting."""
    spec = ContainerSpec(image="llm-supervisor/no-such-image:never")
    with pytest.raises(ImageMissing, match=r"no-such-image.*docker.pull: true"):
        await DockerRuntime(spec).spawn(model_id, 1, lines)


async def test_taken_host_port_is_a_port_in_use_spawn_error(
    docker_client: Any, fake_image: str, model_id: str, lines: Lines
) -> None:
    """A host port held by another program fails the spawn with PortInUse, and no container is left."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = python_spec(fake_image, "print('never')", ports={"8000/tcp": port})
        with pytest.raises(PortInUse, match=rf"127\.0\.0\.1:{port}"):
            await DockerRuntime(spec).spawn(model_id, 1, lines)
    # The model_id fixture's teardown checks that the created container was removed.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_silence_longer_than_the_client_timeout_does_not_break_the_streams(
    fake_image: str, model_id: str, lines: Lines
) -> None:
    """A server silent for longer than the client's HTTP timeout (a quiet model load) is still heard and seen."""
    code = "import sys, time\ntime.sleep(2.5)\nprint('loaded')\nsys.exit(4)"
    runtime = DockerRuntime(python_spec(fake_image, code), lambda: docker.from_env(timeout=1))
    run = await runtime.spawn(model_id, 1, lines)
    status = await asyncio.wait_for(run.wait_exit(), 30)
    assert status.code == 4
    assert lines.of(Stream.STDOUT) == ["loaded"]
    await asyncio.wait_for(run.wait_gone(), 30)


async def test_spawn_cancelled_midway_leaves_no_container(
    docker_client: Any, fake_image: str, model_id: str, lines: Lines
) -> None:
    """A spawn cancelled while the engine is starting the container removes that container afterwards."""
    starting, release = threading.Event(), threading.Event()

    def held_client() -> Any:
        client = docker.from_env()
        real_start = client.api.start

        def start(*args: Any, **kwargs: Any) -> Any:
            starting.set()
            release.wait(30)  # the spawn is cancelled while the engine "starts" the container
            return real_start(*args, **kwargs)

        client.api.start = start
        return client

    runtime = DockerRuntime(python_spec(fake_image, "import time\ntime.sleep(600)"), held_client)
    spawning = asyncio.ensure_future(runtime.spawn(model_id, 1, lines))
    await wait_until(starting.is_set, 30, "the spawn to reach the start")
    spawning.cancel()
    with pytest.raises(asyncio.CancelledError):
        await spawning
    release.set()
    label = {"label": f"{MODEL_LABEL}={model_id}"}
    await wait_until(lambda: not docker_client.containers.list(all=True, filters=label), 30, "its removal")
