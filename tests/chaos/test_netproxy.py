"""The TCP fault proxy over real sockets: each toxic does what Toxiproxy's does, and can be toggled live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from chaos.netproxy import FaultProxy, Toxic


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A real TCP echo server on a free port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the echo server."""
    async with FaultProxy("127.0.0.1", echo_port) as p:
        yield p


async def roundtrip(port: int, payload: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send payload through the proxy and read the echo back; returns (data, seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
        return data, time.monotonic() - started
    finally:
        writer.close()


async def read_until_closed(reader: asyncio.StreamReader) -> None:
    """Read until the peer closes; a plain FIN (b"") is a failure, only a reset (an exception) ends well."""
    while await asyncio.wait_for(reader.read(10), 5):
        pass
    raise AssertionError("closed with FIN, not reset")


async def test_clean_network_passes_bytes_unchanged(proxy: FaultProxy) -> None:
    """With no toxic, the proxy is a transparent pipe."""
    data, _ = await roundtrip(proxy.port, b"hello" * 1000)
    assert data == b"hello" * 1000


async def test_latency_delays_each_answer(proxy: FaultProxy) -> None:
    """latency 300 ms downstream delays the answer by at least about that."""
    proxy.set_toxic(Toxic("latency", {"latency": 300, "jitter": 20}))
    _, took = await roundtrip(proxy.port, b"x")
    assert took >= 0.27
    proxy.set_toxic(None)
    _, took = await roundtrip(proxy.port, b"x")
    assert took < 0.25


async def test_blackhole_swallows_until_cleared(proxy: FaultProxy) -> None:
    """A blackhole accepts the connection but nothing comes back; clearing it lets new data through."""
    proxy.set_toxic(Toxic("blackhole"))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(10), 0.4)
    proxy.set_toxic(None)
    writer.write(b"pong")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
    writer.close()


async def test_reset_peer_resets_open_connections(proxy: FaultProxy) -> None:
    """reset_peer with timeout 100 ms resets a connection that was already open with a TCP RST."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"a")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
    started = time.monotonic()
    proxy.set_toxic(Toxic("reset_peer", {"timeout": 100}))
    with pytest.raises(ConnectionResetError):
        await read_until_closed(reader)
    assert time.monotonic() - started >= 0.09
    writer.close()


async def test_timeout_toxic_closes_after_its_timeout(proxy: FaultProxy) -> None:
    """timeout 200 swallows data and then closes the connection."""
    proxy.set_toxic(Toxic("timeout", {"timeout": 200}, stream="both"))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    writer.write(b"lost")
    assert await asyncio.wait_for(reader.read(10), 5) == b""
    assert time.monotonic() - started >= 0.18
    writer.close()


async def test_bandwidth_limits_throughput(proxy: FaultProxy) -> None:
    """bandwidth 100 KB/s needs about 0.4 s for 40 KB."""
    proxy.set_toxic(Toxic("bandwidth", {"rate": 100}))
    data, took = await roundtrip(proxy.port, b"z" * 40_000)
    assert data == b"z" * 40_000
    assert took >= 0.35


async def test_upstream_down_closes_client(echo_port: int) -> None:
    """When the server does not listen, the client's connection is closed (like a server still loading)."""
    async with FaultProxy("127.0.0.1", 1) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()


async def test_upstream_stream_toxic_delays_requests(proxy: FaultProxy) -> None:
    """A latency toxic on the upstream stream delays the request on its way to the server."""
    proxy.set_toxic(Toxic("latency", {"latency": 300}, stream="upstream"))
    _, took = await roundtrip(proxy.port, b"q")
    assert took >= 0.27
    assert proxy.toxic is not None
    assert proxy.toxic.describe() == "latency(latency=300) upstream"


async def test_a_replica_proxy_listens_on_the_alias_address_at_the_servers_own_port(echo_port: int) -> None:
    """127.0.0.2:P forwards to 127.0.0.1:P (the server's port, taken on the other address), toxics and all."""
    async with FaultProxy("127.0.0.1", echo_port, listen_host="127.0.0.2", listen_port=echo_port) as alias:
        assert alias.port == echo_port
        reader, writer = await asyncio.open_connection("127.0.0.2", echo_port)
        try:
            writer.write(b"ping")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            alias.set_toxic(Toxic("blackhole", stream="both"))
            writer.write(b"lost")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(4), 0.3)
        finally:
            writer.close()
