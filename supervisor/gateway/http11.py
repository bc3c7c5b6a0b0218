"""A small HTTP/1.1 server on asyncio Protocols: requests read whole (bodies are JSON prompts), responses
written whole or streamed in chunks, connections kept alive. The gateway's hot path runs through here, so it
does only what a proxy for an OpenAI-style API needs: no routing tables, no middleware.

HTTP/1.1 is parsed here rather than by a general library, because per-event state machines cost more than
the rest of a proxied request: a head is found with one search and checked with h11's grammar (RFC 9112) in
two regular-expression passes; a whole answer leaves in one write. The rules are h11's: Host required once
in HTTP/1.1, one Content-Length value, `chunked` the only Transfer-Encoding (and it wins over a
Content-Length; the connection is then closed after the answer), obsolete line folding joined, HTTP/1.0 and
`Connection: close` served and then closed. Beyond h11: `Expect: 100-continue` is answered, a HEAD gets the
head alone, a body declared over MAX_BODY is refused (413) before it is read.
`Wire` (the bytes of one connection, with both directions' flow control) and the head parsing are in wire.py,
shared with the upstream client (upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from supervisor.gateway.errors import error_body
from supervisor.gateway.wire import (
    BLANK_LINE,
    CHUNK_HEADER,
    MAX_BODY,
    MAX_HEAD,
    REASONS,
    REQUEST_LINE,
    BodyTooLarge,
    Headers,
    HttpError,
    Wire,
    comma_values,
    content_length,
    encode_fields,
    parse_fields,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: Sequence[tuple[bytes, bytes]]  # names lower-cased
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    # When set, the body is sent in chunks as the iterator yields them (Server-Sent Events); the head leaves
    # with the first chunk.
    stream: AsyncGenerator[bytes, None] | None = None


Handler = Callable[[Request], Awaitable[Response]]


class _Head(NamedTuple):
    request: Request
    keep_alive: bool
    http10: bool  # answered without chunked framing, then closed


class _Connection(Wire):
    def __init__(self, server: HttpServer) -> None:
        super().__init__()
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server.serve(self)


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
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

    def serve(self, conn: Wire) -> None:
        task = asyncio.get_running_loop().create_task(self._accepted(conn))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _accepted(self, conn: Wire) -> None:
        try:
            await self._serve(conn)
        except OSError:
            pass  # the client went away (or its connection broke); nothing to answer
        finally:
            conn.close()

    async def _serve(self, conn: Wire) -> None:
        while True:
            try:
                head = await _read_request(conn)
            except HttpError as exc:
                await _send_error(conn, exc.status, str(exc) or "malformed request")
                return
            if head is None:
                return
            try:
                response = await self._handler(head.request)
            except Exception:
                log.exception("the gateway's handler failed on %s %s", head.request.method, head.request.target)
                headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                response = Response(500, headers, error_body("the gateway failed to answer this request", 500))
            keep_alive = head.keep_alive and not _says_close(response.headers)
            if not await _write_response(conn, head, response, keep_alive) or not keep_alive:
                return


async def _read_request(conn: Wire) -> _Head | None:
    """The next request, read whole; None when the client closed the connection (between requests, or
    without finishing one)."""
    buffer = conn.buffer
    while (blank := BLANK_LINE.search(buffer)) is None:
        if buffer and buffer[0] < 0x21:
            raise HttpError("illegal request line")
        if len(buffer) > MAX_HEAD:
            raise HttpError(f"request head over {MAX_HEAD // 1024} KiB")
        if not await conn.more():
            return None
    if blank.end() > MAX_HEAD:
        raise HttpError(f"request head over {MAX_HEAD // 1024} KiB")
    data = bytes(buffer[: blank.end()])
    del buffer[: blank.end()]
    line_end = data.find(b"\n")
    line = REQUEST_LINE.fullmatch(data, 0, line_end)
    if line is None:
        raise HttpError("illegal request line" if line_end else "no request line received")
    method, target, major, minor = line.groups()
    if major != b"1":
        raise HttpError("only HTTP/1.x is served", 505)
    headers = parse_fields(data[line_end + 1 : blank.start() + 1])
    http10 = minor == b"0"
    keep_alive, length, chunked, expect = _framing(headers, http10)
    if (length or chunked) and expect and not http10 and not buffer:
        conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if chunked:
        body = await _read_chunked(conn)
    elif length:
        if length > MAX_BODY:
            raise BodyTooLarge(f"request body over {MAX_BODY // (1024 * 1024)} MiB")
        while len(buffer) < length:
            if not await conn.more():
                return None
        body = bytes(buffer[:length])
        del buffer[:length]
    else:
        body = b""
    request = Request(method.decode("ascii"), target.decode("ascii"), headers, body)
    return _Head(request, keep_alive, http10)


def _framing(headers: Headers, http10: bool) -> tuple[bool, int | None, bool, bool]:
    """Keep-alive, Content-Length, chunked and Expect: 100-continue, from a request's headers (h11's rules)."""
    keep_alive, length, chunked, expect, hosts = not http10, None, False, False, 0
    for name, value in headers:
        if name == b"content-length":
            length = content_length(value, length)
        elif name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise HttpError("Only Transfer-Encoding: chunked is supported", 501)
            chunked = True
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            keep_alive = keep_alive and b"close" not in comma_values(value)
        elif name == b"expect":
            expect = b"100-continue" in comma_values(value)
    if hosts > 1 or (hosts == 0 and not http10):
        raise HttpError("Missing mandatory Host: header" if hosts == 0 else "Found multiple Host: headers")
    if chunked:
        keep_alive = keep_alive and length is None  # both framings: read as chunked, then close (RFC 9112 6.3)
        length = None
    return keep_alive, length, chunked, expect


async def _read_chunked(conn: Wire) -> bytes:
    buffer = conn.buffer
    body = bytearray()
    while True:
        while (line_end := buffer.find(b"\r\n")) < 0:
            if len(buffer) > MAX_HEAD:
                raise HttpError("illegal chunk header")
            if not await conn.more():
                raise ConnectionAbortedError("the client closed the connection mid-body")
        size_line = CHUNK_HEADER.fullmatch(buffer, 0, line_end + 2)
        if size_line is None:
            raise HttpError("illegal chunk header")
        size = int(size_line[1], 16)
        del buffer[: line_end + 2]
        if size == 0:
            break
        if len(body) + size > MAX_BODY:
            raise BodyTooLarge(f"request body over {MAX_BODY // (1024 * 1024)} MiB")
        while len(buffer) < size + 2:
            if not await conn.more():
                raise ConnectionAbortedError("the client closed the connection mid-body")
        if buffer[size : size + 2] != b"\r\n":
            raise HttpError("malformed chunk footer")
        body += buffer[:size]
        del buffer[: size + 2]
    # Trailer fields, up to a blank line: read and dropped.
    while not buffer.startswith((b"\r\n", b"\n")):
        if (blank := BLANK_LINE.search(buffer)) is not None:
            parse_fields(bytes(buffer[: blank.start() + 1]))
            del buffer[: blank.end()]
            return bytes(body)
        if len(buffer) > MAX_HEAD or not await conn.more():
            raise HttpError("malformed chunked trailer")
    del buffer[: 2 if buffer[0] == 13 else 1]
    return bytes(body)


def _says_close(headers: Headers) -> bool:
    return any(name == b"connection" and b"close" in comma_values(value) for name, value in headers)


async def _write_response(conn: Wire, head: _Head, response: Response, keep_alive: bool) -> bool:
    """Send the response; False when the client went away before it was all sent."""
    status = response.status
    headers = [(k, v) for k, v in response.headers if k not in (b"content-length", b"transfer-encoding")]
    bodiless = status < 200 or status in (204, 304) or head.request.method == "HEAD"
    chunked = response.stream is not None and not head.http10
    if response.stream is None:
        if status not in (204, 304) and status >= 200:
            headers.append((b"content-length", b"%d" % len(response.body)))
    elif chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    else:
        keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
    if not keep_alive and not _says_close(headers):
        headers.append((b"connection", b"close"))
    try:
        start = b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, REASONS.get(status, b""), encode_fields(headers))
        if response.stream is None or bodiless:
            conn.write(start if bodiless else start + response.body)
        else:
            async for chunk in response.stream:
                if chunk:
                    conn.write(start + (b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk))
                    start = b""
                    await conn.drain()
            conn.write(start + b"0\r\n\r\n" if chunked else start)
        await conn.drain()
    except (ConnectionError, HttpError):
        return False
    finally:
        if response.stream is not None:
            # A stream not read to its end (the client went away, or the server is closing) is closed here:
            # its clean-up runs now, and drops its upstream connection rather than reusing it.
            with contextlib.suppress(Exception):
                await response.stream.aclose()
    return True


async def _send_error(conn: Wire, status: int, message: str) -> None:
    headers: Headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    head = _Head(Request("GET", "/", (), b""), keep_alive=False, http10=False)
    with contextlib.suppress(ConnectionError):
        await _write_response(conn, head, Response(status, headers, error_body(message, status)), keep_alive=False)
