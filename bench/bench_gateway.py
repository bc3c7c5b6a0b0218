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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
FAKE_VLLM = str(Path(sys.executable).with_name("fake-vllm"))
MODEL = "bench"
BODY = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1}).encode()
REQUEST = (
    b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
TARGETS = ("direct", "gateway", "nginx")
Process = subprocess.Popen[bytes] | subprocess.Popen[str]
Window = tuple[int, float, float]  # requests answered, seconds, the load generator's CPU seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the load generator (its own process) -----------------------------------------------------------------


def _answer_length(head: bytes) -> int:
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:40]!r}")
    start = head.lower().find(b"\r\ncontent-length:")
    if start < 0:
        raise RuntimeError("an answer without Content-Length")
    end = head.find(b"\r\n", start + 2)
    return int(head[start + 17 : end if end >= 0 else len(head)])


def raw_latency(port: int, count: int, warmup: int) -> list[float]:
    """Sequential requests on one blocking kept-alive socket; seconds per request."""
    times: list[float] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        for i in range(warmup + count):
            started = time.perf_counter()
            sock.sendall(REQUEST)
            while (split := buffer.find(b"\r\n\r\n")) < 0:
                buffer += _recv(sock)
            length = _answer_length(buffer[:split])
            end = split + 4 + length
            while len(buffer) < end:
                buffer += _recv(sock)
            buffer = buffer[end:]
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return times


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


