"""The local process runtime against real processes: exits, output, process groups, leftovers."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from supervisor.core.states import ExitStatus
from supervisor.runtime import process, process_group
from supervisor.runtime.base import SpawnError, Stream
from supervisor.runtime.process import LineReader, ProcessRun, ProcessRuntime
from supervisor.runtime.process_group import RUN_MARKER_ENV, stop_leftover

pytestmark = pytest.mark.usefixtures("no_process_left")

WaitUntil = Callable[[Callable[[], bool], float], Awaitable[None]]  # the conftest fixture's type

# How late an exit may be reported, measured from the child's own timestamp taken just before it died.
# Generous for a 2-core machine shared by several test runs; a polling supervisor (supervisord) needs ~1 s.
EXIT_TOLERANCE = 0.5

# A child that starts a grandchild which ignores SIGTERM, inherits the pipes, and says when it is ready.
GRANDCHILD_IGNORING_SIGTERM = textwrap.dedent(
    """
    import subprocess, sys
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('grandchild ready', flush=True); time.sleep(120)"
    )
    grandchild = subprocess.Popen([sys.executable, "-c", code])
    print(f"grandchild pid {grandchild.pid}", flush=True)
    {after}
    """
)


class Lines:
    """A sink that records what it is given."""

    def __init__(self) -> None:
        self.items: list[tuple[Stream, str]] = []

    def __call__(self, stream: Stream, text: str) -> None:
        self.items.append((stream, text))

    def texts(self) -> list[str]:
        return [text for _, text in self.items]

    def has(self, text: str) -> bool:
        return any(text in line for line in self.texts())

    def value_after(self, prefix: str) -> str:
        return next(line[len(prefix) :] for line in self.texts() if line.startswith(prefix))


async def spawn_python(code: str, sink: Lines, env: dict[str, str] | None = None, cwd: str | None = None) -> ProcessRun:
    runtime = ProcessRuntime([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd)
    return await runtime.spawn("m1", 1, sink)


async def stop(run: ProcessRun) -> None:
    run.kill()
    await asyncio.wait_for(run.wait_gone(), 10)


async def test_exit_code_reported_the_moment_the_process_exits() -> None:
    """wait_exit returns the exit code within EXIT_TOLERANCE of the child's last act."""
    sink = Lines()
    run = await spawn_python("import os, time; print(time.time(), flush=True); os._exit(3)", sink)
    status = await run.wait_exit()
    returned_at = time.time()
    assert status == ExitStatus(code=3)
    assert returned_at - float(sink.texts()[0]) < EXIT_TOLERANCE
    await run.wait_gone()


async def test_death_by_signal_is_reported_as_the_signal() -> None:
    """A process killed by SIGKILL reports signal 9, promptly, and no exit code."""
    sink = Lines()
    code = "import os, signal, time; print(time.time(), flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    run = await spawn_python(code, sink)
    status = await run.wait_exit()
    returned_at = time.time()
    assert status == ExitStatus(code=None, signal=signal.SIGKILL)
    assert status.describe() == "signal 9"
    assert returned_at - float(sink.texts()[0]) < EXIT_TOLERANCE
    await run.wait_gone()


async def test_leader_exit_seen_while_a_grandchild_holds_the_pipes(wait_until: WaitUntil) -> None:
    """vLLM's engine children keep stdout open; the API server's exit is still reported at once."""
    sink = Lines()
    after = "import os, time; print(time.time(), flush=True); os._exit(0)"
    run = await spawn_python(GRANDCHILD_IGNORING_SIGTERM.replace("{after}", after), sink)
    status = await asyncio.wait_for(run.wait_exit(), 10)
    returned_at = time.time()
    assert status == ExitStatus(code=0)
    exit_stamp = next(float(line) for line in sink.texts() if line[:1].isdigit())
    assert returned_at - exit_stamp < EXIT_TOLERANCE
    grandchild = int(sink.value_after("grandchild pid "))
    assert psutil.pid_exists(grandchild)
    await wait_until(lambda: sink.has("grandchild ready"), 10)  # the grandchild still writes to our pipe
    await stop(run)
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


