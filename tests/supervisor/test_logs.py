"""Log files: line format, redaction, rotation, tail and follow."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supervisor.store.logs import LogTail, LogWriter, follow, read_tail, tail
from supervisor.store.redact import REDACTED, Redactor, secrets_from_argv

FIXED_TIME = 1795332443.123  # 2026-11-22T07:27:23.123Z


def fixed_clock() -> float:
    return FIXED_TIME


def file_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def body(line: str) -> str:
    """The logged text without its time and stream prefix."""
    return line.split(" | ", 1)[1]


def all_lines_oldest_first(log_dir: Path, model_id: str = "m1") -> list[str]:
    paths = sorted(log_dir.glob(f"{model_id}.log.*"), key=lambda p: -int(p.suffix[1:]))
    return [line for path in [*paths, log_dir / f"{model_id}.log"] for line in file_lines(path)]


def test_line_format_is_time_stream_text(tmp_path: Path) -> None:
    """Each line is 'UTC time, stream, |, text'; a run start is marked by a supervisor line."""
    with LogWriter(tmp_path, "m1", clock=fixed_clock) as writer:
        writer.start_run(3, 1234)
        writer.write("stdout", "INFO Loading weights")
        writer.write("stderr", "Traceback (most recent call last):")
    assert file_lines(tmp_path / "m1.log") == [
        "2026-11-22T07:27:23.123Z ------ | --- run 3 started (pid 1234) ---",
        "2026-11-22T07:27:23.123Z stdout | INFO Loading weights",
        "2026-11-22T07:27:23.123Z stderr | Traceback (most recent call last):",
    ]


def test_writer_appends_to_an_existing_log_and_creates_the_directory(tmp_path: Path) -> None:
    """A new writer (a restarted supervisor) appends; a missing log directory is created."""
    log_dir = tmp_path / "state" / "logs"
    with LogWriter(log_dir, "m1") as writer:
        writer.write("stdout", "first")
    with LogWriter(log_dir, "m1") as writer:
        writer.write("stdout", "second")
    assert [body(line) for line in file_lines(log_dir / "m1.log")] == ["first", "second"]


def test_embedded_newlines_stay_on_one_line(tmp_path: Path) -> None:
    """A note with newlines cannot forge extra log lines."""
    with LogWriter(tmp_path, "m1") as writer:
        writer.note("exited\nfake line\r")
    assert [body(line) for line in file_lines(tmp_path / "m1.log")] == ["exited\\nfake line\\r"]


@pytest.mark.parametrize("model_id", ["../etc", "a/b", "", "x" * 65])
def test_model_ids_cannot_escape_the_log_directory(tmp_path: Path, model_id: str) -> None:
    """An id outside the config's [A-Za-z0-9._-]{1,64} is refused, so no path escapes log_dir."""
    with pytest.raises(ValueError, match="not a model id"):
        LogWriter(tmp_path, model_id)


SECRET_ENV = {
    "HF_TOKEN": "hf_thisisnotarealtokenbutlongenough",
    "OPENAI_API_KEY": "sk-proj-abcdefghijklmnopqrstuvwxyz",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG",
    "DB_PASSWORD": "correct horse battery",
    "api_token": "lowercase-name-secret",
    "SHORT_KEY": "abc12",
    "HF_HOME": "/data/huggingface",
    "VLLM_MAX_TOKENS": "131072",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer eyJhbGciOi.J9.eyJzdWIi", f"Authorization: Bearer {REDACTED}"),
        ("auth=bearer abcdef123456==", f"auth=bearer {REDACTED}"),
        ("token hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345 used", f"token {REDACTED} used"),
        ("key=sk-abcdefghijklmnopqrstuvwxyz0123", f"key={REDACTED}"),
        ("env says hf_thisisnotarealtokenbutlongenough", f"env says {REDACTED}"),
        ("aws wJalrXUtnFEMI/K7MDENG!", f"aws {REDACTED}!"),
        ("login with correct horse battery", f"login with {REDACTED}"),
        ("lowercase-name-secret here", f"{REDACTED} here"),
        ("the key abc12 is too short to mask", "the key abc12 is too short to mask"),
        ("HF_HOME=/data/huggingface is not a secret", "HF_HOME=/data/huggingface is not a secret"),
        ("max seq len (131072) is a number", "max seq len (131072) is a number"),
        ("non-default args: {'hf_overrides': {}}", "non-default args: {'hf_overrides': {}}"),
        ("the bearer of bad news", "the bearer of bad news"),
        ("task-manager-for-the-whole-cluster", "task-manager-for-the-whole-cluster"),
    ],
)
def test_redaction(text: str, expected: str) -> None:
    """Bearer, hf_ and sk- tokens and secret-named env values are masked; short values and words are not."""
    assert Redactor(SECRET_ENV)(text) == expected


