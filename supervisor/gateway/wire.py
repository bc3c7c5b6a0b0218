"""The bytes of one HTTP/1.1 connection and the grammar of its heads, shared by the server (http11.py) and
the upstream client (upstream.py): limits, h11's regular expressions, header parsing and encoding, and `Wire`
(a connection's buffer with both directions' flow control).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import cast

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
