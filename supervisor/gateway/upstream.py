"""Requests to a model server over kept-alive HTTP/1.1 connections (asyncio Protocols; the head parsing and
flow control of wire.py).

Each server has a small pool of idle connections, so a request does not pay a TCP handshake. What can go
wrong is told apart by when it happened: `NoResponse` (refused, reset or closed before any response byte:
safe to send elsewhere) or `BrokenBody` (the answer started and then broke). A request sent on a connection
the server had closed while it sat idle is sent again once on a fresh connection: that is the pool's
business, not a failure of the server. An idle connection the server is known to have closed is not tried.

An answer's body is framed as h11 frames it: none for 1xx (skipped), 204 and 304; chunked when the
Transfer-Encoding says so (nothing else is accepted); else Content-Length; else up to the end of the
connection, which is then not reused. A chunked body is handed on as it arrives, every complete chunk in the
buffer at once, so a fast stream costs one relay step per read rather than one per chunk.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from supervisor.gateway.wire import (
    BLANK_LINE,
    CHUNK_HEADER,
    MAX_HEAD,
    STATUS_LINE,
    HttpError,
    Wire,
    comma_values,
    content_length,
    encode_fields,
    parse_fields,
)

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
        conn = self._conn
        whole = conn.whole_body()
        if whole is not None:  # the usual small answer, come with its head: the connection is free at once
            self._pool.release(conn, reusable=True)
            if whole:
                yield whole
            return
        finished = False
        try:
            while (data := await conn.next_data()) is not None:
                yield data
            finished = True
        finally:
            # A connection whose answer was read to the end goes back to the pool; any other is closed.
            self._pool.release(conn, reusable=finished)

    async def read(self) -> bytes:
        whole = self._conn.whole_body()
        if whole is not None:
            self._pool.release(self._conn, reusable=True)
            return whole
        return b"".join([chunk async for chunk in self.chunks()])


_CLOSED_EARLY = "the server closed the connection before the answer ended"


class _Connection(Wire):
    def __init__(self) -> None:
        super().__init__()
        self._length: int | None = None  # Content-Length framing: bytes of body still to come
        self._chunked = False
        self._chunk_left = 0  # chunked: data bytes left in the current chunk
        self._crlf_due = False  # chunked: the CRLF after a chunk's data is still to come
        self._trailers = False  # chunked: the last chunk came; trailer fields up to a blank line follow
        self._done = False  # the whole answer has been read
        self._keep_alive = False

    def eof_received(self) -> bool:
        super().eof_received()
        return False  # the server is done with this connection: close it (not left half-open while idle)

    def send(self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        self.write(
            b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s"
            % (method.encode("ascii"), target.encode("ascii"), encode_fields(headers), len(body), body)
        )

    async def head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Status and headers of the answer (informational 1xx answers skipped); sets up its framing."""
        buffer = self.buffer
        while True:
            blank = BLANK_LINE.search(buffer)
            if blank is None:
                if len(buffer) > MAX_HEAD:
                    raise HttpError(f"answer head over {MAX_HEAD // 1024} KiB")
                if not await self.more():
                    raise ConnectionAbortedError("closed before answering")
                continue
            data = bytes(buffer[: blank.end()])
            del buffer[: blank.end()]
            line_end = data.find(b"\n")
            line = STATUS_LINE.fullmatch(data, 0, line_end)
            if line is None:
                raise HttpError(f"illegal status line: {data[:line_end]!r}")
            major, minor, code = line.groups()
            if major != b"1":
                raise HttpError(f"not an HTTP/1.x answer: {data[:line_end]!r}")
            headers = parse_fields(data[line_end + 1 : blank.start() + 1])
            status = int(code)
            if status >= 200:
                self._frame(status, headers, http10=minor == b"0")
                return status, headers

    def _frame(self, status: int, headers: list[tuple[bytes, bytes]], *, http10: bool) -> None:
        keep_alive, length, codings = not http10, None, []
        for name, value in headers:
            if name == b"content-length":
                length = content_length(value, length)
            elif name == b"transfer-encoding":
                codings += comma_values(value)
            elif name == b"connection":
                keep_alive = keep_alive and b"close" not in comma_values(value)
        if status in (204, 304):
            length = 0
        elif codings:
            if codings != [b"chunked"]:
                raise HttpError(f"unsupported Transfer-Encoding: {b', '.join(codings)!r}")
            self._chunked, length = True, None
        elif length is None:
            keep_alive = False  # the body ends when the connection does
        self._length = length
        self._keep_alive = keep_alive

    def whole_body(self) -> bytes | None:
        """The body when it is all in the buffer and framed by a length (the answer is then read)."""
        length = self._length
        if length is None or len(self.buffer) < length or self._done:
            return None
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        self._length = 0
        self._done = True
        return body

    async def next_data(self) -> bytes | None:
        """The next piece of the body: what the buffer holds, or what comes next; None at its end."""
        try:
            while True:
                data = self._take()
                if data:
                    return data
                if self._done:
                    return None
                if not await self.more():
                    if self._length is None and not self._chunked:
                        self._done = True  # framed by the end of the connection
                        return None
                    raise BrokenBody(_CLOSED_EARLY)
        except (OSError, HttpError) as exc:
            raise BrokenBody(str(exc) or type(exc).__name__) from exc

    def _take(self) -> bytes:
        """What of the body the buffer holds, removed from it; marks the answer done at its end."""
        buffer = self.buffer
        if self._chunked:
            return self._dechunk()
        if self._length is None:
            data = bytes(buffer)
            buffer.clear()
            return data
        data = bytes(buffer[: self._length])
        del buffer[: self._length]
        self._length -= len(data)
        self._done = self._length == 0
        return data

    def _dechunk(self) -> bytes:
        buffer = self.buffer
        pieces: list[bytes] = []
        while True:
            if self._chunk_left:
                if not buffer:
                    break
                piece = bytes(buffer[: self._chunk_left])
                del buffer[: self._chunk_left]
                pieces.append(piece)
                self._chunk_left -= len(piece)
                if self._chunk_left:
                    break
                self._crlf_due = True
            if self._crlf_due:
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise HttpError("malformed chunk footer")
                del buffer[:2]
                self._crlf_due = False
            if self._trailers:
                if buffer.startswith((b"\r\n", b"\n")):
                    del buffer[: 2 if buffer[0] == 13 else 1]
                elif (blank := BLANK_LINE.search(buffer)) is not None:
                    parse_fields(bytes(buffer[: blank.start() + 1]))
                    del buffer[: blank.end()]
                elif len(buffer) > MAX_HEAD:
                    raise HttpError("malformed chunked trailer")
                else:
                    break
                self._done = True
                break
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > MAX_HEAD:
                    raise HttpError("illegal chunk header")
                break
            size_line = CHUNK_HEADER.fullmatch(buffer, 0, line_end + 2)
            if size_line is None:
                raise HttpError(f"illegal chunk header: {bytes(buffer[:line_end])!r}")
            self._chunk_left = int(size_line[1], 16)  # before the buffer changes under the match
            del buffer[: line_end + 2]
            self._trailers = self._chunk_left == 0
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def reusable(self) -> bool:
        """Whether the next request may use this connection: its answer read whole, kept alive by both sides,
        nothing unexpected after it."""
        if not (self._done and self._keep_alive) or self.at_eof or self.buffer:
            return False
        self._length, self._chunked, self._chunk_left = None, False, 0
        self._crlf_due = self._trailers = self._done = False
        return True


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
            if conn.at_eof or conn.buffer:
                conn.close()  # the server closed it (or said something unasked) while it sat idle
                continue
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
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._tls)
        except ConnectionRefusedError as exc:
            raise NoResponse("refused", "connection refused") from exc
        except OSError as exc:
            raise NoResponse("connect", f"cannot connect: {exc.strerror or exc}") from exc
        return conn

    async def _exchange(
        self, conn: _Connection, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Answer:
        try:
            conn.send(method, target, headers, body)
            await conn.drain()
            status, answer_headers = await conn.head()
        except (ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            raise NoResponse("reset", "connection reset before any answer") from exc
        except (OSError, HttpError) as exc:
            conn.close()
            raise NoResponse("closed", f"the server closed the connection before answering: {exc}") from exc
        except BaseException:
            conn.close()  # cancelled (the request's deadline passed): the connection is mid-exchange
            raise
        return Answer(status, answer_headers, conn, self)
