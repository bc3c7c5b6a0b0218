"""Recognise the ordinary answer to a health probe without a full HTTP parser.

Nearly every probe gets the same kind of answer: `HTTP/1.1 200`, a handful of well-formed header fields, a
Content-Length and a few bytes of body, on a connection that stays open. h11 parses that at about twice the
CPU of everything else a probe does, so such an answer is read here, strictly (RFC 9112 status line, RFC
9110 field syntax), and anything else — 1xx, chunked, no length, `Connection: close`, HTTP/1.0, odd bytes,
a head split across reads — is left to h11, which reads every answer that is not plain.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# The head of a final answer (1xx is h11's): the status line (version, code, a space, an optional reason),
# then field lines (a token, a colon, optional whitespace, a value of visible characters, spaces and tabs).
_HEAD = re.compile(
    rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]*\r\n"
    rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*(?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?\r\n)*"
)
# The fields that decide how the body is framed. In a head _HEAD matched, every LF ends a line.
_FRAMING = re.compile(rb"\n(content-length|transfer-encoding|connection):[ \t]*([^\r]*)", re.IGNORECASE)
_HEAD_END = b"\r\n\r\n"
_NO_BODY = (204, 304)  # their Content-Length describes another answer: h11 knows the rules


class PlainAnswer(NamedTuple):
    status: int
    length: int  # the body's Content-Length
    missing: int  # body bytes still to read after those already received


def plain_answer(data: bytes) -> PlainAnswer | None:
    """The answer at the start of `data` when it is plain (see the module); None for h11 to read."""
    end = data.find(_HEAD_END)
    if end < 0:
        return None
    head = _HEAD.fullmatch(data, 0, end + 2)  # up to the CRLF that ends the last field line
    if head is None:
        return None
    status = int(head[1])
    if status in _NO_BODY:
        return None
    length: int | None = None
    for name, value in _FRAMING.findall(data, 0, end + 2):
        name_lower = name.lower()
        if name_lower == b"content-length":
            digits = value.rstrip(b" \t")
            if length is not None or not digits.isdigit():
                return None  # repeated or not a number: h11 decides
            length = int(digits)
        elif name_lower == b"transfer-encoding" or b"close" in value.lower():
            return None
    if length is None:
        return None
    received = len(data) - end - len(_HEAD_END)
    if received > length:
        return None  # bytes beyond the answer: h11 reads it and the connection is dropped
    return PlainAnswer(status, length, length - received)
