"""Starting and stopping the engine child processes of one fake-vllm server.

Children stay in the server's process group and session (a supervisor stops "the group"), do not inherit
the listening socket (so a SIGKILLed server frees its port while its engine keeps the GPU, as with vLLM),
and are reaped here when the server shuts down gracefully.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

_READY_TIMEOUT = 30.0


class ChildStartError(RuntimeError):
    """An engine child died or stayed silent before reporting ready."""


def child_name(index: int) -> str:
    """vLLM's process titles: the first child is the EngineCore, the others its tensor-parallel workers."""
    return "VLLM::EngineCore" if index == 0 else f"VLLM::Worker_TP{index - 1}"


class EngineChildren:
    """The children of one server, in start order."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        """Pids of the children started so far."""
        return [p.pid for p in self.processes]

    def start(self, count: int, gpu_dir: Path | None, bytes_each: int) -> None:
        """Start ``count`` children and block until each has registered its memory and reported ready."""
        pipes = []
        for index in range(count):
            read_end, write_end = os.pipe()
            command = [
                sys.executable,
                "-m",
                "fake_vllm.engine_child",
                "--name",
                child_name(index),
                "--ready-fd",
                str(write_end),
            ]
            if gpu_dir is not None:
                command += ["--gpu-dir", str(gpu_dir), "--bytes", str(bytes_each)]
            # Same session and group as the server on purpose; close_fds keeps the listening socket out.
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=(write_end,))  # noqa: S603
            os.close(write_end)
            self.processes.append(process)
            pipes.append(read_end)
        try:
            self._wait_ready(pipes)
        finally:
            for fd in pipes:
                os.close(fd)

    def _wait_ready(self, pipes: list[int]) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        waiting = set(pipes)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildStartError(f"{len(waiting)} engine child(ren) did not report ready in {_READY_TIMEOUT} s")
            readable, _, _ = select.select(list(waiting), [], [], remaining)
            for fd in readable:
                if not os.read(fd, 64):  # EOF before "ready": the child died
                    raise ChildStartError("an engine child exited during start-up")
                waiting.discard(fd)

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM every child, SIGKILL those still alive after ``grace`` seconds, reap them all."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
