"""The load generator records what a client sees: against fake-vllm every request succeeds, streamed or not;
against a server that misbehaves in each known way, the record says how, and chaos.traffic calls it failed."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from chaos.fixtures import FakeServer
from chaos.load import Traffic
from chaos.scenario import Load
from chaos.traffic import failure

CHUNK = {"choices": [{"index": 0, "text": "hi", "finish_reason": None}]}
LAST = {"choices": [{"index": 0, "text": "!", "finish_reason": "length"}]}


def sse(*events: object) -> bytes:
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n" for e in events
    )


# What the misbehaving server answers, by the request's prompt: (status, streamed body or JSON answer).
ANSWERS: dict[str, tuple[int, bytes]] = {
    "whole": (200, sse(CHUNK, LAST, "[DONE]")),
    "no-done": (200, sse(CHUNK, LAST)),
    "error-event": (200, sse(CHUNK, {"error": {"message": "the model server's stream broke", "code": 502}}, "[DONE]")),
    "stray": (200, b"event: ping\n\n" + sse(CHUNK, LAST, "[DONE]")),
    "cut-short": (200, sse(CHUNK, "[DONE]")),
    "after-done": (200, sse(CHUNK, LAST, "[DONE]", CHUNK)),
    "unavailable": (503, json.dumps({"error": {"message": "no ready replica", "code": 503}}).encode()),
    "plain": (200, json.dumps({"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}]}).encode()),
}


@asynccontextmanager
async def misbehaving(received: asyncio.Event | None = None, delay: float = 0.0) -> AsyncIterator[str]:
    """A one-request-per-connection HTTP server answering by prompt; "slow" never answers."""
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        prompt = json.loads(await reader.readexactly(length))["prompt"]
        if received is not None:
            received.set()
        if prompt == "slow":
            await asyncio.Event().wait()  # never answers: the client's timeout must end it
        await asyncio.sleep(delay)
        status, body = ANSWERS[prompt]
        kind = b"text/event-stream" if body.startswith((b"data", b"event")) else b"application/json"
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: %s\r\nx-llm-supervisor-model: m1\r\nx-request-id: r1\r\n"
            b"connection: close\r\n\r\n" % (status, kind) + body
        )
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()  # the "slow" one waits forever
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def until(condition: Callable[[], object], within: float = 10.0) -> None:
    """Wait for a condition, failing after `within` seconds."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def first_record(url: str, prompt: str, **spec: Any) -> Any:
    traffic = Traffic(Load(model="m1", concurrency=1, prompt=prompt, **spec), url)
    traffic.start()
    await until(lambda: traffic.records)
    await traffic.stop()
    return traffic.records[0]


@pytest.mark.parametrize(
    ("prompt", "stream", "reason"),
    [
        ("whole", True, None),
        ("plain", False, None),
        ("no-done", True, "stream ended without data: [DONE]"),
        ("error-event", True, "error event (the model server's stream broke)"),
        ("stray", True, "1 line(s) in the stream that were not data events"),
        ("cut-short", True, "no choice finished"),
        ("after-done", True, "1 line(s) in the stream"),
        ("unavailable", True, "HTTP 503"),
    ],
)
async def test_each_way_an_answer_can_go_wrong_is_recorded(prompt: str, stream: bool, reason: str | None) -> None:
    async with misbehaving() as url:
        record = await first_record(url, prompt, stream=stream)
    got = failure(record)
    assert got is None if reason is None else (got is not None and got.startswith(reason)), got
    assert (record.served_by, record.request_id) == ("m1", "r1")


async def test_the_first_stray_line_is_kept_to_show_what_it_was() -> None:
    async with misbehaving() as url:
        record = await first_record(url, "stray", stream=True)
    assert (record.stray_lines, record.stray_sample) == (1, "event: ping")


async def test_an_error_body_is_kept_with_its_status() -> None:
    async with misbehaving() as url:
        record = await first_record(url, "unavailable")
    assert (record.status, record.error_event) == (503, "no ready replica")


async def test_a_request_past_its_timeout_is_recorded_as_timed_out() -> None:
    async with misbehaving() as url:
        record = await first_record(url, "slow", timeout=0.3)
    assert record.timed_out
    assert record.latency >= 0.3
    assert failure(record) == "timed out"


async def test_a_refused_connection_is_a_transport_error() -> None:
    async with misbehaving() as url:
        pass  # closed again: nothing listens on its port any more
    record = await first_record(url, "whole")
    assert record.status is None
    assert record.transport_error is not None
    assert failure(record) is not None


async def test_stop_lets_the_request_in_flight_finish() -> None:
    """Stopping sends nothing new but does not cut the request under way: it ends, and succeeds."""
    received = asyncio.Event()
    async with misbehaving(received, delay=0.3) as url:
        traffic = Traffic(Load(model="m1", concurrency=1, prompt="plain"), url)
        traffic.start()
        await received.wait()
        await traffic.stop()
    assert len(traffic.records) == 1
    assert failure(traffic.records[0]) is None
    assert traffic.records[0].latency >= 0.3


async def test_a_rate_spaces_the_requests() -> None:
    """At 10 requests per second, starts are at least 0.1 s apart whatever the concurrency."""
    async with misbehaving() as url:
        traffic = Traffic(Load(model="m1", concurrency=3, prompt="plain", rate=10), url)
        traffic.start()
        await until(lambda: len(traffic.records) >= 4)
        await traffic.stop()
    starts = sorted(r.started for r in traffic.records)
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.09


async def test_fake_vllm_answers_every_request_streamed_or_not(fake_vllm: Callable[..., FakeServer]) -> None:
    """Against the fake's OpenAI API (no gateway in between): completions and chat, both succeed."""
    server = fake_vllm("--itl", "0.002", model="m1")
    for kind in ("completions", "chat"):
        traffic = Traffic(Load(model="m1", concurrency=2, stream="both", kind=kind, max_tokens=5), server.url)
        assert await traffic.wait_ready()
        traffic.start()
        await until(lambda t=traffic: {r.stream for r in t.records} == {True, False})
        await traffic.stop()
        assert [failure(r) for r in traffic.records] == [None] * len(traffic.records)
        streamed = [r for r in traffic.records if r.stream]
        assert all(r.chunks >= 1 and r.first_byte is not None for r in streamed)
