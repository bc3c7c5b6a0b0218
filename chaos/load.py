"""The scenario's `load`: OpenAI requests sent through the gateway while the scenario runs, each recorded as
its client saw it (status, timing, how a stream ended), for the `requests` expectation and the reports.

`concurrency` clients each send a request, wait for its whole answer (or its `timeout`), and send the next;
with `rate`, the clients share a schedule of that many requests per second instead. With `stream: both`,
every other client streams. Stopping lets the
requests in flight finish (each is bounded by its timeout), so none is cut short by the harness itself and
counted as a failure of the gateway.

A stream is read line by line as a client parses Server-Sent Events: it is complete when its last event is
`data: [DONE]` after nothing but JSON data events; anything else is recorded as it was found (chaos.traffic
decides what counts as failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import httpx

from chaos.scenario import Load
from chaos.timeline import RequestRecord

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def request_body(spec: Load, stream: bool) -> dict[str, object]:
    body: dict[str, object] = {"model": spec.model, "max_tokens": spec.max_tokens, "stream": stream}
    if spec.kind == "chat":
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    return body


@dataclass
class _Reading:
    """What has been seen of one answer so far."""

    status: int | None = None
    first_byte: float | None = None
    done: bool = False
    finished: bool = False
    chunks: int = 0
    stray_lines: int = 0
    stray_sample: str | None = None
    error_event: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def stray(self, line: str) -> None:
        self.stray_lines += 1
        if self.stray_sample is None:
            self.stray_sample = line[:200]

    def data(self, payload: str) -> None:
        """One `data:` event of a stream."""
        if self.done:
            self.stray(f"data: {payload}")  # nothing may follow [DONE]
            self.done = False
            return
        if payload == "[DONE]":
            self.done = True
            return
        try:
            event = json.loads(payload)
        except ValueError:
            self.stray(f"data: {payload}")
            return
        if isinstance(event, dict) and "error" in event:
            self.error_event = _message(event["error"])
            return
        self.chunks += 1
        self.finished = self.finished or _finished(event)

    def body(self, raw: bytes) -> None:
        """A whole non-streamed answer: a completion has `choices`; an error body says why it is not."""
        try:
            answer = json.loads(raw)
        except ValueError:
            return
        if isinstance(answer, dict) and "error" in answer:
            self.error_event = _message(answer["error"])
        self.done = isinstance(answer, dict) and isinstance(answer.get("choices"), list)
        self.finished = _finished(answer)


def _finished(answer: object) -> bool:
    """Some choice of a completion (or of one stream chunk) says why it ended."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def _message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message", error))[:200]
    return str(error)[:200]


class Traffic:
    """Sends the load to `gateway_url` from start() to stop(); `records` grows as answers end."""

    def __init__(self, spec: Load, gateway_url: str, headers: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.url = gateway_url.rstrip("/")
        self.headers = dict(headers or {})
        self.records: list[RequestRecord] = []
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._next_slot = 0.0

    async def wait_ready(self, within: float = 10.0) -> bool:
        """Wait until the gateway lists its models (it starts just after the management API)."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1.0, headers=self.headers) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/v1/models")).status_code == 200:
                        return True
                await asyncio.sleep(0.05)  # polling the port until the gateway listens, bounded by the deadline
        return False

    def start(self) -> None:
        limits = httpx.Limits(max_connections=self.spec.concurrency, max_keepalive_connections=self.spec.concurrency)
        # The client's own timeout is a backstop: each request is bounded by spec.timeout as a whole.
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, limits=limits, timeout=self.spec.timeout + 5
        )
        self._next_slot = time.monotonic()
        self._tasks = [asyncio.create_task(self._client_loop(self._streams(i))) for i in range(self.spec.concurrency)]

    async def stop(self) -> None:
        """Send nothing new; let the requests in flight end (each within its timeout)."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def snapshot(self) -> tuple[RequestRecord, ...]:
        return tuple(self.records)

    def _streams(self, client: int) -> bool:
        """Whether this client streams: all, none, or (`stream: both`) every other one."""
        return client % 2 == 1 if self.spec.stream == "both" else self.spec.stream

    async def _client_loop(self, stream: bool) -> None:
        while not self._stopping.is_set():
            if self.spec.rate is not None and not await self._await_slot(self.spec.rate):
                return
            self.records.append(await self.send(stream))

    async def _await_slot(self, rate: float) -> bool:
        """Take the next slot of the shared schedule and wait for it; False when stopped meanwhile."""
        slot = max(self._next_slot, time.monotonic())
        self._next_slot = slot + 1.0 / rate
        delay = slot - time.monotonic()
        if delay <= 0:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
            return False
        return True

    async def send(self, stream: bool) -> RequestRecord:
        """One request, recorded whatever happens to it."""
        assert self._client is not None, "start() first"
        spec = self.spec
        reading = _Reading()
        started, began = time.time(), time.monotonic()
        timed_out, transport_error = False, None
        try:
            async with asyncio.timeout(spec.timeout):
                await self._exchange(reading, began, stream)
        except TimeoutError:
            timed_out = True
        except httpx.HTTPError as exc:
            transport_error = f"{type(exc).__name__}: {exc}"[:200]
        headers = reading.headers
        return RequestRecord(
            model=spec.model,
            path=PATHS[spec.kind],
            stream=stream,
            started=started,
            latency=time.monotonic() - began,
            status=reading.status,
            first_byte=reading.first_byte,
            done=reading.done,
            finished=reading.finished,
            chunks=reading.chunks,
            stray_lines=reading.stray_lines,
            stray_sample=reading.stray_sample,
            error_event=reading.error_event,
            timed_out=timed_out,
            transport_error=transport_error,
            served_by=headers.get("x-llm-supervisor-model"),
            fallback=headers.get("x-llm-supervisor-fallback"),
            request_id=headers.get("x-request-id"),
        )

    async def _exchange(self, reading: _Reading, began: float, stream: bool) -> None:
        assert self._client is not None
        body = request_body(self.spec, stream)
        async with self._client.stream("POST", PATHS[self.spec.kind], json=body) as response:
            reading.status = response.status_code
            reading.headers = {k.lower(): v for k, v in response.headers.items()}
            if not (stream and response.status_code == 200):
                raw = await response.aread()
                reading.first_byte = time.monotonic() - began
                reading.body(raw)
                return
            async for line in response.aiter_lines():
                if reading.first_byte is None:
                    reading.first_byte = time.monotonic() - began
                if not line:
                    continue  # the blank line that ends each event
                if line.startswith("data:"):
                    reading.data(line.removeprefix("data:").strip())
                else:
                    reading.stray(line)
