"""A small HTTP/1.1 server on asyncio streams and h11: requests read whole (bodies are JSON prompts), responses
written whole or streamed in chunks, connections kept alive. The gateway's hot path runs through here, so it
does only what a proxy for an OpenAI-style API needs: no routing tables, no middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import h11

from supervisor.gateway.errors import error_body

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024 * 1024  # a long prompt is megabytes; more is a mistake or an attack
READ_CHUNK = 64 * 1024
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: Sequence[tuple[bytes, bytes]]  # names lower-cased by h11
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    # When set, the body is sent in chunks as the iterator yields them (Server-Sent Events).
    stream: AsyncGenerator[bytes, None] | None = None


Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(Exception):
    pass


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accepted, host, port, limit=READ_CHUNK)
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        while True:
            try:
                request = await _read_request(conn, reader)
            except (h11.RemoteProtocolError, BodyTooLarge) as exc:
                too_large = isinstance(exc, BodyTooLarge)
                await _send_error(conn, writer, 413 if too_large else 400, str(exc) or "malformed request")
                return
            if request is None:
                return
            response = await self._handler(request)
            if not await _write_response(conn, writer, response):
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(READ_CHUNK)
            conn.receive_data(data)
            if not data and head is None and conn.their_state is h11.IDLE:
                return None  # a kept-alive connection closed between requests
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise BodyTooLarge(f"request body over {MAX_BODY // (1024 * 1024)} MiB")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return Request(head.method.decode(), head.target.decode(), list(head.headers), bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _write_response(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> bool:
    """Send the response; False when the client went away before it was all sent."""
    headers = [(k, v) for k, v in response.headers if k not in (b"content-length", b"transfer-encoding")]
    if response.stream is None:
        headers.append((b"content-length", str(len(response.body)).encode()))
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    try:
        writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
        if response.stream is None:
            writer.write(conn.send(h11.Data(data=response.body)) if response.body else b"")
        else:
            async for chunk in response.stream:
                if chunk:
                    writer.write(conn.send(h11.Data(data=chunk)))
                    await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
    except (ConnectionError, h11.LocalProtocolError):
        if response.stream is not None:
            # Closing the generator runs its clean-up: the upstream connection is dropped, not reused.
            with contextlib.suppress(Exception):
                await response.stream.aclose()
        return False
    return True


async def _send_error(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
    headers: Headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
        await _write_response(conn, writer, Response(status, headers, error_body(message, status)))
