"""Line splitting, exit watching and exit decoding of the Docker runtime, with hand-made streams: no daemon."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.core.states import ExitStatus
from supervisor.runtime.base import Stream
from supervisor.runtime.docker_run import exit_status
from supervisor.runtime.docker_streams import DieNotice, pump_output, wait_for_die
from supervisor.runtime.lines import LineSplitter


@pytest.mark.parametrize(
    ("chunks", "lines", "rest"),
    [
        ([b"a\nb\n"], ["a", "b"], []),
        ([b"par", b"tial\n"], ["partial"], []),
        ([b"crlf\r", b"\nnext\n"], ["crlf", "next"], []),
        ([b"10%\r20%\r"], ["10%"], ["20%"]),
        ([b"\rLoading 10%\rLoading 50%\n"], ["Loading 10%", "Loading 50%"], []),
        ([b"no newline"], [], ["no newline"]),
        ([b"caf\xc3", b"\xa9\n"], ["caf\u00e9"], []),
        ([b"bad \xff\n"], ["bad \ufffd"], []),
    ],
)
def test_line_splitter_joins_chunks_and_ends_lines_like_the_process_runtime(
    chunks: list[bytes], lines: list[str], rest: list[str]
) -> None:
    """\\n, \\r\\n (even split across chunks) and \\r end lines; bytes are joined across chunks before decoding."""
    splitter = LineSplitter()
    got = [line for chunk in chunks for line in splitter.feed(chunk)]
    assert (got, splitter.flush()) == (lines, rest)


def test_runaway_line_is_cut_at_the_limit() -> None:
    """A line longer than the limit is handed on in pieces instead of growing the buffer without bound."""
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert splitter.flush() == ["ij"]


def test_pump_output_keeps_streams_apart_and_flushes_at_the_end() -> None:
    """Chunks of both streams become lines of their own stream, and a final partial line is not lost."""
    seen: list[tuple[Stream, str]] = []
    chunks = [(b"out ", None), (None, b"err 1\nerr"), (b"1\n", None), (None, b" 2")]
    pump_output(chunks, lambda stream, line: seen.append((stream, line)))
    assert seen == [(Stream.STDERR, "err 1"), (Stream.STDOUT, "out 1"), (Stream.STDERR, "err 2")]


def test_pump_output_survives_a_broken_connection() -> None:
    """A stream that breaks mid-way still delivers what came before it, and does not raise."""

    def broken() -> Iterator[tuple[bytes | None, bytes | None]]:
        yield (b"last words\npartial", None)
        raise ConnectionResetError("engine went away")

    seen: list[tuple[Stream, str]] = []
    pump_output(broken(), lambda stream, line: seen.append((stream, line)))
    assert seen == [(Stream.STDOUT, "last words"), (Stream.STDOUT, "partial")]


def die(code: str) -> dict[str, Any]:
    return {"Type": "container", "Action": "die", "Actor": {"ID": "c1", "Attributes": {"exitCode": code}}}


def test_die_event_ends_the_wait_with_its_exit_code() -> None:
    """The first die event is the exit; other events before it are ignored."""
    events = iter([{"Action": "oom", "Actor": {"Attributes": {}}}, die("137")])
    assert wait_for_die(events, resubscribe=_never, sleep=_never) == DieNotice(137)


def test_broken_event_stream_is_reopened_and_an_exit_missed_meanwhile_is_found() -> None:
    """A broken stream is reopened (a failed try retried with backoff); the state read then shows the exit."""
    naps: list[float] = []
    attempts: list[str] = []

    def broken() -> Iterator[dict[str, Any]]:
        yield {"Action": "start", "Actor": {"Attributes": {}}}
        raise ConnectionResetError("daemon restarted")

    def resubscribe() -> tuple[Iterator[dict[str, Any]], DieNotice | None]:
        attempts.append("try")
        if len(attempts) == 1:
            raise ConnectionRefusedError("daemon still down")
        return iter([]), DieNotice(3)

    assert wait_for_die(broken(), resubscribe, sleep=naps.append) == DieNotice(3)
    assert naps == [0.2, 0.4]
    assert len(attempts) == 2


def test_reopened_stream_of_a_running_container_waits_for_its_die_event() -> None:
    """A reconnect that finds the container still running goes on reading the new stream."""
    reopened = iter([die("0")])
    notice = wait_for_die(iter([]), lambda: (reopened, None), sleep=lambda _: None)
    assert notice == DieNotice(0)


@pytest.mark.parametrize(
    ("code", "oom", "expected"),
    [
        (0, False, ExitStatus(0, None, False)),
        (1, False, ExitStatus(1, None, False)),
        (137, False, ExitStatus(137, 9, False)),
        (137, True, ExitStatus(137, 9, True)),
        (143, False, ExitStatus(143, 15, False)),
        (255, False, ExitStatus(255, None, False)),
        (None, False, ExitStatus(None, None, False)),
    ],
)
def test_engine_exit_codes_decode_like_a_shell(code: int | None, oom: bool, expected: ExitStatus) -> None:
    """128+N is death by signal N (137 = SIGKILL); the OOMKilled flag is carried as it is."""
    assert exit_status(code, oom) == expected


def _never(*_: Any) -> Any:
    raise AssertionError("not expected to be called")