async def test_grandchild_ignoring_sigterm_is_killed_and_waited_for(wait_until: WaitUntil) -> None:
    """terminate() stops the leader but not a SIGTERM-proof grandchild; wait_gone waits until kill()."""
    sink = Lines()
    after = "import time; time.sleep(120)"
    run = await spawn_python(GRANDCHILD_IGNORING_SIGTERM.replace("{after}", after), sink)
    await wait_until(lambda: sink.has("grandchild ready"), 10)
    grandchild = psutil.Process(int(sink.value_after("grandchild pid ")))

    run.terminate()
    assert await asyncio.wait_for(run.wait_exit(), 10) == ExitStatus(code=None, signal=signal.SIGTERM)
    gone = asyncio.ensure_future(run.wait_gone())
    done, _ = await asyncio.wait({gone}, timeout=0.5)
    assert not done, "wait_gone returned while the grandchild was alive"
    assert grandchild.is_running()

    run.kill()
    await asyncio.wait_for(gone, 10)
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


async def test_leader_is_reaped_by_the_time_its_exit_is_reported() -> None:
    """No zombie is left for anyone else to reap: the exit status was collected when the exit was reported."""
    run = await spawn_python("import os; os._exit(5)", Lines())
    assert await asyncio.wait_for(run.wait_exit(), 10) == ExitStatus(code=5)
    assert run.pid is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(run.pid, os.WNOHANG)
    await run.wait_gone()


async def test_concurrent_runs_each_report_their_own_exit() -> None:
    """Several runs exiting at about the same time: each exit is reported once, with its own code."""
    runs = [await spawn_python(f"import os; os._exit({code})", Lines()) for code in range(5)]
    statuses = await asyncio.wait_for(asyncio.gather(*(run.wait_exit() for run in runs)), 10)
    assert statuses == [ExitStatus(code=code) for code in range(5)]
    await asyncio.gather(*(run.wait_gone() for run in runs))


async def test_without_pidfd_exits_and_group_ends_are_still_seen(
    monkeypatch: pytest.MonkeyPatch, wait_until: WaitUntil
) -> None:
    """On a kernel without pidfd_open the exit is awaited by a thread and the group's end is polled."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    sink = Lines()
    run = await spawn_python("import os, time; print(time.time(), flush=True); os._exit(4)", sink)
    assert await asyncio.wait_for(run.wait_exit(), 10) == ExitStatus(code=4)
    assert time.time() - float(sink.texts()[0]) < EXIT_TOLERANCE
    await asyncio.wait_for(run.wait_gone(), 10)

    sink = Lines()
    after = "import os; os._exit(0)"
    run = await spawn_python(GRANDCHILD_IGNORING_SIGTERM.replace("{after}", after), sink)
    assert await asyncio.wait_for(run.wait_exit(), 10) == ExitStatus(code=0)
    await wait_until(lambda: sink.has("grandchild ready"), 10)
    grandchild = psutil.Process(int(sink.value_after("grandchild pid ")))
    run.kill()
    await asyncio.wait_for(run.wait_gone(), 10)
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


async def test_the_end_of_an_orphaned_member_wakes_wait_gone(
    monkeypatch: pytest.MonkeyPatch, wait_until: WaitUntil
) -> None:
    """The last member's death is seen through its pidfd: with every rescan timer an hour long, it still is."""
    for name in ("_GONE_POLL_FIRST", "_GONE_POLL_MAX", "_GONE_RESCAN_WATCHED"):
        monkeypatch.setattr(process_group, name, 3600.0)
    sink = Lines()
    after = "import os; os._exit(0)"
    run = await spawn_python(GRANDCHILD_IGNORING_SIGTERM.replace("{after}", after), sink)
    assert await asyncio.wait_for(run.wait_exit(), 10) == ExitStatus(code=0)
    await wait_until(lambda: sink.has("grandchild ready"), 10)
    grandchild = psutil.Process(int(sink.value_after("grandchild pid ")))
    gone = asyncio.ensure_future(run.wait_gone())
    done, _ = await asyncio.wait({gone}, timeout=0.2)
    assert not done, "wait_gone returned while the grandchild was alive"
    grandchild.kill()
    await asyncio.wait_for(gone, 10)
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


async def test_stdout_and_stderr_arrive_in_the_order_written() -> None:
    """Lines of both streams reach the sink in write order, each labelled with its stream."""
    code = """
        import signal, sys
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        for i in range(6):
            print(f"line {i}", file=sys.stdout if i % 2 == 0 else sys.stderr, flush=True)
            signal.sigwait([signal.SIGUSR1])  # the test acknowledges each line: no race between the pipes
    """
    sink = Lines()
    holder: dict[str, int] = {}

    def acknowledging_sink(stream: Stream, text: str) -> None:
        sink(stream, text)
        os.kill(holder["pid"], signal.SIGUSR1)

    runtime = ProcessRuntime([sys.executable, "-c", textwrap.dedent(code)])
    run = await runtime.spawn("m1", 1, acknowledging_sink)
    assert run.pid is not None
    holder["pid"] = run.pid
    assert await asyncio.wait_for(run.wait_exit(), 10) == ExitStatus(code=0)
    await run.wait_gone()
    expected = [(Stream.STDOUT if i % 2 == 0 else Stream.STDERR, f"line {i}") for i in range(6)]
    assert sink.items == expected


