"""The health probe (HttpProbe) against real HTTP/1.1 servers on 127.0.0.1: what it asks, what it reports.

`HealthServer` is a small keep-alive server on port 0 whose answers a test chooses per path, and whose
next requests a test can have closed, reset or cut short. test_probe_keepalive.py uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from supervisor.probe import HttpProbe, ProbeResult, server_root

# Extra time a probe may take beyond its own timeout on a loaded machine.
DEADLINE_TOLERANCE = 0.5
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Raw:
    """An answer written byte for byte, part after part (a short pause between parts makes the client read
    them separately), after which the server closes the connection if `close`, else keeps it."""

    parts: tuple[bytes, ...]
    close: bool = False


class HealthServer:
    """A real keep-alive HTTP/1.1 server on 127.0.0.1, port 0.

    `routes` maps a path to (status, delay); other paths answer 404. `misbehave` lists what the next requests
    get instead of their route, one entry each: "close" (closed without an answer), "reset" (TCP RST
    without an answer), "partial" (half a status line, then closed), "408" (the idle-timeout notice, then
    closed), or a `Raw` answer. `keep_alive=False` answers with "Connection: close".
    """

    def __init__(
        self,
        routes: dict[str, tuple[int, float]] | None = None,
        *,
        keep_alive: bool = True,
        body: bytes = b"{}",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.routes = {"/health": (200, 0.0)} if routes is None else routes
        self.keep_alive = keep_alive
        self.body = body
        self.misbehave: list[str | Raw] = []
        self.requested: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.connections = 0  # connections accepted so far
        self.port = 0
        self._tls = tls
        self._open: set[asyncio.StreamWriter] = set()
        self._closed = asyncio.Event()  # set whenever a connection ends
        self._handlers: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._open.add(writer)
        self.connections += 1
        try:
            while await self._answer(reader, writer):
                pass
        except (ConnectionError, ssl.SSLError):
            pass  # the client went away: its business
        finally:
            self._open.discard(writer)
            writer.close()
            self._closed.set()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to end."""
        request_line = await reader.readline()
        if not request_line:
            return False
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        path = request_line.split()[1].decode()
        self.requested.append(path)
        self.headers.append(headers)
        action = self.misbehave.pop(0) if self.misbehave else "answer"
        if isinstance(action, Raw):
            for index, part in enumerate(action.parts):
                if index:
                    await asyncio.sleep(0.05)
                writer.write(part)
                await writer.drain()
            return not action.close
        if action == "close":
            return False
        if action == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
            writer.transport.abort()
            return False
        if action == "partial":
            writer.write(b"HTTP/1.1 20")
            await writer.drain()
            return False
        status, delay = (408, 0.0) if action == "408" else self.routes.get(path, (404, 0.0))
        await asyncio.sleep(delay)  # the server's own behaviour: slow or hung
        closing = not self.keep_alive or action == "408"
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(self.body)}\r\n"
        head += "Connection: close\r\n\r\n" if closing else "\r\n"
        writer.write(head.encode() + self.body)
        await writer.drain()
        return not closing

    async def drop_connections(self) -> None:
        """Close every open connection, as a server's keep-alive timeout or a restart does."""
        writers = list(self._open)
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def wait_idle(self) -> None:
        """Return once every connection has ended."""
        while self._open:
            self._closed.clear()
            await self._closed.wait()

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"


@contextlib.asynccontextmanager
async def http_probe(base_url: str, tls: ssl.SSLContext | None = None) -> AsyncIterator[HttpProbe]:
    probe = HttpProbe(base_url, tls=tls)
    try:
        yield probe
    finally:
        await probe.aclose()


async def probe_once(base_url: str, timeout: float = 5.0) -> ProbeResult:
    async with http_probe(base_url) as probe:
        return await probe(timeout)