def test_redaction_happens_before_the_disk(tmp_path: Path) -> None:
    """No secret reaches the log file, whichever stream it came from."""
    with LogWriter(tmp_path, "m1", redactor=Redactor(SECRET_ENV)) as writer:
        writer.write("stdout", f"HF_TOKEN={SECRET_ENV['HF_TOKEN']}")
        writer.write("stderr", "curl -H 'Authorization: Bearer abcdefgh12345'")
    content = (tmp_path / "m1.log").read_text()
    assert SECRET_ENV["HF_TOKEN"] not in content
    assert "abcdefgh12345" not in content
    assert content.count(REDACTED) == 2


def test_secrets_on_the_command_line_are_found() -> None:
    """Values of --api-key style flags are collected, since vLLM prints its arguments."""
    argv = [
        "serve",
        "m",
        "--api-key",
        "s3cr3t-value",
        "--hf-token=hf_x",
        "--port",
        "8001",
        "--tokenizer",
        "Qwen/Q",
        "--max-num-batched-tokens",
        "131072",
        "--tokenizer-mode",
        "auto",
        "--api_key",
        "k2",
    ]
    assert secrets_from_argv(argv) == ["s3cr3t-value", "hf_x", "k2"]
    redact = Redactor({}, secrets=secrets_from_argv(argv))
    assert redact("args: {'api_key': 's3cr3t-value'}") == f"args: {{'api_key': '{REDACTED}'}}"


def test_rotation_keeps_order_and_the_newest_lines(tmp_path: Path) -> None:
    """Rotated files, read oldest to newest, hold consecutive lines ending with the newest; each under max_bytes."""
    with LogWriter(tmp_path, "m1", max_bytes=2000, backups=3) as writer:
        for i in range(1000):
            writer.write("stdout", f"line {i}")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["m1.log", "m1.log.1", "m1.log.2", "m1.log.3"]
    numbers = [int(body(line).split()[1]) for line in all_lines_oldest_first(tmp_path)]
    assert numbers == list(range(numbers[0], 1000))
    assert numbers[0] > 0  # the oldest lines were dropped
    assert all(path.stat().st_size <= 2000 for path in tmp_path.iterdir())


def test_rotation_without_backups_keeps_only_the_current_file(tmp_path: Path) -> None:
    """backups=0 starts the file afresh at max_bytes."""
    with LogWriter(tmp_path, "m1", max_bytes=500, backups=0) as writer:
        for i in range(100):
            writer.write("stdout", f"line {i}")
    assert [path.name for path in tmp_path.iterdir()] == ["m1.log"]
    assert body(file_lines(tmp_path / "m1.log")[-1]) == "line 99"


def test_tail_reads_across_rotated_files(tmp_path: Path) -> None:
    """tail returns the newest N lines in order even when they span several files, and counts all lines."""
    with LogWriter(tmp_path, "m1", max_bytes=3000, backups=4) as writer:
        for i in range(500):
            writer.write("stderr", f"line {i}")
    everything = all_lines_oldest_first(tmp_path)
    for count in (1, 30, 100, 250, len(everything), len(everything) + 10):
        result = tail(tmp_path, "m1", count)
        assert result.lines == everything[-count:]
        assert result.total_lines == len(everything)


def test_tail_keeps_counting_as_the_log_grows(tmp_path: Path) -> None:
    """total_lines follows appends and rotations between calls (its incremental count stays right)."""
    with LogWriter(tmp_path, "m1", max_bytes=4000, backups=2) as writer:
        for i in range(300):
            writer.write("stdout", f"line {i}")
            if i % 37 == 0:
                assert tail(tmp_path, "m1", 5).total_lines == len(all_lines_oldest_first(tmp_path))


def test_tail_of_an_unknown_model_is_empty(tmp_path: Path) -> None:
    """A model that never logged has no lines."""
    assert tail(tmp_path, "m1", 100) == LogTail([], 0)


