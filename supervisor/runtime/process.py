"""Run a model as a local process group: argv only, its own session, output read line by line.

Why it is built this way:
- The leader starts in a new session (`start_new_session=True`), so its pid is also its process group id and
  every child it forks (vLLM's EngineCore, tensor-parallel workers) is in that group. Stop signals go to the
  group (docs/design/defects.md #5). Limit, shared by every pgid-based supervisor: a descendant that calls `setsid()` or
  `setpgid()` itself leaves the group and escapes the group signals.
- The leader is started with a plain `subprocess.Popen` (vfork + exec, ~0.3 ms) and its exit is awaited through
  a pidfd registered with `loop.add_reader`: the loop wakes the moment the leader dies, and reaps it there.
  asyncio's `create_subprocess_exec` took 1-4 ms more per start on the 2-core dev machine (a transport, and on
  3.11 a watcher thread per child that wakes the loop through its self-pipe): most of what a crash -> respawn
  cost us besides the new process's own start-up (bench/bench_respawn.py). Where the kernel has no pidfd
  (before Linux 5.3) a thread waits for the exit without reaping it and hands it to the loop.
- stdout and stderr are pipes *we* create and read with `loop.add_reader`. vLLM's engine children inherit the
  pipes, so the pipes say nothing about the leader: its exit is seen through the pidfd however long an
  orphan keeps them open.
- When the leader exits we drain whatever it wrote before dying before reporting the exit, so that the
  line explaining a crash (a CUDA OOM traceback) reaches the sink before the exit does.
- Signalling the group and seeing it gone are in `supervisor.runtime.process_group`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

import psutil

from supervisor.core.states import ExitStatus
from supervisor.runtime.base import LineSink, SpawnError, Stream, discard_line
from supervisor.runtime.lines import LineSplitter
from supervisor.runtime.process_group import RUN_MARKER_ENV, run_marker, signal_group, wait_group_gone

log = logging.getLogger(__name__)

# The kernel counts a process's start in these ticks (USER_HZ) since boot.
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Small reads keep one chatty process from holding the event loop for long in a single callback.
_READ_SIZE = 32 * 1024
# Enough to empty a pipe buffer (64 KiB by default, 1 MiB at most) when the leader exits.
_MAX_DRAIN_READS = 64


class LineReader:
    """Reads one pipe without blocking, splits the bytes into lines and hands each line to the sink."""

    def __init__(self, fd: int, stream: Stream, sink: LineSink) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._stream = stream
        self._sink = sink
        self._lines = LineSplitter()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._read_once)
        self.closed = False

    def _read_once(self) -> bool:
        """Read what is there; True if more may be waiting."""
        if self.closed:
            return False
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._deliver(self._lines.flush())
            self.close()
            return False
        self._deliver(self._lines.feed(data))
        return True

    def drain(self) -> None:
        """Deliver everything the pipe holds right now, without waiting for more."""
        for _ in range(_MAX_DRAIN_READS):
            if not self._read_once():
                return

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._sink = discard_line  # nothing more to deliver; see Run.wait_gone

    def _deliver(self, lines: list[str]) -> None:
        for line in lines:
            try:
                self._sink(self._stream, line)
            except Exception:
                # A broken sink must not stop the reading: an unread pipe would block the model when it fills.
                log.exception("output sink failed on a %s line", self._stream)


class ProcessRun:
    """One running process group, created by `ProcessRuntime.spawn`."""

    def __init__(self, proc: subprocess.Popen[bytes], create_time: float, readers: list[LineReader]) -> None:
        self._proc = proc
        self._pgid = proc.pid  # start_new_session: the leader leads its own group
        self._ident = f"{proc.pid}:{create_time:.2f}"
        self._readers = readers
        self._group_gone = False
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except OSError:  # a kernel before 5.3 (ENOSYS); the child exists until we reap it
            threading.Thread(target=self._wait_in_thread, name=f"wait-exit-{proc.pid}", daemon=True).start()
        else:
            self._loop.add_reader(self._pidfd, self._reap)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def ident(self) -> str:
        return self._ident

    def _wait_in_thread(self) -> None:
        # WNOWAIT: only the loop reaps, in `_reap`, so the exit status is read in one place.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._reap)

    def _reap(self) -> None:
        """Called on the loop when the leader has exited: reap it, deliver its last words, report the exit."""
        code = self._proc.poll()  # waitpid(WNOHANG); sets returncode, so Popen has nothing left to reap
        if code is None or self._exit.done():
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        # Everything the leader wrote is in the pipes now; deliver it before anyone hears of the exit.
        for reader in self._readers:
            reader.drain()
        status = ExitStatus(code=None, signal=-code) if code < 0 else ExitStatus(code=code)
        self._exit.set_result(status)

    async def wait_exit(self) -> ExitStatus:
        # shield: one cancelled waiter must not cancel the shared future other waiters rely on.
        return await asyncio.shield(self._exit)

    async def wait_gone(self) -> None:
        await self.wait_exit()
        await wait_group_gone(self._pgid)
        self._group_gone = True
        # Every writer of the group is dead: read what is left, then stop reading. A process that escaped
        # the group may still hold the pipes; its lines must not be attributed to this run any more.
        for reader in self._readers:
            reader.drain()
            reader.close()

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        # Once the group is known gone its id may be reused by an unrelated new session: never signal it.
        if not self._group_gone:
            signal_group(self._pgid, sig)


class ProcessRuntime:
    """Spawns `argv` with `env` added to the supervisor's environment, optionally in `cwd`."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
        if not argv:
            raise ValueError("argv must name a command")
        self.argv = tuple(argv)
        self.env = dict(env or {})
        self.cwd = cwd

    def _environment(self, model_id: str, run_number: int) -> dict[str, str]:
        env = {**os.environ, **self.env}
        # Python servers (vLLM) buffer stdout when it is a pipe; unbuffered, their lines arrive as written.
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[RUN_MARKER_ENV] = run_marker(model_id, run_number)
        return env

    async def spawn(self, model_id: str, run_number: int, sink: LineSink) -> ProcessRun:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        before = _boot_tick()
        try:
            # argv is the operator's configured command, never a shell line. Popen blocks the loop only until the
            # child has exec'd (vfork), as asyncio's own spawn does.
            proc = subprocess.Popen(  # noqa: S603, ASYNC220
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=self.cwd,
                env=self._environment(model_id, run_number),
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in an argument
            for fd in (out_r, err_r):
                os.close(fd)
            if isinstance(exc, ValueError):
                raise SpawnError(f"cannot start {self.argv[0]!r}: {exc}") from exc
            raise SpawnError(_describe_spawn_error(self.argv, self.cwd, exc)) from exc
        finally:
            # The child holds its own copies; ours must go or we would never see EOF.
            for fd in (out_w, err_w):
                os.close(fd)
        # The child's start is stamped in whole ticks during Popen. If no tick began meanwhile, that tick is the
        # one psutil will read; asking /proc/<pid>/stat now would stall the loop until the child's exec is over
        # (1-4 ms here).
        create_time = _create_time_at(before) if _boot_tick() == before else _create_time(proc.pid)
        readers = [LineReader(out_r, Stream.STDOUT, sink), LineReader(err_r, Stream.STDERR, sink)]
        return ProcessRun(proc, create_time, readers)


def _describe_spawn_error(argv: Sequence[str], cwd: str | None, exc: OSError) -> str:
    command = " ".join(argv)
    if cwd is not None and not os.path.isdir(cwd):
        return f"cannot start {command!r}: working directory {cwd!r} does not exist or is not a directory"
    if isinstance(exc, FileNotFoundError):
        return f"cannot start {command!r}: command {argv[0]!r} not found"
    if isinstance(exc, PermissionError):
        return f"cannot start {command!r}: {argv[0]!r} is not executable (permission denied)"
    return f"cannot start {command!r}: {exc.strerror or exc}"


def _boot_tick() -> int:
    """Now, in the clock ticks since boot in which /proc/<pid>/stat gives a process's start."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) * _CLOCK_TICKS // 1_000_000_000


def _create_time_at(tick: int) -> float:
    """psutil's create_time of a process that started in `tick` (boot time + start ticks, computed alike)."""
    return tick / _CLOCK_TICKS + psutil.boot_time()


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        # Already exited and reaped: no later process can match this ident, which is what we want.
        return 0.0