async def test_last_words_are_delivered_before_the_exit() -> None:
    """The line explaining a crash is in the sink when wait_exit returns, even after a flood of output."""
    code = """
        import os
        # One big write: at exit up to a full pipe buffer (64 KiB) is still unread.
        os.write(1, "".join(f"loading {i}\\n" for i in range(20000)).encode())
        os.write(2, b"torch.OutOfMemoryError: CUDA out of memory\\n")
        os._exit(1)
    """
    sink = Lines()
    run = await spawn_python(code, sink)
    assert await asyncio.wait_for(run.wait_exit(), 20) == ExitStatus(code=1)
    assert (Stream.STDERR, "torch.OutOfMemoryError: CUDA out of memory") in sink.items
    stdout = [text for stream, text in sink.items if stream is Stream.STDOUT]
    assert stdout == [f"loading {i}" for i in range(20000)]
    await run.wait_gone()


async def test_drain_delivers_everything_already_in_the_pipe_without_yielding() -> None:
    """drain() (run when the leader exits) empties a full pipe synchronously, partial lines excepted."""
    read_fd, write_fd = os.pipe()
    payload = "".join(f"line {i}\n" for i in range(10000)).encode()  # more than a single read takes
    os.set_blocking(write_fd, False)
    written = os.write(write_fd, payload[:60003])
    sink = Lines()
    reader = LineReader(read_fd, Stream.STDOUT, sink)
    reader.drain()  # no await: the event loop never ran the reader callback
    complete = payload[:written].decode().split("\n")[:-1]
    assert sink.texts() == complete
    os.close(write_fd)
    reader.drain()
    assert reader.closed
    assert sink.texts()[-1] == payload[:written].decode().split("\n")[-1]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (b"no newline at the end", ["no newline at the end"]),
        (b"crlf\r\nline\n", ["crlf", "line"]),
        (b"\rLoading 10%\rLoading 50%\rLoading 100%\ndone\n", ["Loading 10%", "Loading 50%", "Loading 100%", "done"]),
        (b"bad \xff\xfe bytes\n", ["bad \ufffd\ufffd bytes"]),
        ("caf\u00e9 \u2603\n".encode(), ["caf\u00e9 \u2603"]),
        (b"a\n\nb\n", ["a", "", "b"]),
    ],
)
async def test_bytes_become_lines(written: bytes, expected: list[str]) -> None:
    """Partial last lines, CRLF, progress-bar redraws, invalid UTF-8 and empty lines become readable lines."""
    sink = Lines()
    run = await spawn_python(f"import os; os.write(1, {written!r})", sink)
    await run.wait_exit()
    await run.wait_gone()
    assert sink.texts() == expected


async def test_a_huge_line_is_delivered_in_pieces_without_loss() -> None:
    """A 3 MiB line without a newline arrives whole, split into bounded pieces on character boundaries."""
    sink = Lines()
    run = await spawn_python("import sys; sys.stdout.write('\u00e9' * 1_500_000); sys.stdout.write('\\nend\\n')", sink)
    await asyncio.wait_for(run.wait_exit(), 20)
    await run.wait_gone()
    texts = sink.texts()
    assert texts[-1] == "end"
    assert len(texts) > 2
    assert "".join(texts[:-1]) == "\u00e9" * 1_500_000


async def test_a_huge_line_of_invalid_bytes_does_not_hang_the_reader() -> None:
    """600 KB of UTF-8 continuation bytes without a newline are delivered, not looped over forever."""
    sink = Lines()
    run = await spawn_python("import os; os.write(1, b'\\x80' * 600_000)", sink)
    await asyncio.wait_for(run.wait_exit(), 20)
    await asyncio.wait_for(run.wait_gone(), 20)
    assert "".join(sink.texts()) == "\ufffd" * 600_000


async def test_python_output_arrives_before_the_process_flushes() -> None:
    """PYTHONUNBUFFERED is set, so a Python server's unflushed print reaches the sink while it runs."""
    sink = Lines()
    run = await spawn_python("import time; print('loading weights'); time.sleep(120)", sink)
    deadline = time.monotonic() + 10
    while not sink.has("loading weights") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert sink.has("loading weights")
    await stop(run)


