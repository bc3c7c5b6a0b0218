"""The engine's processes as vLLM lays them out: forked and renamed as setproctitle does, reaped, stopped,
and talking over a socket in JSON lines. The worker process lives here too; EngineCore is engine_core.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import traceback
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fake_vllm import vllm_log
from fake_vllm.shutdown import flush_streams


def set_process_title(title: str) -> None:
    """What setproctitle does on Linux: rewrite the argv area (``ps``, psutil's name) and ``comm`` (15 bytes).

    Best effort: where /proc is missing or read-only the process keeps its name.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path("/proc/self/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
        text = title.encode()[: max(0, arg_end - arg_start - 1)]
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(arg_start)
            memory.write(text + b"\0" * (arg_end - arg_start - len(text)))
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(title[:15])


def after_fork_in_child(close: list[int]) -> None:
    """Leave the parent's event loop and descriptors behind (asyncio does this itself from Python 3.12)."""
    with contextlib.suppress(AttributeError):
        asyncio.events._set_running_loop(None)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)


def fork_child(close: list[int], child: Callable[[], int]) -> int:
    """Fork; the child closes ``close``, runs ``child`` and exits with its status (never returns)."""
    flush_streams()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        after_fork_in_child(close)
        status = child()
    except BaseException:  # a child must never return into its parent's code
        traceback.print_exc()
    finally:
        flush_streams()
        os._exit(status)


def reap(pid: int) -> int | None:
    """The exit status of ``pid`` if it has ended (as subprocess reports it: -N for a signal), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    if not done:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def wait_gone(pid: int, timeout: float) -> int | None:
    """Reap ``pid``, waiting up to ``timeout`` seconds; its status, or None if it still runs."""
    deadline = time.monotonic() + timeout
    while True:
        status = reap(pid)
        if status is not None or time.monotonic() >= deadline:
            return status
        time.sleep(0.002)


def stop_child(pid: int, grace: float) -> int | None:
    """Wait for a child told to stop; SIGKILL it once ``grace`` is over. Its exit status."""
    status = wait_gone(pid, grace)
    if status is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        status = wait_gone(pid, 10.0)
    return status


class Outbox:
    """Messages for one socket, written together once per round of the event loop: one system call for all
    the steps and stats of that round, however many requests are running."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self._pending: list[bytes] = []

    def put(self, message: list[Any]) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(json.dumps(message, separators=(",", ":")).encode())

    def flush(self) -> None:
        if self._pending and self.writer is not None and not self.writer.is_closing():
            self.writer.write(b"\n".join(self._pending) + b"\n")
        self._pending.clear()


async def read_messages(reader: asyncio.StreamReader) -> AsyncGenerator[list[Any], None]:
    """The JSON messages on a socket, one per line, read in large chunks; ends at end-of-file."""
    buffer = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(1 << 18):
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                yield json.loads(line)


# -- the worker ------------------------------------------------------------------------------------------


# A worker whose EngineCore was killed outlives it for a while, holding its memory: in vLLM 0.32 the worker
# was still running when the API server exited 4.9 s after the SIGKILL of EngineCore, and gone 5 s later.
ORPHANED_WORKER_LINGERS = 6.0
STOP_WORKER = b"stop"  # what an EngineCore that exits by itself tells its workers before it goes


def worker_main(name: str, conn: socket.socket, gpu_dir: Path | None) -> int:
    """A worker: it holds its share of the fake GPU and lives as long as its EngineCore does (a few seconds
    more when its EngineCore was killed)."""
    set_process_title(f"VLLM::{name}")
    # Signals to the group are EngineCore's business: the worker ends with it, whichever way it ends.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    told = b""
    with contextlib.suppress(OSError):
        while data := conn.recv(64):
            told = (told + data)[-len(STOP_WORKER) :]
    if told != STOP_WORKER:
        time.sleep(ORPHANED_WORKER_LINGERS)  # the parent died without a word: vLLM's worker notices late
    vllm_log.info(
        "multiproc_executor.py:843", "Parent process exited, terminating worker queues", process=vllm_log.WORKER
    )
    if gpu_dir is not None:
        (gpu_dir / f"{os.getpid()}.json").unlink(missing_ok=True)
    return 0


@dataclass(slots=True)
class WorkerProcess:
    pid: int
    name: str
    conn: socket.socket