def closed_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def test_health_200_is_healthy() -> None:
    """A 200 from /health is a healthy server."""
    async with HealthServer() as server:
        result = await probe_once(server.url)
    assert result.ok
    assert result.message is None
    assert result.status_code == 200
    assert result.url == f"{server.url}/health"
    assert result.duration >= 0
    assert server.requested == ["/health"]


async def test_prior_art_1_health_url_built_wrong_never_probes_v1_health() -> None:
    """A base_url ending in /v1 is probed at the root /health, never /v1/health (docs/design/defects.md #1)."""
    async with HealthServer({"/health": (200, 0.0), "/v1/health": (404, 0.0)}) as server:
        for base_url in (f"{server.url}/v1", f"{server.url}/v1/", f"{server.url}/", server.url):
            result = await probe_once(base_url)
            assert result.ok, base_url
            assert result.url == f"{server.url}/health"
    assert server.requested == ["/health"] * 4
    assert "/v1/health" not in server.requested


async def test_root_below_a_path_prefix_is_probed_below_it() -> None:
    """A server behind a path prefix (a proxy) is asked at {prefix}/health and {prefix}/v1/models."""
    async with HealthServer({"/proxy/v1/models": (200, 0.0)}) as server:
        result = await probe_once(f"{server.url}/proxy/v1")
    assert result.ok
    assert result.url == f"{server.url}/proxy/v1/models"
    assert server.requested == ["/proxy/health", "/proxy/v1/models"]


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        ("http://h:8001/v1", "http://h:8001"),
        ("http://h:8001/v1/", "http://h:8001"),
        ("http://h:8001", "http://h:8001"),
        ("http://h:8001/", "http://h:8001"),
        ("http://h/proxy/v1", "http://h/proxy"),
        ("http://h/v10", "http://h/v10"),
    ],
)
def test_server_root_strips_a_trailing_v1_only(base_url: str, root: str) -> None:
    """Only a trailing /v1 path segment (and slashes) is removed from the base URL."""
    assert server_root(base_url) == root


async def test_health_503_is_unhealthy_with_its_status() -> None:
    """vLLM's dead-engine 503 is a failure that says which status and path."""
    async with HealthServer({"/health": (503, 0.0)}) as server:
        result = await probe_once(server.url)
    assert not result.ok
    assert result.message == "HTTP 503 from /health"
    assert result.status_code == 503
    assert result.url == f"{server.url}/health"


async def test_health_404_falls_back_to_models() -> None:
    """A server without /health is healthy when /v1/models answers 200; /v1/health is never asked."""
    async with HealthServer({"/v1/models": (200, 0.0)}) as server:
        result = await probe_once(f"{server.url}/v1")
    assert result.ok
    assert result.url == f"{server.url}/v1/models"
    assert result.status_code == 200
    assert server.requested == ["/health", "/v1/models"]


async def test_fallback_failure_names_both_answers() -> None:
    """When /health is 404 and /v1/models fails too, the message names both."""
    async with HealthServer({"/v1/models": (401, 0.0)}) as server:
        result = await probe_once(server.url)
    assert not result.ok
    assert result.message == "HTTP 404 from /health, HTTP 401 from /v1/models"
    assert result.status_code == 401
    assert result.url == f"{server.url}/v1/models"


async def test_connection_refused() -> None:
    """A port nobody listens on (vLLM while loading) is 'connection refused', with or without /v1."""
    port = closed_port()
    for base_url in (f"http://{LOOPBACK}:{port}/v1", f"http://{LOOPBACK}:{port}"):
        result = await probe_once(base_url)
        assert not result.ok
        assert result.message == "connection refused"
        assert result.status_code is None


async def test_connection_refused_on_every_address_of_a_name() -> None:
    """localhost may resolve to ::1 and 127.0.0.1; refused on all of them is still 'connection refused'."""
    result = await probe_once(f"http://localhost:{closed_port()}/v1")
    assert not result.ok
    assert result.message == "connection refused"


