"""Engine children that outlive a SIGKILL of the server, and the fake GPU they keep busy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from fake_vllm.testing import FakeVllm, Spawn

FREE_MEMORY = "on startup is less than desired GPU memory utilization"


def _children(server: FakeVllm) -> list[psutil.Process]:
    return [p for p in server.group() if p.pid != server.pid]


def _wait_gone(processes: list[psutil.Process], timeout: float = 10) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive


def test_children_are_named_like_vllm_and_share_the_group(spawn: Spawn) -> None:
    """--engine-children 3: VLLM::EngineCore under the server, its two workers under it, all in one group."""
    server = spawn("--engine-children", "3")
    children = _children(server)
    by_name = {p.name(): p for p in children}
    assert sorted(by_name) == ["VLLM::EngineCore", "VLLM::Worker_TP0", "VLLM::Worker_TP1"]
    core = by_name["VLLM::EngineCore"]
    assert core.ppid() == server.pid
    assert by_name["VLLM::Worker_TP0"].ppid() == core.pid
    assert by_name["VLLM::Worker_TP1"].ppid() == core.pid
    assert all(os.getpgid(p.pid) == server.pid for p in children)
    assert sorted(p.pid for p in children) == sorted(
        httpx.get(f"{server.base_url}/admin/stats").json()["engine_children"]
    )


def test_children_survive_sigkill_of_the_server(spawn: Spawn) -> None:
    """SIGKILL of the API server leaves its engine children running, as vLLM's EngineCore does."""
    server = spawn("--engine-children", "2")
    children = _children(server)
    os.kill(server.pid, signal.SIGKILL)
    assert server.wait_exit(timeout=10) == -signal.SIGKILL
    time.sleep(0.3)  # give a wrongly parent-bound child the chance to die, so the check below means something
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)
    assert {p.pid for p in server.group()} == {p.pid for p in children}


def test_sigterm_takes_the_children_down(spawn: Spawn) -> None:
    """A graceful stop terminates the engine children before exiting 0."""
    server = spawn("--engine-children", "2")
    children = _children(server)
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=15) == 0
    _wait_gone(children)


def test_engine_death_takes_the_children_down(spawn: Spawn) -> None:
    """When the engine dies its processes are gone while the API server still answers 503."""
    server = spawn("--engine-children", "1", "--engine-dead-after", "0.1", "--engine-dead-exit-after", "never")
    _wait_gone(_children(server))
    assert server.health_status() == 503


def _entries(directory: Path) -> dict[int, dict[str, object]]:
    return {int(p.stem): json.loads(p.read_text()) for p in directory.glob("*.json")}


def test_orphans_hold_the_fake_gpu_until_killed(spawn: Spawn, tmp_path: Path) -> None:
    """The orphan cascade: a SIGKILLed server's children keep the memory, so the next start fails like vLLM;
    once they are gone the same start succeeds."""
    gpu = ["--fake-gpu-dir", str(tmp_path), "--gpu-memory-utilization", "0.6"]
    first = spawn("--engine-children", "2", *gpu)
    orphans = _children(first)
    assert set(_entries(tmp_path)) == {p.pid for p in orphans}
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(timeout=10)

    second = spawn(*gpu, ready=False)
    assert second.wait_exit(timeout=15) == 1
    err = second.stderr()
    assert (
        f"ValueError: Free memory on device (31.73/79.33 GiB) {FREE_MEMORY} (0.6, 47.60 GiB). "
        "Decrease GPU memory utilization or reduce GPU memory used by other processes."
    ) in err
    assert "RuntimeError: Engine core initialization failed." in err

    for orphan in orphans:
        orphan.kill()
    _wait_gone(orphans)
    third = spawn(*gpu)
    assert third.health_status() == 200


def test_two_small_instances_share_the_device(spawn: Spawn, tmp_path: Path) -> None:
    """Two instances at 0.45 fit on one fake device; a third does not."""
    gpu = ["--fake-gpu-dir", str(tmp_path), "--gpu-memory-utilization", "0.45"]
    spawn(*gpu)
    spawn("--engine-children", "1", *gpu)
    third = spawn(*gpu, ready=False)
    assert third.wait_exit(timeout=15) == 1
    assert FREE_MEMORY in third.stderr()


@pytest.mark.parametrize("in_process", [True, False])
def test_graceful_stop_frees_the_memory(spawn: Spawn, tmp_path: Path, in_process: bool) -> None:
    """The engine processes register their shares (the server itself with --engine-children 0); SIGTERM
    removes every entry."""
    extra = ["--engine-children", "0"] if in_process else ["--tensor-parallel-size", "2"]
    server = spawn("--fake-gpu-dir", str(tmp_path), *extra)
    holders = {server.pid} if in_process else {p.pid for p in _children(server)}
    assert set(_entries(tmp_path)) == holders
    assert len(holders) == (1 if in_process else 3)  # EngineCore and two workers
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 0
    assert _entries(tmp_path) == {}


def test_stale_and_reused_pid_entries_never_count(spawn: Spawn, tmp_path: Path) -> None:
    """An entry of a dead pid, or of a live pid with another create time (pid reuse), holds nothing."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    everything = int(79.33 * 1024**3)
    (tmp_path / f"{dead.pid}.json").write_text(json.dumps({"pid": dead.pid, "create_time": 1.0, "bytes": everything}))
    me = psutil.Process()
    (tmp_path / f"{me.pid}.json").write_text(
        json.dumps({"pid": me.pid, "create_time": me.create_time() - 100, "bytes": everything})
    )
    server = spawn("--fake-gpu-dir", str(tmp_path), "--gpu-memory-utilization", "0.9")
    assert server.health_status() == 200


@pytest.mark.parametrize("with_children", [True, False])
def test_sigkilled_holder_leaves_a_stale_entry_that_does_not_count(
    spawn: Spawn, tmp_path: Path, with_children: bool
) -> None:
    """After the whole group is SIGKILLed (no cleanup ran) a new instance still starts."""
    extra = ["--engine-children", "1"] if with_children else []
    first = spawn("--fake-gpu-dir", str(tmp_path), *extra)
    first.kill()
    assert _entries(tmp_path)  # nobody removed it
    second = spawn("--fake-gpu-dir", str(tmp_path))
    assert second.health_status() == 200