async def test_environment_adds_to_the_supervisors_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config env is added to os.environ; PYTHONUNBUFFERED defaults to 1; each process carries the run marker."""
    monkeypatch.setenv("FROM_SUPERVISOR", "inherited")
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    code = """
        import os
        for name in ("FROM_SUPERVISOR", "HF_HOME", "PYTHONUNBUFFERED", "LLM_SUPERVISOR_RUN"):
            print(name, os.environ.get(name))
    """
    sink = Lines()
    run = await spawn_python(code, sink, env={"HF_HOME": "/data/hf"})
    await run.wait_exit()
    await run.wait_gone()
    assert sink.texts() == [
        "FROM_SUPERVISOR inherited",
        "HF_HOME /data/hf",
        "PYTHONUNBUFFERED 1",
        f"{RUN_MARKER_ENV} m1:1",
    ]


async def test_an_explicit_pythonunbuffered_is_kept() -> None:
    """A PYTHONUNBUFFERED set in the model's env is not overridden."""
    sink = Lines()
    code = "import os; print(os.environ['PYTHONUNBUFFERED'])"
    run = await spawn_python(code, sink, env={"PYTHONUNBUFFERED": ""})
    await run.wait_exit()
    await run.wait_gone()
    assert sink.texts() == [""]


async def test_cwd_is_used(tmp_path: Path) -> None:
    """The process starts in the configured working directory."""
    sink = Lines()
    run = await spawn_python("import os; print(os.getcwd())", sink, cwd=str(tmp_path))
    await run.wait_exit()
    await run.wait_gone()
    assert sink.texts() == [str(tmp_path)]


async def test_ident_is_pid_and_create_time() -> None:
    """The ident names the pid and its start time, so a reused pid can be told apart."""
    run = await spawn_python("import time; time.sleep(120)", Lines())
    assert run.pid is not None
    pid_text, create_text = run.ident.split(":")
    assert int(pid_text) == run.pid
    assert abs(float(create_text) - psutil.Process(run.pid).create_time()) < 0.01
    await stop(run)


async def test_ident_is_read_from_proc_when_a_clock_tick_passes_during_the_spawn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start tick is known from the clock unless a tick began during Popen; then /proc says, to the same ident."""
    ticks = itertools.count(10**9)
    monkeypatch.setattr(process, "_boot_tick", lambda: next(ticks))
    run = await spawn_python("import time; time.sleep(120)", Lines())
    assert run.pid is not None
    pid_text, create_text = run.ident.split(":")
    assert int(pid_text) == run.pid
    assert abs(float(create_text) - psutil.Process(run.pid).create_time()) < 0.01
    await stop(run)


async def test_a_broken_sink_does_not_stop_the_reading(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in the sink is logged and the following lines are still delivered."""
    seen: list[str] = []

    def sink(stream: Stream, text: str) -> None:
        seen.append(text)
        if text == "first":
            raise RuntimeError("sink bug")

    run = await ProcessRuntime([sys.executable, "-c", "print('first'); print('second')"]).spawn("m1", 1, sink)
    await run.wait_exit()
    await run.wait_gone()
    assert seen == ["first", "second"]
    assert "output sink failed" in caplog.text


async def test_signals_after_the_group_is_gone_are_harmless() -> None:
    """terminate() and kill() on a finished run do nothing and raise nothing."""
    run = await spawn_python("pass", Lines())
    await run.wait_exit()
    await run.wait_gone()
    run.terminate()
    run.kill()
    await run.wait_gone()


@pytest.mark.parametrize(
    ("argv", "cwd", "expected"),
    [
        (["/nonexistent/vllm", "serve"], None, "command '/nonexistent/vllm' not found"),
        (["no-such-command-llm-supervisor"], None, "command 'no-such-command-llm-supervisor' not found"),
        ([sys.executable, "-c", "pass"], "/nonexistent/dir", "working directory '/nonexistent/dir' does not exist"),
    ],
)
async def test_spawn_error_names_the_command(argv: list[str], cwd: str | None, expected: str) -> None:
    """A command that cannot start raises SpawnError with a message naming what is wrong."""
    with pytest.raises(SpawnError, match=expected) as excinfo:
        await ProcessRuntime(argv, cwd=cwd).spawn("m1", 1, Lines())
    assert argv[0] in str(excinfo.value)


async def test_spawn_error_for_a_file_that_is_not_executable(tmp_path: Path) -> None:
    """A file without the execute bit raises SpawnError saying so."""
    script = tmp_path / "serve.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(SpawnError, match="is not executable"):
        await ProcessRuntime([str(script)]).spawn("m1", 1, Lines())