def bytes_read_by_this_process() -> int:
    """Bytes this process has read through read() calls so far (Linux /proc accounting)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_tail_reads_only_what_it_needs(tmp_path: Path) -> None:
    """On a 5 MB log, tail reads one block backwards; after the first count, only appended bytes."""
    with LogWriter(tmp_path, "m1", max_bytes=50 * 1024 * 1024) as writer:
        for i in range(120_000):
            writer.write("stdout", f"line {i}")
        assert (tmp_path / "m1.log").stat().st_size > 5_000_000
        tail(tmp_path, "m1", 10)  # counts the lines once
        writer.write("stdout", "one more")
        before = bytes_read_by_this_process()
        result = tail(tmp_path, "m1", 10)
        read = bytes_read_by_this_process() - before
    assert body(result.lines[-1]) == "one more"
    assert result.total_lines == 120_001
    assert read < 200 * 1024


def test_a_huge_line_is_cut_with_a_note(tmp_path: Path) -> None:
    """A line over max_line_bytes is cut on a character boundary and says how much was cut."""
    with LogWriter(tmp_path, "m1", max_line_bytes=1000) as writer:
        writer.write("stdout", "\u00e9" * 10_000)
        writer.write("stdout", "next")
    lines = file_lines(tmp_path / "m1.log")
    assert len(lines) == 2
    assert body(lines[0]) == "\u00e9" * 500 + " ... [19000 bytes cut]"
    assert body(lines[1]) == "next"


def test_unicode_garbage_is_written_and_read_back(tmp_path: Path) -> None:
    """Emoji, replacement characters, NULs and lone surrogates neither crash writing nor tail."""
    texts = ["\U0001f525 ok", "bad \ufffd bytes", "nul \x00 inside", "surrogate \udcff here", "\u202eRTL"]
    with LogWriter(tmp_path, "m1") as writer:
        for text in texts:
            writer.write("stdout", text)
    result = tail(tmp_path, "m1", 10)
    assert [body(line) for line in result.lines] == [
        "\U0001f525 ok",
        "bad \ufffd bytes",
        "nul \x00 inside",
        "surrogate ? here",
        "\u202eRTL",
    ]


def test_a_failing_disk_loses_lines_but_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While writes fail (disk full) lines are counted, warned about once, and reported when writing resumes."""
    writer = LogWriter(tmp_path, "m1")
    real_write = LogWriter._write

    def full_disk(self: LogWriter, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LogWriter, "_write", full_disk)
    with caplog.at_level(logging.WARNING):
        for i in range(50):
            writer.write("stdout", f"lost {i}")
    monkeypatch.setattr(LogWriter, "_write", real_write)
    writer.write("stdout", "back")
    writer.close()
    assert [body(line) for line in file_lines(tmp_path / "m1.log")] == ["--- 50 lines lost: write failed ---", "back"]
    assert len([r for r in caplog.records if "cannot write the log" in r.message]) == 1


