"""A fake GPU shared by fake-vllm instances through a directory, so orphaned engines really hold memory.

Each holder writes ``<pid>.json`` = ``{"pid", "create_time", "bytes", "name"}`` into the directory. An entry
counts only while a process with that pid *and that create time* is alive and not a zombie: a pid reused by
an unrelated process, or a holder killed with SIGKILL (which cannot remove its file), never counts. The
check-then-register step runs under an exclusive ``flock`` on ``.lock`` so two instances starting together
cannot both see the memory free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

GIB = 1024**3
# psutil derives create_time from boot time plus start ticks; equal processes agree to far better than this.
_CREATE_TIME_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class Holder:
    """One registered holder of fake GPU memory."""

    pid: int
    create_time: float
    bytes: int
    name: str


def process_create_time(pid: int) -> float:
    """The create time psutil reports for ``pid`` (what entries record and are checked against)."""
    return psutil.Process(pid).create_time()


def is_alive(holder: Holder) -> bool:
    """Whether the holder's own process (same pid, same start) still runs."""
    try:
        process = psutil.Process(holder.pid)
        if abs(process.create_time() - holder.create_time) > _CREATE_TIME_TOLERANCE:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class FakeGpu:
    """The device: a total size and a directory of holders."""

    def __init__(self, directory: Path, total_bytes: int) -> None:
        self.directory = directory
        self.total_bytes = total_bytes

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the device's exclusive lock (blocking) for a check-then-register step."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def holders(self) -> list[Holder]:
        """Every readable entry, live or not."""
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                found.append(
                    Holder(int(data["pid"]), float(data["create_time"]), int(data["bytes"]), str(data.get("name", "")))
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written or foreign file: it holds nothing
        return found

    def used_bytes(self) -> int:
        """Memory held by live holders; removes the entries of dead ones while at it."""
        used = 0
        for holder in self.holders():
            if is_alive(holder):
                used += holder.bytes
            else:
                self.entry_path(holder.pid).unlink(missing_ok=True)
        return used

    def free_bytes(self) -> int:
        """Total minus what live holders hold (never below 0)."""
        return max(0, self.total_bytes - self.used_bytes())

    def entry_path(self, pid: int) -> Path:
        """Where ``pid``'s entry lives."""
        return self.directory / f"{pid}.json"

    def register(self, pid: int, create_time: float, size: int, name: str) -> None:
        """Record that ``pid`` holds ``size`` bytes (atomic: readers see the old or the new file)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{pid}.tmp"
        temporary.write_text(json.dumps({"pid": pid, "create_time": create_time, "bytes": size, "name": name}))
        os.replace(temporary, self.entry_path(pid))

    def unregister(self, pid: int) -> None:
        """Forget ``pid``'s entry (a graceful exit frees its memory)."""
        self.entry_path(pid).unlink(missing_ok=True)
