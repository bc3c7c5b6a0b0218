"""What the gateway adds to a small request: latency and throughput direct to one fake-vllm server, through
the supervisor's gateway, and through nginx (the reference proxy, upstream connections kept alive).

    .venv/bin/python bench/bench_gateway.py [--requests 2000] [--clients 16] [--seconds 4] [--rounds 3]
        [--client raw|httpx] [--no-nginx] [--progress-timeout S] [--profile gateway.prof]

One fake-vllm server (`--ttft 0 --itl 0`, access log off) is started by the real daemon (`llm-supervisor run`,
one model, a gateway section); nginx (`worker_processes 1`, an upstream with `keepalive 32`) proxies the same
server. Load comes from a separate process per measurement:

- latency: `--requests` sequential non-streamed `/v1/completions` (max_tokens 1) on one kept-alive
  connection, after a warm-up; median and p99;
- throughput: `--clients` concurrent kept-alive connections, each sending its next request as soon as the
  last answer arrived, for `--seconds`; requests/s, and over the same window the CPU per request of the
  proxy, of fake-vllm and of the load generator (from /proc and the generator's own process time).

Rounds interleave the three targets, so load from other work on the machine falls on all of them; the table
gives the median over rounds and the range. The raw client (one blocking socket for latency, asyncio
Protocols for throughput, Content-Length bodies only) costs well under the server per request, so it is not
what limits the figures; `--client httpx` runs the same load through httpx (shared pool) to compare: it
costs more per request than the server and the gateway together, and measures itself. Defaults take about
a minute; everything listens on loopback and is stopped at the end, nginx included.

The load generator is gateway_load.py and the processes under test are started by gateway_peers.py, both
imported from this script's folder (on sys.path when the script runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from gateway_load import load
from gateway_peers import ROOT, free_port, start_daemon, start_nginx, stop, wait_answering

TARGETS = ("direct", "gateway", "nginx")


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


# --- the parent: run, measure, print ------------------------------------------------------------------


@dataclass
class Figures:
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the proxy's CPU per request (microseconds)
    server_cpu_us: list[float] = field(default_factory=list)  # fake-vllm's
    client_cpu_us: list[float] = field(default_factory=list)  # the load generator's


def measure(
    kind: str, port: int, args: argparse.Namespace, proxy: list[psutil.Process], server: list[psutil.Process]
) -> dict[str, float]:
    command = [sys.executable, __file__, "--load", kind, "--port", str(port), "--client", args.client]
    command += ["--requests", str(args.requests), "--clients", str(args.clients), "--seconds", str(args.seconds)]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    cpu_before = cpu_after = (0.0, 0.0)
    result: dict[str, float] = {}
    try:
        for line in child.stdout:
            if line.strip() == "go":
                cpu_before = cpu_seconds(proxy), cpu_seconds(server)
            elif line.strip() == "stop":
                cpu_after = cpu_seconds(proxy), cpu_seconds(server)
            else:
                result = json.loads(line)
    finally:
        if child.wait(args.seconds + 120) != 0:
            raise RuntimeError(f"the load generator failed ({kind} on port {port})")
    if kind == "throughput":
        result["cpu"] = cpu_after[0] - cpu_before[0]
        result["server_cpu"] = cpu_after[1] - cpu_before[1]
    return result


def median_range(values: list[float], scale: float, fmt: str) -> str:
    if not values:
        return "-"
    mid = format(statistics.median(values) * scale, fmt)
    if len(values) == 1:
        return mid
    return f"{mid} ({format(min(values) * scale, fmt)}-{format(max(values) * scale, fmt)})"


def report(figures: dict[str, Figures]) -> None:
    direct = figures["direct"]

    def added(f: Figures) -> str:
        return median_range([a - b for a, b in zip(f.p50, direct.p50, strict=True)], 1e3, "+.3f")

    def share(f: Figures) -> str:
        return median_range([a / b for a, b in zip(f.rps, direct.rps, strict=True)], 100, ".0f")

    rows: list[tuple[str, Callable[[Figures], str], bool]] = [  # label, cell, shown for direct
        ("median latency, ms", lambda f: median_range(f.p50, 1e3, ".3f"), True),
        ("p99 latency, ms", lambda f: median_range(f.p99, 1e3, ".3f"), True),
        ("added median, ms", added, False),
        ("throughput, req/s", lambda f: median_range(f.rps, 1, ",.0f"), True),
        ("% of direct", share, False),
        ("proxy CPU/request, us", lambda f: median_range(f.cpu_us, 1, ".0f"), False),
        ("fake-vllm CPU/request, us", lambda f: median_range(f.server_cpu_us, 1, ".0f"), True),
        ("client CPU/request, us", lambda f: median_range(f.client_cpu_us, 1, ".0f"), True),
    ]
    names = [name for name in TARGETS if name in figures]
    width = 26
    print(f"{'':<26}" + "".join(f"{name:>{width}}" for name in names))
    for label, cell, for_direct in rows:
        cells = [cell(figures[name]) if name != "direct" or for_direct else "-" for name in names]
        print(f"{label:<26}" + "".join(f"{c:>{width}}" for c in cells))
    print("(median over rounds, range in brackets)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per latency run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections for throughput")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the three targets")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="the load generator's client")
    parser.add_argument("--no-nginx", action="store_true", help="measure direct and gateway only")
    parser.add_argument("--profile", help="run the daemon under cProfile, write its stats here, print the top")
    parser.add_argument("--progress-timeout", type=float, help="the model's progress_timeout (default: none)")
    parser.add_argument("--load", choices=("latency", "throughput"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        return load(args)

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmpdir, contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)  # nginx's worker (user nobody) reads nothing here, but may need to traverse it
        server_port = free_port()
        daemon, gateway_port = start_daemon(tmp, server_port, args.profile, args.progress_timeout)
        stack.callback(stop, daemon)
        wait_answering(server_port, 30, daemon)
        wait_answering(gateway_port, 30, daemon)
        daemon_ps = psutil.Process(daemon.pid)
        server_ps = [p for p in daemon_ps.children(recursive=True) if p.pid != daemon.pid]
        ports = {"direct": server_port, "gateway": gateway_port}
        watched: dict[str, list[psutil.Process]] = {"direct": [], "gateway": [daemon_ps]}
        if not args.no_nginx:
            try:
                nginx, ports["nginx"] = start_nginx(tmp, server_port)
            except (FileNotFoundError, RuntimeError) as exc:
                print(f"nginx not measured: {exc}")
            else:
                stack.callback(stop, nginx, signal.SIGQUIT, 10)
                watched["nginx"] = [psutil.Process(nginx.pid), *psutil.Process(nginx.pid).children()]
        print(
            f"fake-vllm (--ttft 0 --itl 0, access log off) on :{server_port}; gateway (llm-supervisor run) on "
            f":{gateway_port}; nginx on :{ports.get('nginx', '-')}. {args.rounds} rounds: {args.requests} "
            f"sequential requests, then {args.clients} clients for {args.seconds:g} s; client: {args.client}; "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        figures = {name: Figures() for name in ports}
        for round_number in range(1, args.rounds + 1):
            line = []
            for name, port in ports.items():
                latency = measure("latency", port, args, watched[name], server_ps)
                throughput = measure("throughput", port, args, watched[name], server_ps)
                rps = throughput["requests"] / throughput["elapsed"]
                figures[name].p50.append(latency["p50"])
                figures[name].p99.append(latency["p99"])
                figures[name].rps.append(rps)
                done = max(1, throughput["requests"])
                if watched[name]:
                    figures[name].cpu_us.append(1e6 * throughput["cpu"] / done)
                figures[name].server_cpu_us.append(1e6 * throughput["server_cpu"] / done)
                figures[name].client_cpu_us.append(1e6 * throughput["client_cpu"] / done)
                line.append(f"{name} {latency['p50'] * 1e3:.3f} ms, {rps:,.0f} req/s")
            print(f"round {round_number}: " + "; ".join(line), flush=True)
        print()
        report(figures)
    for process in server_ps:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                print(f"warning: {process.pid} still running after the daemon stopped; killing it")
                process.kill()
    if args.profile:
        import pstats

        print(f"\nthe daemon's profile ({args.profile}), top 30 by own time:")
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
