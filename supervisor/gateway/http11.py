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
`Wire` (the bytes of one connection, with both directions' flow control) and the head parsing are shared
with the upstream client (upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import NamedTuple, cast

from supervisor.gateway.errors import error_body

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024 * 1024  # a long prompt is megabytes; more is a mistake or an attack
MAX_HEAD = 64 * 1024  # a request's or answer's line and headers
READ_CHUNK = 64 * 1024  # input nobody waits for stops being read beyond twice this
Headers = list[tuple[bytes, bytes]]

# h11's grammar (RFC 9110 section 5, RFC 9112 sections 3-7). A field line is `name: OWS value OWS`, the value
# visible characters (obs-text included) with spaces and tabs between them; any run of those characters,
# spaces and tabs splits that way, so the line is checked as "no NUL, CR, LF, VT or FF" and the value is the
# run with its ends stripped: the same lines as h11's regular expression, without its backtracking.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_LINE_TEXT = rb"[^\x00\r\n\x0b\x0c]*"
FIELD = re.compile(rb"(" + _TOKEN + rb"):(" + _LINE_TEXT + rb")\r?\n")
FIELDS = re.compile(rb"(?:" + _TOKEN + rb":" + _LINE_TEXT + rb"\r?\n)*")
OBS_FOLD = re.compile(rb"\r?\n[ \t]+")
BLANK_LINE = re.compile(rb"\n\r?\n")  # ends a head; bare LF line ends are tolerated, as h11 does
REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r?")
STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: [^\x00\r\n]*)?\r?")
CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*\r\n")
CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class HttpError(Exception):
    """The peer broke HTTP/1.1: a malformed head, an impossible framing, a broken chunk."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BodyTooLarge(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 413)


def parse_fields(block: bytes) -> Headers:
    """Header lines (each ending in a line break) as (lower-cased name, value) pairs; HttpError if any is
    malformed. Obsolete line folding is joined with a space."""
    if FIELDS.fullmatch(block) is None:
        unfolded = OBS_FOLD.sub(b" ", block)
        if block[:1] in (b" ", b"\t") or FIELDS.fullmatch(unfolded) is None:
            raise HttpError("illegal header line")
        block = unfolded
    return [(name.lower(), value.strip(b" \t")) for name, value in FIELD.findall(block)]


def comma_values(value: bytes) -> list[bytes]:
    return [part.strip() for part in value.lower().split(b",") if part.strip()]


def content_length(value: bytes, seen: int | None) -> int:
    """A Content-Length value (a list of one repeated value is one value); HttpError when it is not a
    length, or differs from the one already seen."""
    if value.isdigit() and len(value) <= 20:
        length = int(value)
    else:
        values = {part.strip() for part in value.split(b",")}
        if len(values) != 1 or CONTENT_LENGTH.fullmatch(text := values.pop()) is None:
            raise HttpError("bad Content-Length")
        length = int(text)
    if seen is not None and seen != length:
        raise HttpError("conflicting Content-Length headers")
    return length


def encode_fields(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Header lines for sending; HttpError when a name or value would break the head (a line break)."""
    block = b"".join([b"%s: %s\r\n" % pair for pair in headers])
    if block.count(b"\n") != len(headers) or block.count(b"\r") != len(headers):
        raise HttpError("a header name or value holds a line break")
    return block


class Wire(asyncio.Protocol):
    """The bytes of one connection: what arrived and is not used yet (`buffer`), a wait for more, and writes
    with the transport's flow control. Input nobody is waiting for pauses reading past 2 x READ_CHUNK."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.at_eof = False  # the peer sent FIN, or the connection is gone
        self.lost = False
        self._error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._over_ssl = False

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._over_ssl = transport.get_extra_info("sslcontext") is not None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif not self._read_paused and len(self.buffer) > 2 * READ_CHUNK:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.at_eof = True
        self._wake()
        return not self._over_ssl  # keep our half open to answer, as asyncio's streams do (TLS cannot)

    def connection_lost(self, exc: Exception | None) -> None:
        self.at_eof = self.lost = True
        self._error = exc
        self._wake()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- for the code reading and writing --------------------------------------------------------------

    async def more(self) -> bool:
        """Wait for input beyond what `buffer` holds: False once the peer closed cleanly; the error when the
        connection broke."""
        if self.at_eof:
            if self._error is not None:
                raise self._error
            return False
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        return True

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark; ConnectionResetError if lost."""
        if self._write_paused and not self.lost:
            waiter = self._drain_waiter = self._loop.create_future()
            await waiter
        if self.lost:
            raise ConnectionResetError("Connection lost")

    def close(self) -> None:
        self.transport.close()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


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
