"""Throughput of fake-vllm on one core: non-streaming and streaming requests per second, 100 clients.

    .venv/bin/python bench/bench_fake_vllm.py [--clients 100] [--seconds 5] [--max-tokens 16] [--core 0]

The server runs with ``--ttft 0 --itl 0``, pinned to one CPU core with ``taskset``; the load generator is a
bare asyncio HTTP/1.1 client with one keep-alive connection per client, pinned to the other cores, so the
figure measures the server and not httpx. Each mode is run with uvicorn-style access logging on (the
default, like vLLM) and off (``--disable-uvicorn-access-log``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

from fake_vllm.testing import free_port


def start_server(port: int, core: int, access_log: bool) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "fake_vllm",
        "serve",
        "bench/model",
        "--port",
        str(port),
        "--ttft",
        "0",
        "--itl",
        "0",
        "--max-num-seqs",
        "1024",
    ]
    if not access_log:
        command.append("--disable-uvicorn-access-log")
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                if b" 200 " in probe.recv(256):
                    return process
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("fake-vllm did not start")


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length or chunked); returns the number of body bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    headers = head.decode("latin-1").lower()
    if "transfer-encoding: chunked" in headers:
        size_total = 0
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            size_total += size
            if size == 0:
                return size_total
    length = int(headers.split("content-length:")[1].split("\r\n")[0])
    await reader.readexactly(length)
    return length


async def client(port: int, request: bytes, stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            writer.write(request)
            await read_response(reader)
            latencies.append(time.monotonic() - started)
    finally:
        writer.close()


def build_request(stream: bool, max_tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": "bench/model",
            "prompt": "benchmark the fake server",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": stream,
        }
    ).encode()
    return (
        b"POST /v1/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


async def measure(port: int, clients: int, seconds: float, stream: bool, max_tokens: int) -> dict[str, float]:
    request = build_request(stream, max_tokens)
    warmup: list[float] = []
    await asyncio.gather(*(client(port, request, time.monotonic() + 0.5, warmup) for _ in range(clients)))
    latencies: list[float] = []
    started = time.monotonic()
    await asyncio.gather(*(client(port, request, started + seconds, latencies) for _ in range(clients)))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "requests": len(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--core", type=int, default=0)
    args = parser.parse_args()
    others = sorted(os.sched_getaffinity(0) - {args.core})
    if others:  # keep the load generator off the server's core
        os.sched_setaffinity(0, set(others))
    print(
        f"fake-vllm on core {args.core}, {args.clients} clients, {args.seconds:.0f} s per run, "
        f"max_tokens={args.max_tokens}, --ttft 0 --itl 0, client on cores {others or 'shared'}"
    )
    for access_log in (True, False):
        for stream in (False, True):
            port = free_port()
            server = start_server(port, args.core, access_log)
            try:
                result = asyncio.run(measure(port, args.clients, args.seconds, stream, args.max_tokens))
            finally:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            mode = "streaming    " if stream else "non-streaming"
            log = "access log on " if access_log else "access log off"
            print(
                f"{mode} {log}: {result['requests_per_s']:8.0f} req/s  "
                f"({result['requests_per_s'] * args.max_tokens:8.0f} tokens/s)  "
                f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
