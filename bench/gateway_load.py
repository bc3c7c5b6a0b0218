"""The load generator of bench_gateway.py, run in its own process (`bench_gateway.py --load ...`): sequential
requests on one kept-alive socket for latency, concurrent kept-alive clients for throughput, raw or through
httpx; the result is printed as the last line of JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from functools import partial

MODEL = "bench"
BODY = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1}).encode()
REQUEST = (
    b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
Window = tuple[int, float, float]  # requests answered, seconds, the load generator's CPU seconds


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