def test_a_failing_rotation_keeps_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When the rotated name cannot be taken, lines keep going to the current file and one warning says why."""
    (tmp_path / "m1.log.1").mkdir()  # os.replace of a file onto a directory fails
    with caplog.at_level(logging.WARNING), LogWriter(tmp_path, "m1", max_bytes=200, backups=1) as writer:
        for i in range(30):
            writer.write("stdout", f"line {i}")
    assert [body(line) for line in file_lines(tmp_path / "m1.log")] == [f"line {i}" for i in range(30)]
    warnings = [r for r in caplog.records if "cannot rotate" in r.message]
    assert 1 <= len(warnings) <= 30 * 45 // 200 + 1  # at most one per max_bytes written, never one per line


def test_a_closed_writer_refuses_lines(tmp_path: Path) -> None:
    """Writing after close is a caller bug and says so."""
    writer = LogWriter(tmp_path, "m1")
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write("stdout", "late")


def test_writing_is_cheap_enough_for_vllm_bursts(tmp_path: Path) -> None:
    """20,000 redacted lines take well under a second: a burst never stalls the event loop for long."""
    redact = Redactor({**os.environ, **SECRET_ENV})
    line = "(EngineCore_DP0 pid=212) INFO 09-24 20:54:38 [gpu_model_runner.py:1234] Model loading took 4.2 GiB"
    with LogWriter(tmp_path, "m1", redactor=redact, max_bytes=1024 * 1024) as writer:
        started = time.perf_counter()
        for _ in range(20_000):
            writer.write("stdout", line)
        per_line = (time.perf_counter() - started) / 20_000
    # Measured about 8 us a line; 100 us leaves room for a loaded CI machine.
    assert per_line < 100e-6


async def test_read_tail_runs_off_the_loop(tmp_path: Path) -> None:
    """read_tail gives the same answer as tail, from a worker thread."""
    with LogWriter(tmp_path, "m1") as writer:
        writer.write("stdout", "hello")
    assert await read_tail(tmp_path, "m1", 5) == tail(tmp_path, "m1", 5)


async def take(lines: AsyncIterator[str], count: int, timeout: float = 5.0) -> list[str]:
    async def collect() -> list[str]:
        return [await anext(lines) for _ in range(count)]

    return await asyncio.wait_for(collect(), timeout)


async def test_follow_yields_new_lines_only(tmp_path: Path) -> None:
    """follow starts at the end: old lines are not repeated, new ones arrive in order."""
    writer = LogWriter(tmp_path, "m1")
    writer.write("stdout", "old")
    lines = follow(tmp_path, "m1", poll_interval=0.01)
    try:
        writer.write("stdout", "new 1")
        writer.write("stdout", "new 2")
        got = await take(lines, 2)
    finally:
        await lines.aclose()
        writer.close()
    assert [body(line) for line in got] == ["new 1", "new 2"]


async def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    """Following a model that has not logged yet yields its first lines once it does."""
    lines = follow(tmp_path, "m1", poll_interval=0.01)
    try:
        with LogWriter(tmp_path, "m1") as writer:
            writer.write("stdout", "a")
            writer.write("stdout", "b")
        got = await take(lines, 2)
    finally:
        await lines.aclose()
    assert [body(line) for line in got] == ["a", "b"]


# Lines are about 43 bytes, so 600 bytes hold 13: 60 lines between two reads rotate at most 5 times.
@pytest.mark.parametrize("lines_between_polls", [1, 7, 40, 60])
async def test_follow_loses_nothing_across_rotations(tmp_path: Path, lines_between_polls: int) -> None:
    """Lines written across one or several rotations (up to `backups`) between two reads all arrive once, in order."""
    writer = LogWriter(tmp_path, "m1", max_bytes=600, backups=5)
    writer.write("stdout", "before")
    lines = follow(tmp_path, "m1", poll_interval=0.01)
    received: list[str] = []
    try:
        for start in range(0, 200, lines_between_polls):
            batch = range(start, min(start + lines_between_polls, 200))
            for i in batch:
                writer.write("stdout", f"line {i}")
            received += await take(lines, len(batch))
    finally:
        await lines.aclose()
        writer.close()
    assert [body(line) for line in received] == [f"line {i}" for i in range(200)]


async def test_follow_outpaced_by_more_rotations_than_backups_stays_in_order(tmp_path: Path) -> None:
    """When files are deleted before the follower reads them, it skips ahead: in order, no repeats, newest last."""
    writer = LogWriter(tmp_path, "m1", max_bytes=600, backups=2)
    lines = follow(tmp_path, "m1", poll_interval=0.01)
    try:
        writer.write("stdout", "start")
        received = await take(lines, 1)  # the follower now reads the current file
        for i in range(300):
            writer.write("stdout", f"line {i}")
        while body(received[-1]) != "line 299":
            received += await take(lines, 1)
    finally:
        await lines.aclose()
        writer.close()
    numbers = [int(body(line).split()[1]) for line in received[1:]]
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 0  # the file it was reading when the burst began is read to its end
    assert len(numbers) < 300


async def test_an_unstarted_follower_holds_no_file(tmp_path: Path) -> None:
    """follow() notes where 'now' is without opening a file, so an abandoned follower leaks nothing."""
    with LogWriter(tmp_path, "m1") as writer:
        writer.write("stdout", "old")
        before = len(os.listdir("/proc/self/fd"))
        lines = follow(tmp_path, "m1")
        assert len(os.listdir("/proc/self/fd")) == before
        writer.write("stdout", "new")
        assert [body(line) for line in await take(lines, 1)] == ["new"]
        await lines.aclose()


@pytest.mark.parametrize("lines_between", [0, 5, 50])
async def test_tail_then_follow_is_exactly_once(tmp_path: Path, lines_between: int) -> None:
    """`logs --follow`: tail, then follow from its position; lines in between (even rotated) arrive once."""
    writer = LogWriter(tmp_path, "m1", max_bytes=600, backups=5)
    for i in range(20):
        writer.write("stdout", f"line {i}")
    shown = tail(tmp_path, "m1", 5)
    for i in range(20, 20 + lines_between):
        writer.write("stdout", f"line {i}")
    lines = follow(tmp_path, "m1", poll_interval=0.01, start=shown.position)
    try:
        writer.write("stdout", "last")
        followed = await take(lines, lines_between + 1)
    finally:
        await lines.aclose()
        writer.close()
    numbers = [body(line) for line in [*shown.lines, *followed]]
    assert numbers == [f"line {i}" for i in range(15, 20 + lines_between)] + ["last"]


async def test_follow_from_the_tail_of_a_log_not_yet_written(tmp_path: Path) -> None:
    """A tail of nothing, followed, yields the model's first lines from the very start."""
    shown = tail(tmp_path, "m1", 10)
    with LogWriter(tmp_path, "m1") as writer:
        writer.write("stdout", "first")
        lines = follow(tmp_path, "m1", poll_interval=0.01, start=shown.position)
        writer.write("stdout", "second")
        followed = await take(lines, 2)
        await lines.aclose()
    assert [body(line) for line in followed] == ["first", "second"]
