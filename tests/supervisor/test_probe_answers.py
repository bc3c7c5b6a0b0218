"""Answers of every shape: plain ones read by the probe's own strict reader, the rest by h11, the same outcome.

`plain_answer` takes only the ordinary answer (status line, well-formed fields, one Content-Length, no
more bytes than the body); the real-server tests below send the shapes it refuses and check that the probe
still reads them right and keeps or drops the connection as HTTP/1.1 says.
"""

from __future__ import annotations

import pytest
from test_probe import HealthServer, Raw, http_probe

from supervisor.probe.plain import PlainAnswer, plain_answer

HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Sat, 28 Nov 2026 08:00:00 GMT\r\nserver: uvicorn\r\ncontent-type: application/json\r\n"
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (HEAD + b"content-length: 2\r\n\r\n{}", PlainAnswer(200, 2, 0)),
        (HEAD + b"content-length: 2\r\n\r\n", PlainAnswer(200, 2, 2)),  # the body comes in the next read
        (HEAD + b"Content-Length:  2 \r\n\r\n{", PlainAnswer(200, 2, 1)),
        (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n", PlainAnswer(503, 0, 0)),
        (b"HTTP/1.1 404 \r\ncontent-length: 0\r\n\r\n", PlainAnswer(404, 0, 0)),  # empty reason
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n", PlainAnswer(200, 0, 0)),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n", PlainAnswer(200, 70000, 70000)),
    ],
)
def test_plain_answers_are_read_directly(data: bytes, expected: PlainAnswer) -> None:
    assert plain_answer(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        HEAD,  # the head is not complete yet
        HEAD + b"content-length: 2\r\n\r\n{}x",  # bytes beyond the answer
        HEAD + b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        HEAD + b"\r\n",  # no length: the body runs to the end of the stream
        HEAD + b"content-length: 2\r\ncontent-length: 2\r\n\r\n{}",
        HEAD + b"content-length: 2a\r\n\r\n{}",
        HEAD + b"content-length: -2\r\n\r\n",
        HEAD + b"connection: close\r\ncontent-length: 2\r\n\r\n{}",
        HEAD + b"x-folded: a\r\n  b\r\ncontent-length: 0\r\n\r\n",  # obsolete line folding
        HEAD + b"bad name: x\r\ncontent-length: 0\r\n\r\n",
        HEAD + b"x-nul: a\x00b\r\ncontent-length: 0\r\n\r\n",
        HEAD + b"x-lf: a\nb\r\ncontent-length: 0\r\n\r\n",  # a bare line feed inside a field
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n",  # no space after the code: h11 forgives it, not us
        b"HTTP/1.1 200 OK\ncontent-length: 0\n\n",  # bare line feeds
        b"",
    ],
)
def test_anything_else_is_left_to_h11(data: bytes) -> None:
    assert plain_answer(data) is None


async def probe_twice(server: HealthServer, first: Raw) -> list[bool]:
    """Probe once with `first` as the answer, then once with an ordinary one; whether each was healthy."""
    server.misbehave = [first]
    async with http_probe(server.url) as probe:
        return [(await probe(5.0)).ok, (await probe(5.0)).ok]


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (Raw((HEAD + b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",)), 1),
        (Raw((b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")), 1),
        (Raw((HEAD + b"content-length: 2\r\n\r\n", b"{}")), 1),  # the body in a later read
        (Raw((HEAD[:20], HEAD[20:] + b"content-length: 2\r\n\r\n{}")), 1),  # the head in two reads
        (Raw((b"HTTP/1.1 200 OK\ncontent-length: 2\n\n{}",)), 1),  # bare line feeds, which h11 accepts
        (Raw((b"HTTP/1.1 204 No Content\r\n\r\n",)), 1),
        (Raw((HEAD + b"\r\n{}",), close=True), 2),  # no length: read to the end, then a new connection
        (Raw((b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}",)), 2),  # HTTP/1.0 does not keep it open
        (Raw((HEAD + b"content-length: 2\r\n\r\n{}garbage",)), 2),  # bytes nobody asked for: dropped
    ],
)
async def test_answers_that_are_not_plain_are_read_by_h11(answer: Raw, connections: int) -> None:
    """Each shape is healthy, and the connection is kept only when HTTP/1.1 allows it."""
    async with HealthServer() as server:
        assert await probe_twice(server, answer) == [True, True]
    assert server.connections == connections


@pytest.mark.parametrize(
    "answer",
    [
        Raw((HEAD + b"content-length: 10\r\n\r\n{}",), close=True),  # plain head, body cut short
        Raw((HEAD + b"transfer-encoding: chunked\r\n\r\n10\r\n{}",), close=True),  # chunked, cut short
        Raw((b"HTTP/1.1 2OO OK\r\ncontent-length: 0\r\n\r\n",), close=True),  # not a status line
    ],
)
async def test_broken_answers_are_server_closed(answer: Raw) -> None:
    """A body cut short or a garbled head is 'server closed the connection'; the next probe starts afresh."""
    async with HealthServer() as server:
        server.misbehave = [answer]
        async with http_probe(server.url) as probe:
            broken = await probe(5.0)
            after = await probe(5.0)
    assert not broken.ok
    assert broken.message is not None
    assert broken.message.startswith("server closed the connection: ")
    assert after.ok
    assert server.connections == 2


async def test_plain_body_cut_short_says_how_much_is_missing() -> None:
    async with HealthServer() as server:
        server.misbehave = [Raw((HEAD + b"content-length: 10\r\n\r\n{}",), close=True)]
        async with http_probe(server.url) as probe:
            result = await probe(5.0)
    assert result.message == "server closed the connection: the body ended 8 bytes short"
    assert result.status_code is None
