"""runtime/usage.py against real processes: a run's processes and what they hold, the host, marked leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fake_vllm.testing import FakeVllm, fake_vllm
from supervisor.runtime.process_group import RUN_MARKER_ENV
from supervisor.runtime.usage import (
    INSTANCE_ENV,
    host_figures,
    marked_processes,
    run_pids,
    stop_processes,
    usage_of,
)

pytestmark = pytest.mark.usefixtures("no_process_left")


@pytest.fixture
def server() -> Iterator[FakeVllm]:
    with fake_vllm() as running:
        running.wait_ready()
        yield running


def sleeper(**env: str) -> subprocess.Popen[bytes]:
    """A process that only waits, with extra environment variables."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, **env})


def test_a_runs_processes_are_its_whole_group_and_their_memory_is_summed(server: FakeVllm) -> None:
    """The group leader's pids are every member (EngineCore and worker included); RSS and CPU are their sums."""
    pids = run_pids(server.pid)
    assert sorted(pids) == sorted(p.pid for p in server.group())
    assert len(pids) == 3
    usage = usage_of(pids)
    assert usage.pids == tuple(pids)
    assert usage.rss == pytest.approx(sum(psutil.Process(p).memory_info().rss for p in pids), rel=0.2)
    assert usage.cpu_seconds > 0


def test_a_process_that_leads_no_group_counts_with_its_descendants() -> None:
    """A container's main process seen from the host leads no group: it and its children are the run."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); time.sleep(60)",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(parent.pid).children():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (child,) = psutil.Process(parent.pid).children()
        assert sorted(run_pids(parent.pid)) == sorted([parent.pid, child.pid])
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()


def test_gone_processes_count_nothing() -> None:
    """A pid that no longer exists: no pids, no memory."""
    proc = sleeper()
    proc.kill()
    proc.wait()
    assert run_pids(proc.pid) == []
    assert usage_of([proc.pid]).rss == 0


def test_host_memory_available_is_what_linux_calls_available(tmp_path: Path) -> None:
    """available is MemAvailable from /proc/meminfo (not total - free); disk is the given path's."""
    host = host_figures(tmp_path)
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    assert host.memory_available == pytest.approx(available, rel=0.1)
    assert host.memory_total == int(meminfo["MemTotal"].split()[0]) * 1024
    assert host.disk_path == str(tmp_path)
    assert host.disk_free == pytest.approx(psutil.disk_usage(str(tmp_path)).free, rel=0.1)
    assert 0 <= host.cpu_percent <= 100
    assert len(host.load_average) == 3
    assert host_figures(tmp_path / "missing").disk_free is None


def test_marked_processes_are_found_by_instance_and_stopped() -> None:
    """Only processes carrying this instance's mark are found; stop_processes ends them."""
    ours = sleeper(**{INSTANCE_ENV: "inst-a", RUN_MARKER_ENV: "m#1:4"})
    theirs = sleeper(**{INSTANCE_ENV: "inst-b", RUN_MARKER_ENV: "m:1"})
    try:
        deadline = time.monotonic() + 10
        while not (found := marked_processes("inst-a")):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert [(p.pid, p.unit, p.run) for p in found] == [(ours.pid, "m#1", 4)]
        assert found[0].rss > 0
        assert stop_processes("inst-a", [ours.pid, theirs.pid], timeout=5) == [ours.pid]  # not another's
        assert not psutil.pid_exists(ours.pid)  # stopped (and reaped, being our child)
        assert theirs.poll() is None
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
