"""One kept-alive HTTP/1.1 connection to a model server, on asyncio streams.

h11 builds the requests (once) and reads every answer that is not plain; the plain ones, nearly all of them,
are read by `plain_answer` at a fraction of h11's cost. A connection sends GET requests one at a time and
reads each answer to its end, so that the next probe can reuse it. It says when it can no longer be reused,
and tells a request that failed because the server had already closed a kept-alive connection
(`StaleConnection`, worth one retry on a fresh one) apart from a real failure. It never retries and never
times out by itself: the caller does both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import h11

from supervisor.probe.plain import plain_answer
from supervisor.probe.result import FALLBACK_PATH, HEALTH_PATH

READ_SIZE = 64 * 1024
# A health answer is a few bytes; a bigger body is not read on (the connection is dropped instead).
BODY_LIMIT = 64 * 1024
# How long closing a connection for good may wait for the loop to let go of the socket, at shutdown only.
CLOSE_WAIT = 1.0
_END = h11.EndOfMessage()
_USER_AGENT = "llm-supervisor-probe"


class StaleConnection(Exception):
    """A reused connection failed before the server sent a byte of its answer: the server had closed it."""


class NoResponse(Exception):
    """The server closed a fresh connection without sending a byte of its answer."""


class AnswerCutShort(Exception):
    """The server closed the connection in the middle of a plain answer's body."""


@dataclass(frozen=True, slots=True)
class Request:
    """A GET that h11 built and validated once, and the bytes h11 writes for it, sent as they are each time."""

    event: h11.Request
    wire: bytes

    @classmethod
    def get(cls, target: str, headers: list[tuple[str, str]]) -> Request:
        event = h11.Request(method="GET", target=target, headers=headers)
        writer = h11.Connection(h11.CLIENT)
        return cls(event, (writer.send(event) or b"") + (writer.send(_END) or b""))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server listens and the two requests a probe sends it, built once per model."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    health: Request
    fallback: Request

    @classmethod
    def parse(cls, root: str, tls: ssl.SSLContext | None) -> Endpoint:
        """The endpoint of a server root URL; ValueError when it is not an http(s) URL with a host."""
        parts = urlsplit(root)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {root!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {root!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        headers = [("Host", parts.netloc.rpartition("@")[2]), ("User-Agent", _USER_AGENT)]
        if parts.username is not None:  # user info in the URL: Basic credentials, as any HTTP client sends them
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers.append(("Authorization", "Basic " + base64.b64encode(credentials).decode()))
        prefix = parts.path.rstrip("/")  # the root's own path: "" or e.g. "/proxy"
        health, fallback = Request.get(prefix + HEALTH_PATH, headers), Request.get(prefix + FALLBACK_PATH, headers)
        return cls(parts.hostname, port, tls if parts.scheme == "https" else None, health, fallback)


class Connection:
    """One open connection; `get` answers one request at a time (the caller sees to that)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._served = 0
        self._closed = False

    @classmethod
    async def open(cls, endpoint: Endpoint) -> Connection:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=endpoint.tls)
        return cls(reader, writer)

    @property
    def reusable(self) -> bool:
        """False once either side closed it, or the server sent anything since the last answer."""
        return (
            not self._closed
            and not self._writer.is_closing()
            # EOF or an error that arrived while idle: the server closed it (its keep-alive timeout, a restart).
            and not self._reader.at_eof()
            and self._reader.exception() is None
        )

    async def get(self, request: Request) -> int:
        """Send `request` and read the whole answer; its status. Raises StaleConnection (see there)."""
        self._writer.write(request.wire)
        try:
            data = await self._reader.read(READ_SIZE)
        except ConnectionError as exc:
            if self._served:
                raise StaleConnection(str(exc)) from exc
            raise
        if not data:
            if self._served:
                raise StaleConnection("closed before answering")
            raise NoResponse("closed without sending a response")
        plain = plain_answer(data)
        if plain is None:
            status = await self._read_with_h11(request, data)
        else:
            status, length, missing = plain
            if length > BODY_LIMIT:
                self.close()  # reading on would cost more than a new connection
            elif missing:
                await self._skip(missing)
        served_before = self._served
        self._served += 1
        if status == 408 and served_before:
            # 408 on a reused connection is a server announcing its idle timeout (RFC 9110), not an answer.
            self.close()
            raise StaleConnection("server timed out the idle connection")
        return status

    async def _skip(self, size: int) -> None:
        """Read and drop the rest of a body."""
        try:
            await self._reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise AnswerCutShort(f"the body ended {size - len(exc.partial)} bytes short") from None

    async def _read_with_h11(self, request: Request, data: bytes) -> int:
        """Read an answer that is not plain (see `plain_answer`) with h11, starting with the bytes in `data`."""
        http = h11.Connection(h11.CLIENT)
        http.send(request.event)  # already on the wire: h11 only learns what it is answering
        http.send(_END)
        http.receive_data(data)
        status = 0
        body = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await self._reader.read(READ_SIZE))  # b"": the end; an answer cut short raises
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > BODY_LIMIT:
                    self.close()
                    return status
            elif isinstance(event, h11.EndOfMessage):
                break
            # InformationalResponse (1xx) needs nothing: the final answer follows.
        if http.their_state is not h11.DONE or http.trailing_data[0]:
            self.close()  # "Connection: close", HTTP/1.0, or bytes nobody asked for
        return status

    def close(self) -> None:
        """Drop the connection now; the transport finishes closing on the loop."""
        if not self._closed:
            self._closed = True
            self._writer.close()

    async def aclose(self) -> None:
        """Close at once and wait (briefly) until the socket is gone: for shutdown, where the loop may end next.

        Aborted rather than closed: a TLS goodbye would wait on the peer, and a prober owes it none."""
        self._closed = True
        self._writer.transport.abort()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_WAIT):
                await self._writer.wait_closed()
