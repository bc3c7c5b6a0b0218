"""Supervisor CPU and memory while it looks after N idle fake vLLM servers with 1 s liveness probes.

The supervisor runs in this process; once every model is healthy, the CPU time this process spends over the
measurement window is the supervisor's cost (the servers are separate processes and are not counted).

    .venv/bin/python bench/bench_idle_fleet.py [--models 100] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

from supervisor.config.schema import parse_config
from supervisor.core.views import State
from supervisor.loop.fleet import Supervisor

FAKE_VLLM = str(Path(sys.executable).with_name("fake-vllm"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fleet(models: int) -> dict[str, dict[str, object]]:
    entries: dict[str, dict[str, object]] = {}
    for index in range(models):
        port = free_port()
        entries[f"m{index:03d}"] = {
            "command": FAKE_VLLM,
            "args": ["serve", f"model-{index}", "--port", str(port)],
            "endpoints": {"base_url": f"http://127.0.0.1:{port}/v1"},
            "health_check_interval": 1,
            "startup_timeout": 300,
        }
    return entries


async def measure(models: int, seconds: float) -> None:
    me = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({"supervisor": {"state_dir": tmp}, "llmModels": fleet(models)}, "bench")
        supervisor = Supervisor(config)
        await supervisor.start()
        try:
            began = time.monotonic()
            while not all(s.state is State.HEALTHY for s in supervisor.statuses()):
                await asyncio.sleep(0.5)
            print(f"{models} models healthy after {time.monotonic() - began:.1f} s")
            cpu_before, wall_before = me.cpu_times(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu_after, wall = me.cpu_times(), time.monotonic() - wall_before
            used = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
            rss = me.memory_info().rss / 2**20
            print(
                f"over {wall:.0f} s: supervisor CPU {100 * used / wall:.1f} % of one core "
                f"({used / wall / models * 1000:.2f} ms per model-second), RSS {rss:.0f} MiB"
            )
        finally:
            await supervisor.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    asyncio.run(measure(args.models, args.seconds))


if __name__ == "__main__":
    main()
