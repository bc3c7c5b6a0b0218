"""Requests to a model server over kept-alive HTTP/1.1 connections (asyncio streams and h11).

Each server has a small pool of idle connections, so a request does not pay a TCP handshake. What can go
wrong is told apart by when it happened: `NoResponse` (refused, reset or closed before any response byte:
safe to send elsewhere) or `BrokenBody` (the answer started and then broke). A request sent on a connection
the server had closed while it sat idle is sent again once on a fresh connection: that is the pool's
business, not a failure of the server.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import h11

READ_CHUNK = 64 * 1024
MAX_IDLE_PER_SERVER = 32


class NoResponse(Exception):
    """Nothing of an answer arrived: the request may be sent to another server."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # a short label for metrics: refused, reset, closed, timeout


class BrokenBody(Exception):
    """The answer started, then the connection broke or the server stopped mid-way."""


@dataclass(slots=True)
class Answer:
    """A response whose head has arrived; its body is read with `chunks()`, exactly once."""

    status: int
    headers: list[tuple[bytes, bytes]]
    _conn: _Connection
    _pool: Pool

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        finished = False
        try:
            async for chunk in self._conn.body():
                yield chunk
            finished = True
        finally:
            # A connection whose answer was read to the end goes back to the pool; any other is closed.
            self._pool.release(self._conn, reusable=finished)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        request = h11.Request(method=method, target=target, headers=[*headers, (b"content-length", b"%d" % len(body))])
        self.writer.write(
            self.h11.send(request) + self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
        )
        await self.writer.drain()

    async def head(self) -> h11.Response:
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionAbortedError("closed before answering")

    async def body(self) -> AsyncGenerator[bytes, None]:
        while True:
            try:
                event = await self._next()
            except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError) as exc:
                raise BrokenBody(str(exc) or type(exc).__name__) from exc
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise BrokenBody("the server closed the connection before the answer ended")

    async def _next(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_CHUNK)
            self.h11.receive_data(data)

    def reusable(self) -> bool:
        if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        return True

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Kept-alive connections to one server (`host`:`port`, over TLS when `tls`)."""

    def __init__(self, host: str, port: int, tls: bool = False) -> None:
        self.host = host
        self.port = port
        self._tls = ssl.create_default_context() if tls else None
        self._idle: list[_Connection] = []

    async def request(self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Answer:
        """Send a request and return once the answer's head arrived; raise NoResponse if none did."""
        while self._idle:
            conn = self._idle.pop()
            try:
                return await self._exchange(conn, method, target, headers, body)
            except NoResponse:
                continue  # the server had closed this idle connection; try the next, then a fresh one
        conn = await self._connect()
        return await self._exchange(conn, method, target, headers, body)

    def release(self, conn: _Connection, *, reusable: bool) -> None:
        if reusable and conn.reusable() and len(self._idle) < MAX_IDLE_PER_SERVER:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_CHUNK, ssl=self._tls)
        except ConnectionRefusedError as exc:
            raise NoResponse("refused", "connection refused") from exc
        except OSError as exc:
            raise NoResponse("connect", f"cannot connect: {exc.strerror or exc}") from exc
        return _Connection(reader, writer)

    async def _exchange(
        self, conn: _Connection, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Answer:
        try:
            await conn.send(method, target, headers, body)
            head = await conn.head()
        except (ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            raise NoResponse("reset", "connection reset before any answer") from exc
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
            conn.close()
            raise NoResponse("closed", f"the server closed the connection before answering: {exc}") from exc
        except BaseException:
            conn.close()  # cancelled (the request's deadline passed): the connection is mid-exchange
            raise
        return Answer(head.status_code, list(head.headers), conn, self)