async def test_hung_server_times_out_on_time() -> None:
    """A server that accepts and never answers fails the probe at its timeout."""
    async with HealthServer({"/health": (200, 60.0)}) as server:
        started = time.monotonic()
        result = await probe_once(server.url, 0.3)
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.message == "timed out after 0.3s"
    assert result.status_code is None
    assert 0.3 <= elapsed < 0.3 + DEADLINE_TOLERANCE


async def test_timeout_bounds_the_fallback_too() -> None:
    """A slow 404 then a slow /v1/models still end within one timeout in total."""
    async with HealthServer({"/health": (404, 0.3), "/v1/models": (200, 0.5)}) as server:
        started = time.monotonic()
        result = await probe_once(server.url, 0.6)
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.message == "timed out after 0.6s"
    assert result.status_code is None
    assert result.url == f"{server.url}/v1/models"
    assert server.requested == ["/health", "/v1/models"]
    assert elapsed < 0.6 + DEADLINE_TOLERANCE


async def test_connect_phase_timeout() -> None:
    """A server that accepts TCP but never completes the TLS handshake times out like a hung one."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # it reads the TLS hello and never answers it

    server = await asyncio.start_server(silent, LOOPBACK, 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        started = time.monotonic()
        result = await probe_once(f"https://{LOOPBACK}:{port}", 0.3)
        elapsed = time.monotonic() - started
        for writer in accepted:
            writer.close()
    assert len(accepted) == 1
    assert not result.ok
    assert result.message == "timed out after 0.3s"
    assert result.status_code is None
    assert elapsed < 0.3 + DEADLINE_TOLERANCE


async def test_reset_is_connection_reset() -> None:
    """A server that resets the connection instead of answering is 'connection reset'."""
    async with HealthServer() as server:
        server.misbehave = ["reset"]
        result = await probe_once(server.url)
    assert not result.ok
    assert result.message == "connection reset"
    assert result.status_code is None


async def test_close_without_answer_is_server_closed() -> None:
    """A server that closes a new connection without answering 'closed the connection'; not retried."""
    async with HealthServer() as server:
        server.misbehave = ["close"]
        result = await probe_once(server.url)
    assert not result.ok
    assert result.message is not None
    assert result.message.startswith("server closed the connection: ")
    assert result.status_code is None
    assert server.connections == 1


async def test_answer_cut_short_is_server_closed() -> None:
    """Half a status line, then the end of the stream, is 'server closed the connection'."""
    async with HealthServer() as server:
        server.misbehave = ["partial"]
        result = await probe_once(server.url)
    assert not result.ok
    assert result.message is not None
    assert result.message.startswith("server closed the connection: ")
    assert result.status_code is None


async def test_unknown_name_is_connection_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host name that does not resolve is 'connection failed' with the resolver's words."""

    def no_such_name(*args: object, **kwargs: object) -> object:
        # What glibc says for a name that does not exist; a real lookup may depend on the machine's DNS.
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    result = await probe_once("http://no-such-host.invalid:8001/v1")
    assert not result.ok
    assert result.message is not None
    assert result.message.startswith(f"connection failed: [Errno {socket.EAI_NONAME}]")
    assert result.status_code is None


async def test_unexpected_exception_is_a_failure_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even an exception nobody expected becomes a readable failure."""

    async def surprise(*args: object, **kwargs: object) -> object:
        raise RuntimeError("surprise")

    monkeypatch.setattr(asyncio, "open_connection", surprise)
    result = await probe_once(f"http://{LOOPBACK}:{closed_port()}")
    assert not result.ok
    assert result.message == "probe error: RuntimeError: surprise"
    assert result.status_code is None


@pytest.mark.parametrize("base_url", ["ftp://h:8001/v1", "http:///v1", "http://h:notaport/v1"])
async def test_unusable_url_is_a_failure_not_raised(base_url: str) -> None:
    """A URL that cannot be probed fails every probe with 'connection failed'; building the probe never raises."""
    result = await probe_once(base_url)
    assert not result.ok
    assert result.message is not None
    assert result.message.startswith("connection failed: ")
    assert result.status_code is None
