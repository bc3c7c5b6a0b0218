"""Start a real ``fake-vllm`` process from a test, wait until it serves, and leave nothing behind.

    from fake_vllm.testing import fake_vllm, async_fake_vllm

    with fake_vllm("--hang-after", "1") as server:        # or: async with async_fake_vllm(...) as server
        httpx.get(f"{server.base_url}/health")
        server.stderr()                                    # what it wrote so far

The process runs in its own session (``start_new_session=True``), so its engine children share its process
group; on exit the whole group is SIGKILLed and waited for, orphans included. Output goes to files, never
to a pipe that nobody reads (a full pipe would freeze the server). A free port is chosen for you; if another
process grabs it first (the server then exits with Errno 98) the start is retried on a new port.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_PORT_RETRIES = 5


class FakeVllmExited(RuntimeError):
    """The process ended while we waited for it to serve; the message carries its stderr tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (another process may still take it before we do)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is ``pgid``, orphans included."""
    members = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


@dataclass
class FakeVllm:
    """One running (or finished) fake-vllm process started by ``start``."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_dir: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The server's pid, which is also its process group id."""
        return self.process.pid

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    def stdout(self) -> str:
        """Everything written to stdout so far (vLLM's logger lines, access lines), newlines translated."""
        return (self.log_dir / "stdout.log").read_text(errors="replace")

    def raw_stdout(self) -> str:
        """stdout as written, ``\r\n`` inside vLLM's multi-line records included."""
        return (self.log_dir / "stdout.log").read_bytes().decode(errors="replace")

    def stderr(self) -> str:
        """Everything written to stderr so far (uvicorn lines, tracebacks)."""
        return (self.log_dir / "stderr.log").read_text(errors="replace")

    def health_status(self, timeout: float = 1.0) -> int | None:
        """The status of one GET /health, or None when it cannot connect or gets no answer in time."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status
        except OSError:
            return None
        finally:
            connection.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /health until 200; FakeVllmExited if the process ends first, TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FakeVllmExited(f"fake-vllm exited with {self.process.returncode}: {self.stderr()[-2000:]}")
            if self.health_status() == 200:
                return
            time.sleep(0.02)
        raise TimeoutError(f"fake-vllm did not become healthy within {timeout} s")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until ``text`` appears on stdout or stderr; TimeoutError (with the tail) otherwise."""
        deadline = time.monotonic() + timeout
        while text not in self.stdout() and text not in self.stderr():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged within {timeout} s; stderr: {self.stderr()[-1000:]}")
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the server process to end; its return code (negative: killed by that signal)."""
        return self.process.wait(timeout=timeout)

    def group(self) -> list[psutil.Process]:
        """Live processes of its process group: the server and its engine children, orphans included."""
        return group_members(self.pid)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole process group and wait until none of it is left."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.05)
            if self.process.poll() is not None and not self.group():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"process group {self.pid} still alive after SIGKILL: {self.group()}")


Spawn = Callable[..., FakeVllm]
"""The type of a fixture that starts fake-vllm processes (``start``'s signature)."""


def start(
    *args: str,
    model: str = "fake/model",
    host: str = "127.0.0.1",
    port: int | None = None,
    ready: bool = True,
    timeout: float = 30.0,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> FakeVllm:
    """Start ``fake-vllm serve MODEL --host H --port P ARGS...``; with ``ready`` wait until /health is 200."""
    directory = log_dir or Path(tempfile.mkdtemp(prefix="fake-vllm-"))
    directory.mkdir(parents=True, exist_ok=True)
    for attempt in range(_PORT_RETRIES):
        chosen = port if port is not None else free_port(host)
        argv = [sys.executable, "-m", "fake_vllm", "serve", model, "--host", host, "--port", str(chosen), *args]
        with (directory / "stdout.log").open("wb") as out, (directory / "stderr.log").open("wb") as err:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        server = FakeVllm(process, host, chosen, directory, argv)
        if not ready:
            return server
        try:
            server.wait_ready(timeout)
        except FakeVllmExited:
            lost_race = port is None and "Address already in use" in server.stderr()
            server.kill()
            if lost_race and attempt + 1 < _PORT_RETRIES:
                continue
            raise
        except BaseException:
            server.kill()
            raise
        return server
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def fake_vllm(*args: str, **options: object) -> Iterator[FakeVllm]:
    """``start`` as a context manager; the whole process group is killed on exit."""
    server = start(*args, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.kill()


@contextlib.asynccontextmanager
async def async_fake_vllm(*args: str, **options: object) -> AsyncIterator[FakeVllm]:
    """``fake_vllm`` for async tests: start-up and teardown run in a thread, off the event loop."""
    server = await asyncio.to_thread(lambda: start(*args, **options))  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await asyncio.to_thread(server.kill)


def run_argv(argv: Sequence[str]) -> list[str]:
    """The command that runs fake-vllm with ``argv`` from this interpreter (for supervisor configs)."""
    return [sys.executable, "-m", "fake_vllm", *argv]
