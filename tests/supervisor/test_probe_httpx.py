"""The former httpx probe (supervisor.probe.http.probe), still called by the fleet until it uses HttpProbe.

Delete this file together with supervisor/probe/http.py. HttpProbe's tests are in test_probe.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from supervisor.probe.http import ProbeResult, probe

ROOT = "http://127.0.0.1:8001"
# Extra time a probe may take beyond its own timeout on a loaded machine.
DEADLINE_TOLERANCE = 0.5


async def run_probe(base_url: str, timeout: float = 5.0) -> ProbeResult:
    async with httpx.AsyncClient() as client:
        return await probe(client, base_url, timeout)


async def test_health_200_is_healthy() -> None:
    """A 200 from /health is a healthy server."""
    with respx.mock(assert_all_mocked=True) as router:
        router.get(f"{ROOT}/health").respond(200)
        result = await run_probe(ROOT)
    assert result.ok
    assert result.message is None
    assert result.status_code == 200
    assert result.url == f"{ROOT}/health"
    assert result.duration >= 0


async def test_prior_art_1_health_url_built_wrong_never_probes_v1_health() -> None:
    """PRIOR_ART 1: a base_url ending in /v1 is probed at the root /health, never /v1/health."""
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        root_health = router.get(f"{ROOT}/health").respond(200)
        v1_health = router.get(f"{ROOT}/v1/health").respond(404)
        for base_url in (f"{ROOT}/v1", f"{ROOT}/v1/", f"{ROOT}/"):
            result = await run_probe(base_url)
            assert result.ok, base_url
            assert result.url == f"{ROOT}/health"
    assert root_health.call_count == 3
    assert not v1_health.called


async def test_health_503_is_unhealthy_with_its_status() -> None:
    """vLLM's dead-engine 503 is a failure that says which status and path."""
    with respx.mock(assert_all_mocked=True) as router:
        router.get(f"{ROOT}/health").respond(503)
        result = await run_probe(ROOT)
    assert not result.ok
    assert result.message == "HTTP 503 from /health"
    assert result.status_code == 503


async def test_health_404_falls_back_to_models() -> None:
    """A server without /health is healthy when /v1/models answers 200."""
    with respx.mock(assert_all_mocked=True) as router:
        router.get(f"{ROOT}/health").respond(404)
        router.get(f"{ROOT}/v1/models").respond(200, json={"object": "list", "data": []})
        result = await run_probe(f"{ROOT}/v1")
    assert result.ok
    assert result.url == f"{ROOT}/v1/models"
    assert result.status_code == 200


async def test_fallback_failure_names_both_answers() -> None:
    """When /health is 404 and /v1/models fails too, the message names both."""
    with respx.mock(assert_all_mocked=True) as router:
        router.get(f"{ROOT}/health").respond(404)
        router.get(f"{ROOT}/v1/models").respond(401)
        result = await run_probe(ROOT)
    assert not result.ok
    assert result.message == "HTTP 404 from /health, HTTP 401 from /v1/models"
    assert result.status_code == 401


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (httpx.ConnectTimeout("timed out"), "timed out after 5.0s"),
        (httpx.ReadTimeout("timed out"), "timed out after 5.0s"),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), "connection reset"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "server closed"),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "connection failed: [Errno -2]"),
        (RuntimeError("surprise"), "probe error: RuntimeError: surprise"),
    ],
)
async def test_errors_become_readable_failures(error: Exception, message: str) -> None:
    """Transport errors and even unexpected exceptions are failures with a readable message, never raised."""
    with respx.mock(assert_all_mocked=True) as router:
        router.get(f"{ROOT}/health").mock(side_effect=error)
        result = await run_probe(ROOT)
    assert not result.ok
    assert result.message is not None
    assert result.message.startswith(message)
    assert result.status_code is None


class TinyServer:
    """A real HTTP/1.1 server on 127.0.0.1, port 0: each path answers a status after a delay."""

    def __init__(self, routes: dict[str, tuple[int, float]]) -> None:
        self.routes = routes
        self.requested: list[str] = []
        self.port = 0
        self._handlers: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = request_line.split()[1].decode()
            self.requested.append(path)
            status, delay = self.routes.get(path, (404, 0.0))
            await asyncio.sleep(delay)  # the server's own behaviour: slow or hung
            head = f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + b"{}")
            await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> TinyServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
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
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


async def test_real_server_health_200(client: httpx.AsyncClient) -> None:
    """Over a real socket, a 200 from /health is healthy and /v1/health is never asked."""
    async with TinyServer({"/health": (200, 0.0)}) as server:
        result = await probe(client, f"{server.url}/v1", 5.0)
    assert result.ok
    assert server.requested == ["/health"]


async def test_real_server_without_health_falls_back(client: httpx.AsyncClient) -> None:
    """Over a real socket, a 404 on /health leads to /v1/models."""
    async with TinyServer({"/v1/models": (200, 0.0)}) as server:
        result = await probe(client, server.url, 5.0)
    assert result.ok
    assert server.requested == ["/health", "/v1/models"]


async def test_real_connection_refused(client: httpx.AsyncClient) -> None:
    """A port nobody listens on (vLLM while loading) is 'connection refused'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await probe(client, f"http://127.0.0.1:{port}/v1", 5.0)
    assert not result.ok
    assert result.message == "connection refused"


async def test_real_hung_server_times_out_on_time(client: httpx.AsyncClient) -> None:
    """A server that accepts and never answers fails the probe at its timeout."""
    async with TinyServer({"/health": (200, 60.0)}) as server:
        started = time.monotonic()
        result = await probe(client, server.url, 0.3)
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.message == "timed out after 0.3s"
    assert 0.3 <= elapsed < 0.3 + DEADLINE_TOLERANCE


async def test_timeout_bounds_the_fallback_too(client: httpx.AsyncClient) -> None:
    """A slow 404 then a slow /v1/models still end within one timeout in total."""
    async with TinyServer({"/health": (404, 0.3), "/v1/models": (200, 0.5)}) as server:
        started = time.monotonic()
        result = await probe(client, server.url, 0.6)
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.message == "timed out after 0.6s"
    assert server.requested == ["/health", "/v1/models"]
    assert elapsed < 0.6 + DEADLINE_TOLERANCE
