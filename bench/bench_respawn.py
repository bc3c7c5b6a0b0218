"""Crash -> respawn latency of the real supervisor, with `restart_delay: 0`, over N restarts.

The crasher writes its own Unix time just before exiting; the supervisor's `spawned` event of the next run
carries the time the new process had been started. The difference is how long the supervisor took to see the
exit, reap the group and start again (supervisord: ~1000 ms; PM2: ~9 ms; target: under 5 ms).

    .venv/bin/python bench/bench_respawn.py [--restarts 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from supervisor.config.schema import parse_config
from supervisor.core.views import EventKind
from supervisor.loop.fleet import Supervisor

CRASHER = "import os, sys, time; open(sys.argv[1], 'a').write(f'{time.time()}\\n'); os._exit(1)"


async def measure(restarts: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        stamps = Path(tmp) / "exits.txt"
        config = parse_config(
            {
                "supervisor": {"state_dir": tmp},
                "llmModels": {
                    "crasher": {
                        "command": sys.executable,
                        "args": ["-c", CRASHER, str(stamps)],
                        "restart_policy": "always",
                        "restart_delay": 0,
                        "max_restarts": None,
                    }
                },
            },
            "bench",
        )
        supervisor = Supervisor(config)
        await supervisor.start()
        try:
            while len([e for e in supervisor.events("crasher") if e.kind is EventKind.SPAWNED]) <= restarts:
                await asyncio.sleep(0.05)
        finally:
            await supervisor.shutdown()
        spawns = [e.time for e in supervisor.events("crasher") if e.kind is EventKind.SPAWNED]
        exits = [float(line) for line in stamps.read_text().split()]
    return [(spawn - exit_) * 1000 for exit_, spawn in zip(exits, spawns[1:], strict=False)][:restarts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--restarts", type=int, default=20)
    args = parser.parse_args()
    latencies = sorted(asyncio.run(measure(args.restarts)))
    p90 = latencies[int(0.9 * (len(latencies) - 1))]
    print(
        f"restarts: {len(latencies)}  median: {statistics.median(latencies):.2f} ms  p90: {p90:.2f} ms  "
        f"max: {latencies[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