class _Client(asyncio.Protocol):
    """One kept-alive connection sending the next request as soon as an answer is complete."""

    def __init__(self, counts: list[int], closed: asyncio.Future[None]) -> None:
        self.counts = counts
        self.closed = closed
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.stop = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (split := self.buffer.find(b"\r\n\r\n")) >= 0:
            end = split + 4 + _answer_length(self.buffer[:split])
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            self.counts[0] += 1
            if self.stop:
                assert self.transport is not None
                self.transport.close()
                return
            assert self.transport is not None
            self.transport.write(REQUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            if self.stop:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(exc or ConnectionError("the server closed the connection"))


async def raw_throughput(port: int, clients: int, seconds: float, warmup: float) -> Window:
    loop = asyncio.get_running_loop()
    counts = [0]
    protocols: list[_Client] = []
    for _ in range(clients):
        closed: asyncio.Future[None] = loop.create_future()
        _, protocol = await loop.create_connection(partial(_Client, counts, closed), "127.0.0.1", port)
        protocols.append(protocol)
    await asyncio.sleep(warmup)
    return await _window(counts, seconds, protocols)


async def _window(counts: list[int], seconds: float, protocols: list[_Client]) -> Window:
    window = await measure_window(counts, seconds)
    for protocol in protocols:
        protocol.stop = True
    await asyncio.gather(*(protocol.closed for protocol in protocols))
    return window


async def measure_window(counts: list[int], seconds: float) -> Window:
    print("go", flush=True)  # the parent reads the proxies' CPU times now ...
    before, started, cpu = counts[0], time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    window = counts[0] - before, time.perf_counter() - started, time.process_time() - cpu
    print("stop", flush=True)  # ... and now
    return window


def httpx_latency(port: int, count: int, warmup: int) -> list[float]:
    import httpx

    times: list[float] = []
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for i in range(warmup + count):
            started = time.perf_counter()
            response = client.post("/v1/completions", content=BODY, headers=headers)
            response.raise_for_status()
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return times


async def httpx_throughput(port: int, clients: int, seconds: float, warmup: float) -> Window:
    import httpx

    counts = [0]
    state = {"stop": False}
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:

        async def one() -> None:
            while not state["stop"]:
                response = await client.post("/v1/completions", content=BODY, headers=headers)
                response.raise_for_status()
                counts[0] += 1

        tasks = [asyncio.create_task(one()) for _ in range(clients)]
        await asyncio.sleep(warmup)
        window = await measure_window(counts, seconds)
        state["stop"] = True
        await asyncio.gather(*tasks)
    return window


def load(args: argparse.Namespace) -> int:
    """The child: one measurement, its result as the last line of JSON."""
    if args.load == "latency":
        measure = raw_latency if args.client == "raw" else httpx_latency
        times = sorted(measure(args.port, args.requests, max(50, args.requests // 10)))
        result = {"p50": statistics.median(times), "p99": times[min(len(times) - 1, int(len(times) * 0.99))]}
    else:
        run = raw_throughput if args.client == "raw" else httpx_throughput
        done, elapsed, cpu = asyncio.run(run(args.port, args.clients, args.seconds, 0.5))
        result = {"requests": done, "elapsed": elapsed, "client_cpu": cpu}
    print(json.dumps(result), flush=True)
    return 0


# --- the processes under test ------------------------------------------------------------------------------


def start_daemon(
    tmp: Path, server_port: int, profile: str | None, progress_timeout: float | None
) -> tuple[subprocess.Popen[str], int]:
    """The real supervisor daemon running one fake-vllm model behind its gateway; returns the gateway port."""
    config = {
        "supervisor": {
            "state_dir": str(tmp / "state"),
            "api": {"host": "127.0.0.1", "port": 0},
            "gateway": {"host": "127.0.0.1", "port": 0},
        },
        "llmModels": {
            MODEL: {
                "command": FAKE_VLLM,
                "args": [
                    *("serve", MODEL, "--port", str(server_port), "--ttft", "0", "--itl", "0"),
                    *("--max-num-seqs", "1024", "--disable-uvicorn-access-log"),
                ],
                "endpoints": {"base_url": f"http://127.0.0.1:{server_port}/v1"},
                "startup_probe_interval": 0.1,
                "stop_timeout": 5,
                "progress_timeout": progress_timeout,
            }
        },
    }
    path = tmp / "supervisor.json"
    path.write_text(json.dumps(config))
    run = ["run", "-c", str(path), "--port", "0"]
    if profile is None:
        command = [sys.executable, "-m", "supervisor.cli.main", *run]
    else:
        code = (
            "import cProfile, sys, time\nfrom supervisor.cli.main import main\n"
            "profiler = cProfile.Profile(time.process_time)\nprofiler.enable()\n"
            "try:\n    code = main(sys.argv[2:])\nfinally:\n    profiler.disable()\n"
            "    profiler.dump_stats(sys.argv[1])\nsys.exit(code)\n"
        )
        command = [sys.executable, "-c", code, os.path.abspath(profile), *run]
    out = tmp / "daemon.out"
    with open(out, "w") as stdout, open(tmp / "daemon.err", "w") as stderr:
        daemon = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr, text=True, start_new_session=True)
    try:
        return daemon, gateway_port(daemon, tmp, out)
    except BaseException:
        stop(daemon)
        raise


def gateway_port(daemon: Process, tmp: Path, out: Path) -> int:
    """The port the daemon says its gateway listens on."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited: {(tmp / 'daemon.err').read_text()[-2000:]}")
        for line in out.read_text().splitlines():
            if "gateway at http://" in line:
                return int(line.rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.05)
    raise RuntimeError("the daemon did not start its gateway within 30 s")


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    upstream fake_vllm {{
        server 127.0.0.1:{server_port};
        keepalive 32;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake_vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(tmp: Path, server_port: int) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        raise FileNotFoundError("nginx is not installed (apt-get install -y nginx-light)")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, server_port=server_port, port=port))
    process = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_answering(port, 10, process)
    except BaseException:
        stop(process, signal.SIGQUIT, 10)
        raise
    return process, port


def wait_answering(port: int, timeout: float, process: Process) -> None:
    """Until a completion through `port` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        try:
            raw_latency(port, 1, 0)
        except (OSError, RuntimeError, ValueError):
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"nothing answered on port {port} within {timeout:g} s")


def stop(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM, grace: float = 30
) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


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
