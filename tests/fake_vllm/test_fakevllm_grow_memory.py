"""--grow-memory: the API server's resident memory really grows, at the rate asked, until set to 0."""

from __future__ import annotations

import time

import httpx
import psutil

from fake_vllm.testing import Spawn

MB = 1_000_000


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_grow_memory_adds_resident_memory_until_posted_zero(spawn: Spawn) -> None:
    """At 100 MB/s the server holds 60 MB more within a few seconds; after grow_memory 0 it grows no more."""
    server = spawn("--grow-memory", "100")
    start = _rss(server.pid)
    deadline = time.monotonic() + 10
    while _rss(server.pid) < start + 60 * MB:
        assert time.monotonic() < deadline, f"rss grew only {(_rss(server.pid) - start) / MB:.0f} MB"
        time.sleep(0.05)
    answer = httpx.post(f"{server.base_url}/admin/faults", json={"grow_memory": 0}, timeout=10)
    assert answer.json()["grow_memory"] == 0
    held = _rss(server.pid)
    time.sleep(0.5)  # five growth steps would have added 50 MB
    assert _rss(server.pid) < held + 10 * MB


def test_a_negative_rate_is_refused(spawn: Spawn) -> None:
    """The value is checked like every fault's: a negative rate is an error naming the fault."""
    server = spawn()
    answer = httpx.post(f"{server.base_url}/admin/faults", json={"grow_memory": -1}, timeout=10)
    assert answer.status_code == 400
    assert "grow_memory" in answer.text
