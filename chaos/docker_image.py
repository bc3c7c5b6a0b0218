"""Can container scenarios run here: is a Docker daemon reachable, and which fake-vLLM image do they run.

The default image is the one `ci/build-fake-vllm-image.sh` builds from this checkout with no registry
(`llm-supervisor/fake-vllm:<hash>`). The script is idempotent and returns at once when the image is up to date,
so asking it is also how an out-of-date image gets rebuilt. Without the script (an installed package, no
checkout) the `:latest` tag already on the Docker host is used.

A problem is either a reason to *skip* (no daemon, this machine cannot build the image: a laptop without
Docker) or an *error* (the build broke, a named image is missing). With LLM_SUPERVISOR_REQUIRE_DOCKER=1, as in
CI, skipping is an error too, so a daemon that did not come up cannot hide a whole catalogue.
Blocking (subprocess, the Docker SDK): call these in a thread from async code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FAKE_VLLM_REPOSITORY = "llm-supervisor/fake-vllm"
FAKE_VLLM_IMAGE = f"{FAKE_VLLM_REPOSITORY}:latest"
REQUIRE_ENV = "LLM_SUPERVISOR_REQUIRE_DOCKER"
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "ci" / "build-fake-vllm-image.sh"
BUILD_TIMEOUT = 900.0  # a first build (debootstrap) takes about a minute; a slow mirror much longer
CANNOT_BUILD_HERE = 3  # the script's exit status when this machine cannot build (not root, no debootstrap)


@dataclass(frozen=True, slots=True)
class ImageBuild:
    """The outcome of building (or finding) the fake-vLLM image."""

    image: str | None
    problem: str | None = None
    cannot_build_here: bool = False  # a reason to skip rather than fail (unless Docker is required)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether container scenarios can run, and the default image they get."""

    image: str | None
    problem: str | None = None
    skip: bool = False  # the problem means "not here" (skip), not "broken" (error)


def docker_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def daemon_problem() -> str | None:
    """Why no Docker daemon can be used here, or None when one answers."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        import docker  # an optional extra: imported only when a container scenario runs
    except ImportError:
        return "the `docker` package is missing (pip install 'llm-supervisor[docker]')"
    problem = _socket_problem(host)
    if problem is not None:
        return f"no Docker daemon reachable at {host} ({problem}); start one with ci/start-dockerd.sh"
    try:
        client = docker.from_env(timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach the daemon means the same: none here
        return f"no Docker daemon reachable at {host} ({type(exc).__name__}); start one with ci/start-dockerd.sh"
    return None


def _socket_problem(host: str) -> str | None:
    """Connect to a unix socket ourselves first: docker-py leaks the socket of a failed connect, which a
    test run with warnings as errors would report (ResourceWarning) against an unrelated test."""
    if not host.startswith("unix://"):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(host.removeprefix("unix://"))
        except OSError as exc:
            return exc.strerror or type(exc).__name__
    return None


def build_fake_vllm_image(script: Path = BUILD_SCRIPT, timeout: float = BUILD_TIMEOUT) -> ImageBuild:
    """Run the build script (a no-op when the image is up to date); without it, use `:latest` if present."""
    if not script.exists():
        missing = missing_images([FAKE_VLLM_IMAGE])
        if missing is None:
            return ImageBuild(FAKE_VLLM_IMAGE)
        return ImageBuild(
            None,
            f"{missing}, and {script} is not here to build it (run `make docker-image` "
            "in a checkout of llm-supervisor)",
            cannot_build_here=True,
        )
    started = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 (our own script, no shell)
            [str(script)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=script.parents[1],
        )
    except subprocess.TimeoutExpired:
        return ImageBuild(None, f"{script.name} took more than {timeout:g} s", seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return ImageBuild(lines[-1].strip(), seconds=seconds)
    return ImageBuild(
        None,
        f"{script.name} exited {done.returncode}:\n{done.stderr[-3000:]}",
        cannot_build_here=done.returncode == CANNOT_BUILD_HERE,
        seconds=seconds,
    )


def missing_images(images: Iterable[str]) -> str | None:
    """None when every image is on the Docker host; otherwise which are not, and how to get them."""
    import docker
    from docker import errors

    client = docker.from_env(timeout=30)
    absent = []
    try:
        for image in images:
            try:
                client.images.get(image)
            except errors.ImageNotFound:
                absent.append(image)
    finally:
        client.close()
    if not absent:
        return None
    return f"image(s) {', '.join(absent)} not on the Docker host (docker pull / docker build them)"


_lock = threading.Lock()
_built: list[ImageBuild] = []  # one build per process: the CLI runs many scenarios, the script once


def prepare(named_images: Iterable[str], *, default_image: str | None = None) -> Readiness:
    """Check the daemon, the images a scenario names, and (when `default_image` is None) build the default."""
    problem = daemon_problem()
    if problem is not None:
        return _not_here(problem)
    image = default_image
    if image is None:
        with _lock:
            if not _built:
                _built.append(build_fake_vllm_image())
            build = _built[0]
        if build.image is None:
            problem = build.problem or "the fake-vLLM image could not be built"
            return _not_here(problem) if build.cannot_build_here else Readiness(None, problem)
        image = build.image
    missing = missing_images(set(named_images))
    return Readiness(image) if missing is None else Readiness(image, missing)


def _not_here(problem: str) -> Readiness:
    if docker_required():
        return Readiness(None, f"{REQUIRE_ENV}=1 but {problem}")
    return Readiness(None, problem, skip=True)
