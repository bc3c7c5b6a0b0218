"""A small HTTP/1.1 server on asyncio streams, answering like uvicorn does.

Why not uvicorn itself: importing FastAPI + uvicorn costs about 0.3 s per start and tests start this
process hundreds of times; the fake also needs control uvicorn does not give (a listening socket whose
connections are accepted but never answered while "hung"). It speaks keep-alive, Content-Length and chunked
request bodies, chunked streaming responses, and sends uvicorn's ``server`` and ``date`` headers and access
log lines (on stdout, as uvicorn's access logger writes them).

Each connection is a task of our own, not one asyncio.start_server wraps: on Python 3.11 a cancelled task
of start_server's logs a ``CancelledError`` traceback, one per idle keep-alive connection at every stop.
Stopping closes the connections instead: an idle one reads end-of-file and ends quietly; one still busy
with a request is cancelled, which aborts the request as vLLM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from fake_vllm import vllm_log

MAX_BODY = 64 * 1024 * 1024
MAX_HEADERS = 100


class BadRequest(Exception):
    """The bytes on the connection are not an HTTP/1.x request we can read."""


@dataclass(slots=True)
class Request:
    """One parsed request."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    client: str

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]


@dataclass(slots=True)
class Response:
    """A complete response. ``after_sent`` runs once its bytes have been handed to the kernel."""

    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    after_sent: Callable[[], None] | None = None


@dataclass(slots=True)
class StreamResponse:
    """A chunked response whose body is produced while it is sent."""

    status: int
    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream; charset=utf-8"
    after_sent: Callable[[], None] | None = None


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


class _Clock:
    """The Date header, formatted once per second rather than once per response."""

    second = -1
    text = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self.second:
            # RFC 9110 IMF-fixdate with English names whatever the locale (email.utils costs 25 ms to import).
            t = time.gmtime(now)
            day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[t.tm_wday]
            month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[t.tm_mon - 1]
            self.second = now
            self.text = f"{day}, {t.tm_mday:02d} {month} {t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
        return self.text


class HttpServer:
    """Serves ``handler`` on an already bound socket. ``gate`` runs before each request is handled."""

    def __init__(self, handler: Handler, gate: Callable[[], Awaitable[None]], *, access_log: bool) -> None:
        self._handler = handler
        self._gate = gate
        self._access_log = access_log
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._busy: set[asyncio.Task[None]] = set()
        self._clock = _Clock()

    async def start(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (which must already listen)."""
        self._server = await asyncio.start_server(self._accepted, sock=sock, limit=256 * 1024)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer))
        self._connections[task] = writer
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved: nothing is logged at garbage collection

    async def close(self) -> None:
        """Stop accepting and close every open connection (requests in flight are aborted)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task, writer in list(self._connections.items()):
            if task in self._busy:
                task.cancel()
            else:
                writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unknown"
        try:
            while True:
                request = await _read_request(reader, writer, client)
                if request is None:
                    break
                self._busy.add(task)
                await self._gate()
                response = await self._handler(request)
                keep_alive = request.version == "HTTP/1.1" and request.headers.get("connection", "").lower() != "close"
                await self._send(writer, request, response, keep_alive)
                self._busy.discard(task)
                if not keep_alive:
                    break
        except BadRequest:
            with contextlib.suppress(ConnectionError):
                await self._send(writer, None, Response(400, b"Invalid HTTP request received.", "text/plain"), False)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._busy.discard(task)
            writer.close()

    def _head(self, status: int, content_type: str | None, extra: list[tuple[str, str]], keep_alive: bool) -> str:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"date: {self._clock.date()}", "server: uvicorn"]
        lines += [f"{name}: {value}" for name, value in extra]
        if content_type:
            lines.append(f"content-type: {content_type}")
        if not keep_alive:
            lines.append("connection: close")
        return "\r\n".join(lines) + "\r\n"

    def _log(self, request: Request | None, status: int) -> None:
        if self._access_log and request is not None:
            line = f'"{request.method} {request.target} {request.version}" {status} {HTTPStatus(status).phrase}'
            vllm_log.access(f"{request.client} - {line}")

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        request: Request | None,
        response: Response | StreamResponse,
        keep_alive: bool,
    ) -> None:
        self._log(request, response.status)
        if isinstance(response, Response):
            extra = [*response.headers, ("content-length", str(len(response.body)))]
            head = self._head(response.status, response.content_type, extra, keep_alive)
            writer.write(head.encode("latin-1") + b"\r\n" + response.body)
            await writer.drain()
        else:
            head = self._head(response.status, response.content_type, [("transfer-encoding", "chunked")], keep_alive)
            writer.write(head.encode("latin-1") + b"\r\n")
            try:
                async for chunk in response.chunks:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
            finally:
                # Close the generator now (not at garbage collection) so an aborted stream is counted at once.
                aclose = getattr(response.chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        if response.after_sent is not None:
            response.after_sent()


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> Request | None:
    try:
        line = await reader.readline()
        if not line:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(line[:80])
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n"):
                break
            if not raw or len(headers) >= MAX_HEADERS or b":" not in raw:
                raise BadRequest("bad header block")
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
    except (ValueError, asyncio.LimitOverrunError) as exc:  # line longer than the reader's limit
        raise BadRequest("request line or header too long") from exc
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest("bad content-length") from None
        if not 0 <= length <= MAX_BODY:
            raise BadRequest("body too large")
        body = await reader.readexactly(length) if length else b""
    return Request(parts[0], parts[1], parts[2], headers, body, client)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise BadRequest("body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