async def test_spawn_error_leaks_no_file_descriptors() -> None:
    """Failed spawns close the pipes they opened."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(SpawnError):
            await ProcessRuntime(["/nonexistent/vllm"]).spawn("m1", 1, Lines())
    assert len(os.listdir("/proc/self/fd")) == before


async def test_finished_runs_leak_no_file_descriptors() -> None:
    """A run that is gone has closed both of its pipes."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        run = await spawn_python("print('x')", Lines())
        await run.wait_exit()
        await run.wait_gone()
    assert len(os.listdir("/proc/self/fd")) == before


async def test_stop_leftover_stops_a_matching_group(wait_until: WaitUntil) -> None:
    """A leftover whose pid and create time match is stopped with its SIGTERM-proof grandchild."""
    sink = Lines()
    after = "import time; time.sleep(120)"
    run = await spawn_python(GRANDCHILD_IGNORING_SIGTERM.replace("{after}", after), sink)
    await wait_until(lambda: sink.has("grandchild ready"), 10)
    grandchild = psutil.Process(int(sink.value_after("grandchild pid ")))
    started = time.monotonic()
    assert await stop_leftover(run.ident, stop_timeout=0.3)
    assert time.monotonic() - started >= 0.3  # SIGTERM was not enough, so it waited, then killed
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
    await asyncio.wait_for(run.wait_gone(), 10)


async def test_stop_leftover_returns_quickly_when_sigterm_suffices() -> None:
    """A leftover that obeys SIGTERM is stopped without waiting for stop_timeout."""
    run = await spawn_python("import time; time.sleep(120)", Lines())
    started = time.monotonic()
    assert await stop_leftover(run.ident, stop_timeout=30)
    assert time.monotonic() - started < 5
    assert (await run.wait_exit()).signal == signal.SIGTERM
    await run.wait_gone()


async def test_stop_leftover_never_signals_a_reused_pid(wait_until: WaitUntil) -> None:
    """A live process whose create time differs from the ident's is someone else: left untouched."""
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM", flush=True))
        print("ready", flush=True)
        time.sleep(120)
    """
    sink = Lines()
    run = await spawn_python(code, sink)
    await wait_until(lambda: sink.has("ready"), 10)
    pid, create_time = run.ident.split(":")
    assert not await stop_leftover(f"{pid}:{float(create_time) - 3600}", stop_timeout=0.1)
    assert run.pid is not None
    assert psutil.Process(run.pid).is_running()
    assert not sink.has("got SIGTERM")
    await stop(run)
    assert not sink.has("got SIGTERM")


async def test_stop_leftover_of_a_vanished_run_is_false() -> None:
    """A leftover that no longer exists is nothing to stop."""
    run = await spawn_python("pass", Lines())
    await run.wait_exit()
    await run.wait_gone()
    assert not await stop_leftover(run.ident, stop_timeout=0.1)


async def test_stop_leftover_stops_an_orphaned_engine_whose_leader_died(wait_until: WaitUntil) -> None:
    """The engine child of a dead API server (same group, our marker) is still found and stopped."""
    sink = Lines()
    after = "import os; os._exit(0)"
    run = await spawn_python(GRANDCHILD_IGNORING_SIGTERM.replace("{after}", after), sink)
    await run.wait_exit()
    await wait_until(lambda: sink.has("grandchild ready"), 10)
    grandchild = psutil.Process(int(sink.value_after("grandchild pid ")))
    assert await stop_leftover(run.ident, stop_timeout=0.2)
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
    await asyncio.wait_for(run.wait_gone(), 10)


async def test_stop_leftover_ignores_an_unmarked_orphaned_group() -> None:
    """A leaderless group without our marker (a stranger that reused the pid) is never signalled."""
    env = {k: v for k, v in os.environ.items() if k != RUN_MARKER_ENV}
    code = (
        "import subprocess, sys; "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); print(g.pid, flush=True)"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", code], env=env, start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    assert leader.stdout is not None
    try:
        grandchild = psutil.Process(int(leader.stdout.readline()))
        create_time = psutil.Process(leader.pid).create_time()
        leader.wait(10)
        assert not await stop_leftover(f"{leader.pid}:{create_time}", stop_timeout=0.1)
        assert grandchild.is_running()
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.stdout.close()
        leader.wait(10)


@pytest.mark.parametrize("ident", ["", "abc", "12", "12:x", "container-3f2a"])
async def test_stop_leftover_rejects_a_malformed_ident(ident: str) -> None:
    """An ident that is not 'pid:create_time' is a caller error, not a silent no-op."""
    with pytest.raises(ValueError, match="not a process run identity"):
        await stop_leftover(ident, stop_timeout=0.1)
