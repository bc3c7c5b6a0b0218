"""Model output on disk: redacted, timestamped, rotated files; read back with `tail` and `follow`.

One file per model, `<log_dir>/<model_id>.log`, both streams interleaved in arrival order, rotated at
`max_bytes` into `.1` (newest) .. `.N` (oldest). Every line reads

    2026-11-22T07:27:23.123Z stderr | torch.OutOfMemoryError: CUDA out of memory ...
    2026-11-22T07:27:24.001Z ------ | --- run 3 started (pid 1234) ---

(UTC, milliseconds; vLLM's tracebacks carry no time of their own, and `------` marks the supervisor's own
lines). Secrets are masked before anything reaches the disk. Each line is one `os.write` on an O_APPEND
file: no buffer to lose on a crash and every line visible to `tail` at once. Measured on a loaded 2-core
machine: 6-8 us a line with redaction; a child printing 120,000 lines/s through the process runtime into
this writer delays the event loop by under 12 ms at worst. `tail` reads files: from async code call
`read_tail`, which runs it in a thread (docs/design/defects.md #8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from supervisor.store.redact import Redactor

log = logging.getLogger(__name__)

SUPERVISOR_STREAM = "------"
# A model id, or a replica of one ("qwen#1"): never a path, so a name cannot reach outside the log folder.
_MODEL_ID = re.compile(r"[A-Za-z0-9._-]{1,64}(#[0-9]{1,4})?")


def log_path(log_dir: str | Path, model_id: str, index: int = 0) -> Path:
    """The current file (index 0) or the index-th rotated one."""
    if not _MODEL_ID.fullmatch(model_id):
        raise ValueError(f"not a model id: {model_id!r}")
    name = f"{model_id}.log" if index == 0 else f"{model_id}.log.{index}"
    return Path(log_dir) / name


class LogWriter:
    """Appends one model's output lines to its rotating log file. Not thread-safe: use it from the loop."""

    def __init__(
        self,
        log_dir: str | Path,
        model_id: str,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 3,
        redactor: Redactor | None = None,
        max_line_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = log_path(log_dir, model_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._log_dir, self._model_id = log_dir, model_id
        self._max_bytes, self._backups = max_bytes, backups
        self._redact = redactor or Redactor({})
        self._max_line_bytes = max_line_bytes
        self._clock = clock
        self._second = -1
        self._second_text = ""
        self._dropped = 0
        self._fd = -1
        self._closed = False
        self._open()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, text: str) -> None:
        """Log one output line (usable as the runtime's line sink)."""
        self._append(stream, self._redact(text))

    def start_run(self, run_number: int, pid: int | None) -> None:
        """Mark where a run begins, so a reader can tell runs apart."""
        self.note(f"--- run {run_number} started (pid {pid}) ---")

    def note(self, text: str) -> None:
        """Log a line of the supervisor's own (an exit, a stop) among the model's output."""
        self._append(SUPERVISOR_STREAM, self._redact(text))

    def close(self) -> None:
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timestamp(self) -> str:
        second, millisecond = divmod(round(self._clock() * 1000), 1000)
        if second != self._second:  # formatting the date is the costly part: once a second
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{millisecond:03d}Z"

    def _encode(self, stream: str, text: str) -> bytes:
        text = text.replace("\r", "\\r").replace("\n", "\\n")  # one file line per logged line
        body = text.encode("utf-8", errors="replace")
        if len(body) > self._max_line_bytes:
            cut = body[: self._max_line_bytes].decode("utf-8", errors="ignore")
            body = f"{cut} ... [{len(body) - len(cut.encode())} bytes cut]".encode()
        return f"{self._timestamp()} {stream:<6} | ".encode() + body + b"\n"

    def _append(self, stream: str, text: str) -> None:
        if self._closed:
            raise ValueError(f"log of {self._model_id} is closed")
        data = self._encode(stream, text)
        try:
            if self._dropped:
                # Say what was lost (disk full, say) before the first line that made it.
                self._write(self._encode(SUPERVISOR_STREAM, f"--- {self._dropped} lines lost: write failed ---"))
                self._dropped = 0
            self._write(data)
        except OSError as exc:
            # A full disk must not stop the model or flood our own log: count, warn once, retry next line.
            if not self._dropped:
                log.warning("cannot write the log of %s (%s); counting lost lines", self._model_id, exc)
            self._dropped += 1

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            self._open()  # the reopen after a rotation failed; try again
        if self._size and self._size + len(data) > self._max_bytes:
            self._rotate()
        os.write(self._fd, data)
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        try:
            if self._backups == 0:
                self.path.unlink(missing_ok=True)
            for index in range(self._backups, 0, -1):
                newer = log_path(self._log_dir, self._model_id, index - 1)
                if newer.exists():
                    os.replace(newer, log_path(self._log_dir, self._model_id, index))
        except OSError as exc:
            # Keep logging into the oversized file rather than lose lines; try again max_bytes later.
            log.warning("cannot rotate the log of %s (%s); it grows past max_bytes", self._model_id, exc)
            self._open()
            self._size = 0
        else:
            self._open()


@dataclass(frozen=True, slots=True)
class LogTail:
    """The newest lines, oldest first, and how many lines all retained files hold.

    `position` marks where these lines end (the current file's inode and size when read; (0, 0) when
    there was none): `follow(..., start=tail.position)` continues with exactly the next line.
    """

    lines: list[str]
    total_lines: int
    position: tuple[int, int] = (0, 0)


def _retained_files(log_dir: str | Path, model_id: str) -> list[Path]:
    """Existing log files, newest first (the current file, then .1, .2, ...)."""
    files = []
    index = 0
    while (path := log_path(log_dir, model_id, index)).exists() or index == 0:
        if path.exists():
            files.append(path)
        index += 1
    return files


_BLOCK = 64 * 1024
# At most this much per poll of a live file, so a far-behind follower yields to the loop between reads.
_FOLLOW_READ = 1024 * 1024


def _last_lines(path: Path, count: int) -> tuple[list[bytes], tuple[int, int]]:
    """The file's last `count` lines, reading backwards only as far as needed, and where they end."""
    with path.open("rb") as file:
        position = file.seek(0, os.SEEK_END)
        end = (os.fstat(file.fileno()).st_ino, position)
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    if position > 0:
        lines = lines[1:]  # began mid-line
    return (lines[-count:] if count > 0 else []), end


# Line counts by path: (inode, bytes counted, lines in them). Files only grow between rotations, so the
# next count reads only what was appended; a rotated file is counted once more under its new name.
_counts: dict[str, tuple[int, int, int]] = {}


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        stat = os.fstat(file.fileno())
        inode, counted, lines = _counts.get(str(path), (stat.st_ino, 0, 0))
        if inode != stat.st_ino or stat.st_size < counted:
            counted, lines = 0, 0
        file.seek(counted)
        while chunk := file.read(1024 * 1024):
            lines += chunk.count(b"\n")
            counted += len(chunk)
    _counts[str(path)] = (stat.st_ino, counted, lines)
    return lines


def tail(log_dir: str | Path, model_id: str, lines: int) -> LogTail:
    """The newest `lines` lines across the current and rotated files, oldest first.

    Cost: reading backwards just far enough for the lines; `total_lines` reads only what was appended
    since the last call (a freshly rotated file once). Blocking file IO: use `read_tail` from async code.
    A rotation between reading two files can repeat or skip a few lines in that one answer.
    """
    collected: list[bytes] = []
    total = 0
    position = (0, 0)
    for index, path in enumerate(_retained_files(log_dir, model_id)):
        try:
            if len(collected) < lines or index == 0:
                found, end = _last_lines(path, lines - len(collected))
                collected = found + collected
                position = end if index == 0 else position
            total += _count_lines(path)
        except FileNotFoundError:
            continue  # rotated away while we read
    return LogTail([line.decode("utf-8", errors="replace") for line in collected], total, position)


async def read_tail(log_dir: str | Path, model_id: str, lines: int) -> LogTail:
    """`tail` off the event loop (docs/design/defects.md #8: no file reads inside async handlers)."""
    return await asyncio.to_thread(tail, log_dir, model_id, lines)


class _Follower:
    """Reads the lines appended to one model's log, including files rotated away between two reads."""

    def __init__(self, log_dir: str | Path, model_id: str, start: tuple[int, int] | None) -> None:
        self._log_dir, self._model_id = log_dir, model_id
        self.path = log_path(log_dir, model_id)
        self._file: BinaryIO | None = None
        self._partial = b""
        # Where to begin, noted without holding a file open (a follower may never be iterated):
        # a tail's end, or the current end of the log. Inode 0 (no file then) begins at the first file.
        if start is None:
            start = (0, 0)
            with contextlib.suppress(FileNotFoundError):
                stat = self.path.stat()
                start = (stat.st_ino, stat.st_size)
        self._start = start

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _open_at_start(self) -> BinaryIO | None:
        """The file holding the start position, opened there (it may have been rotated since)."""
        inode, offset = self._start
        for path in _retained_files(self._log_dir, self._model_id):
            with contextlib.suppress(FileNotFoundError):
                if inode and path.stat().st_ino == inode:
                    file = path.open("rb")
                    file.seek(offset)
                    return file
        try:
            return self.path.open("rb")  # no log then, or ours is gone: everything now is new
        except FileNotFoundError:
            return None

    def read_new(self) -> list[str]:
        if self._file is None:
            self._file = self._open_at_start()
            if self._file is None:
                return []
        lines = self._read(self._file, _FOLLOW_READ)
        ours = os.fstat(self._file.fileno()).st_ino
        try:
            if os.stat(self.path).st_ino == ours:
                return lines
        except FileNotFoundError:
            return lines  # in the middle of a rotation: look again next time
        # Rotated: finish our file, then every file rotated after it, then the new current one.
        lines += self._read(self._file)
        self._file.close()
        for path in self._rotated_after(ours):
            with contextlib.suppress(FileNotFoundError), path.open("rb") as file:
                lines += self._read(file)
        self._file = self.path.open("rb")
        return lines + self._read(self._file, _FOLLOW_READ)

    def _rotated_after(self, inode: int) -> list[Path]:
        rotated = _retained_files(self._log_dir, self._model_id)[1:]  # newest first
        inodes = [path.stat().st_ino for path in rotated]
        newer = rotated[: inodes.index(inode)] if inode in inodes else rotated  # ours deleted: all newer
        return newer[::-1]

    def _read(self, file: BinaryIO, limit: int | None = None) -> list[str]:
        """Complete lines from `file`; without a limit, the whole rest of a finished file."""
        data = self._partial + file.read(-1 if limit is None else limit)
        *complete, self._partial = data.split(b"\n")
        if limit is None and self._partial:
            complete.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", errors="replace") for line in complete]


def follow(
    log_dir: str | Path, model_id: str, poll_interval: float = 0.25, start: tuple[int, int] | None = None
) -> AsyncGenerator[str, None]:
    """Yield the lines appended to the model's log after this call (or after `start`, a `LogTail.position`),
    across rotations, until closed.

    Polls every `poll_interval` seconds while idle (portable, and a log file offers no notification
    without inotify); reads are small increments of a file in the page cache, so they run on the loop.
    """
    return _follow(_Follower(log_dir, model_id, start), poll_interval)


async def _follow(follower: _Follower, poll_interval: float) -> AsyncGenerator[str, None]:
    try:
        while True:
            lines = follower.read_new()
            for line in lines:
                yield line
            if not lines:
                await asyncio.sleep(poll_interval)
    finally:
        follower.close()
