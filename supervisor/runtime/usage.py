"""What processes and the host hold, read through psutil: the memory and CPU time of a run's processes, the
host's CPU, load, memory and disk, and processes a run left behind.

Every function here blocks (it reads /proc): the loop calls them in a worker thread, never on the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from supervisor.runtime.process_group import RUN_MARKER_ENV, live_group_members

# Every process of a run of one supervisor carries this variable too (set by the process runtime): the
# supervisor's instance, so processes of another supervisor on the same host are never taken for ours.
INSTANCE_ENV = "LLM_SUPERVISOR_INSTANCE"


@dataclass(frozen=True, slots=True)
class Usage:
    """What a run's processes hold now."""

    pids: tuple[int, ...]
    rss: int  # bytes of resident memory, summed over the processes
    cpu_seconds: float  # user + system CPU time of the processes, and of children they have reaped


NOTHING = Usage((), 0, 0.0)


def run_pids(pid: int) -> list[int]:
    """The live processes of the run whose main process is `pid`: its whole process group when it leads one
    (a process runtime's run, engine children included), else the process and its descendants (a
    container's main process seen from the host)."""
    try:
        if os.getpgid(pid) == pid:
            return live_group_members(pid)
        proc = psutil.Process(pid)
        return [pid, *(child.pid for child in proc.children(recursive=True))]
    except (ProcessLookupError, psutil.Error):
        return []


def usage_of(pids: Iterable[int]) -> Usage:
    """Resident memory and CPU time summed over `pids`; a process that has gone meanwhile counts nothing."""
    seen, rss, cpu = [], 0, 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                memory = proc.memory_info().rss
                times = proc.cpu_times()
        except psutil.Error:
            continue
        seen.append(pid)
        rss += memory
        cpu += times.user + times.system + times.children_user + times.children_system
    return Usage(tuple(seen), rss, cpu)


@dataclass(frozen=True, slots=True)
class Host:
    cpu_percent: float  # over every CPU, measured over a short interval
    load_average: tuple[float, float, float]  # 1, 5 and 15 minutes
    memory_total: int
    memory_available: int  # what Linux calls available (MemAvailable), not total - free
    disk_path: str
    disk_free: int | None  # None when the path cannot be read


# The CPU share is measured over this interval (in a worker thread): the first psutil reading alone means nothing.
CPU_SAMPLE_SECONDS = 0.1


def host_figures(path: Path) -> Host:
    """The host's CPU, load, memory, and the free space where `path` lives (the supervisor's state)."""
    memory = psutil.virtual_memory()
    try:
        free: int | None = psutil.disk_usage(str(path)).free
    except OSError:
        free = None
    load = psutil.getloadavg()
    return Host(
        cpu_percent=psutil.cpu_percent(interval=CPU_SAMPLE_SECONDS),
        load_average=(load[0], load[1], load[2]),
        memory_total=memory.total,
        memory_available=memory.available,
        disk_path=str(path),
        disk_free=free,
    )


@dataclass(frozen=True, slots=True)
class MarkedProcess:
    """A process started for a run of this supervisor, as its environment says."""

    pid: int
    unit: str  # the run's unit: a model id, or "model#replica"
    run: int
    name: str
    rss: int


def marked_processes(instance: str, exclude: Collection[int] = ()) -> list[MarkedProcess]:
    """Every live process whose environment marks it as part of a run of the supervisor `instance`, except
    `exclude` (pids). Processes of other users are skipped: their environment cannot be read."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        if proc.pid in exclude or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            env = proc.environ()
            if env.get(INSTANCE_ENV) != instance or RUN_MARKER_ENV not in env:
                continue
            unit, _, number = env[RUN_MARKER_ENV].rpartition(":")
            rss = proc.memory_info().rss
        except psutil.Error:
            continue
        if number.isdigit():
            found.append(MarkedProcess(proc.pid, unit, int(number), proc.info["name"] or "", rss))
    return found


def stop_processes(instance: str, pids: Collection[int], timeout: float) -> list[int]:
    """SIGTERM each process that still carries the mark of `instance`, SIGKILL those still alive after
    `timeout`; the pids that were signalled. The mark is read again first: a pid may have been reused."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.environ().get(INSTANCE_ENV) != instance:
                continue
            proc.terminate()
        except psutil.Error:
            continue
        procs.append(proc)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=timeout)
    return [proc.pid for proc in procs]
