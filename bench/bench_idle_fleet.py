"""Supervisor CPU and memory while it looks after N idle fake vLLM servers with 1 s liveness probes, next to
a lean reference prober on the same servers for as long.

The supervisor runs in this process; once every model is healthy, the CPU time this process spends over the
measurement window is the supervisor's cost (the servers are separate processes and are not counted). Then,
for as long, a second process runs the reference: raw asyncio, one kept-alive connection per server,
a minimal `GET /health` every second, status line checked, body read by Content-Length. It is the floor
for the probing alone; the ratio says what the supervisor spends on top (its probe client, owner loops,
state machine, recorder). The two windows follow each other: probes from the reference would otherwise add
access-log lines that the supervisor reads from the servers' output during its own window.

    .venv/bin/python bench/bench_idle_fleet.py [--models 100] [--seconds 30] [--probe-alone] [--profile out.prof]

`--probe-alone` adds a third window: the supervisor's probe client (HttpProbe) driving the same probes in a
process of its own, to tell the probe's share from the rest of the supervisor's.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from supervisor.config.schema import parse_config
from supervisor.core.states import State
from supervisor.loop.fleet import Fleet
from supervisor.probe import HttpProbe

FAKE_VLLM = str(Path(sys.executable).with_name("fake-vllm"))
INTERVAL = 1.0


@dataclass(frozen=True)
class Usage:
    """CPU and probes of one process over a window."""

    cpu: float  # seconds of CPU, user + system
    wall: float
    probes: int
    rss_mib: float

    def line(self, name: str) -> str:
        share = 100 * self.cpu / self.wall
        per_probe = 1e3 * self.cpu / self.probes if self.probes else float("nan")
        return (
            f"{name:<10} CPU {share:5.2f} % of one core, {per_probe:.3f} ms per probe "
            f"({self.probes / self.wall:.0f} probes/s), RSS {self.rss_mib:.0f} MiB"
        )


@contextmanager
def measured(probes: list[int]) -> Iterator[list[Usage]]:
    """Measure this process's CPU and the growth of probes[0] over the with-block."""
    me = psutil.Process()
    out: list[Usage] = []
    before, count, wall = me.cpu_times(), probes[0], time.monotonic()
    yield out
    after = me.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    out.append(Usage(cpu, time.monotonic() - wall, probes[0] - count, me.memory_info().rss / 2**20))


# --- the lean reference, run in its own process ---------------------------------------------------------


async def lean_target(port: int, probes: list[int], first: asyncio.Event) -> None:
    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    writer: asyncio.StreamWriter | None = None
    while True:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            probes[0] += 1
            first.set()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            if writer is not None:
                writer.close()
            writer = None
        await asyncio.sleep(INTERVAL)


async def http_probe_target(port: int, probes: list[int], first: asyncio.Event) -> None:
    """The supervisor's own probe client, alone: what the probing costs without the rest of the supervisor."""
    probe = HttpProbe(f"http://127.0.0.1:{port}/v1")
    while True:
        if (await probe(5.0)).ok:
            probes[0] += 1
            first.set()
        await asyncio.sleep(INTERVAL)


TARGETS = {"lean": lean_target, "httpprobe": http_probe_target}


async def reference(kind: str, ports: list[int], seconds: float) -> None:
    """Probe every port each second; once all have answered, measure `seconds` and print the figures."""
    probes = [0]
    firsts = [asyncio.Event() for _ in ports]
    target = TARGETS[kind]
    tasks = [asyncio.create_task(target(port, probes, first)) for port, first in zip(ports, firsts, strict=True)]
    await asyncio.gather(*(first.wait() for first in firsts))
    with measured(probes) as usage:
        await asyncio.sleep(seconds)
    print(json.dumps(usage[0].__dict__), flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_reference(kind: str, ports: list[int], seconds: float) -> Usage:
    """Run a reference in its own process; its figures once it has measured itself."""
    command = [sys.executable, __file__, "--reference", kind, "--ports", ",".join(map(str, ports))]
    process = await asyncio.create_subprocess_exec(*command, "--seconds", str(seconds), stdout=asyncio.subprocess.PIPE)
    output, _ = await process.communicate()
    return Usage(**json.loads(output))


# --- the supervisor ---------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each stays bound until all are chosen, so none is handed out twice."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def fleet_config(ports: list[int]) -> dict[str, dict[str, object]]:
    return {
        f"m{index:03d}": {
            "command": FAKE_VLLM,
            "args": ["serve", f"model-{index}", "--port", str(port)],
            "endpoints": {"base_url": f"http://127.0.0.1:{port}/v1"},
            "health_check_interval": INTERVAL,
            "startup_timeout": 300,
        }
        for index, port in enumerate(ports)
    }


class ProbeCounter:
    """An observer that counts the fleet's probes."""

    def __init__(self) -> None:
        self.probes = [0]

    def on_event(self, event: object) -> None:
        pass

    def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
        self.probes[0] += 1


async def measure(models: int, seconds: float, profile: str | None, alone: bool) -> None:
    ports = free_ports(models)
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({"supervisor": {"state_dir": tmp}, "llmModels": fleet_config(ports)}, "bench")
        fleet = Fleet(config)
        counter = ProbeCounter()
        fleet.add_observer(counter)
        await fleet.start()
        try:
            began = time.monotonic()
            while not all(s.state is State.HEALTHY for s in fleet.statuses()):
                await asyncio.sleep(0.5)
            print(f"{models} models healthy after {time.monotonic() - began:.1f} s")
            profiler = cProfile.Profile(time.process_time) if profile else None  # CPU, not waits
            with measured(counter.probes) as usage:
                if profiler:
                    profiler.enable()
                await asyncio.sleep(seconds)
                if profiler:
                    profiler.disable()
            ours = usage[0]
            lean = await run_reference("lean", ports, seconds)
            print(f"over {ours.wall:.0f} s each, {models} idle models probed every {INTERVAL:g} s:")
            print(ours.line("supervisor"))
            if alone:
                print((await run_reference("httpprobe", ports, seconds)).line("HttpProbe"))
            print(lean.line("lean"))
            print(f"ratio      {ours.cpu / ours.wall / (lean.cpu / lean.wall):.1f}x the lean prober's CPU")
            if profiler and profile:
                profiler.dump_stats(profile)
                pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        finally:
            await fleet.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the supervisor over the window (slows it)")
    parser.add_argument(
        "--probe-alone", action="store_true", help="also measure HttpProbe alone, in its own process, for as long"
    )
    parser.add_argument("--reference", choices=sorted(TARGETS), help=argparse.SUPPRESS)  # a reference process
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        asyncio.run(reference(args.reference, [int(p) for p in args.ports.split(",")], args.seconds))
    else:
        asyncio.run(measure(args.models, args.seconds, args.profile, args.probe_alone))


if __name__ == "__main__":
    main()
