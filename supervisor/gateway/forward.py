"""One request through the gateway: route it to a ready replica, hold it while the model restarts, retry it
before any byte reached the client, fall back honestly, and never end a stream silently.

The rules, in order:
- A replica is chosen among the model's ready ones (healthy, not draining), the one with fewest in flight.
  A replica whose current run already failed this request is not chosen again; a new run of it may be.
- No replica ready, but one starting or scheduled to restart: the request waits for a change, up to
  `hold_timeout` from its arrival.
- A failure before the first byte went to the client (refused, reset, a 5xx while another replica is ready,
  a stream that breaks before its first chunk) is tried again, `max_attempts` in all. Attempts are
  sequential, so a request is never in flight on two replicas at once.
- A non-streamed answer is read whole before anything is sent, so it is always retryable.
- After bytes went out, a broken stream ends with a vLLM-style error event and `data: [DONE]`.
- With no ready replica and nothing to wait for, `fallback` serves when it has a ready replica, said so in
  `x-llm-supervisor-fallback`; otherwise 503, with `Retry-After` when a restart is scheduled.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from supervisor.config.schema import GatewaySettings
from supervisor.gateway.errors import error_body, error_event
from supervisor.gateway.http11 import Request, Response
from supervisor.gateway.metrics import GatewayMetrics
from supervisor.gateway.names import ServedNames
from supervisor.gateway.upstream import Answer, BrokenBody, NoResponse, Pool
from supervisor.gateway.wire import Headers
from supervisor.loop.model import Replica, SupervisedModel

T = TypeVar("T")

log = logging.getLogger(__name__)

JSON = [(b"content-type", b"application/json")]
# Not passed on in either direction: they describe one connection, not the message.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"content-length", b"host"}
    | {b"proxy-authorization", b"proxy-authenticate"}
)


@dataclass
class Journey:
    """What happened to one request so far."""

    model: SupervisedModel  # the model the client named
    path: str
    payload: dict[str, object]
    body: bytes  # as the client sent it: forwarded unchanged when the model's name needs no rewrite
    request_id: str
    headers: Headers
    arrived: float
    deadline: float
    target: SupervisedModel = field(init=False)
    fallback_reason: str | None = None
    attempts: int = 0
    held: float = 0.0
    failed_runs: set[tuple[int, int]] = field(default_factory=set)  # (replica index, run number)
    last_error: str = "no replica answered"

    def __post_init__(self) -> None:
        self.target = self.model

    @property
    def streaming(self) -> bool:
        return self.payload.get("stream") is True


class Forwarder:
    def __init__(
        self,
        models: Callable[[], Mapping[str, SupervisedModel]],
        *,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        names: ServedNames,
        api_key: str | None,
        on_stall: Callable[[Replica, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._models = models
        self._settings = settings
        self._metrics = metrics
        self._names = names
        self._api_key = api_key
        self._on_stall = on_stall  # a request saw no progress for progress_timeout: tell the replica's owner
        self._clock = clock
        self._pools: dict[tuple[str, int, bool], Pool] = {}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def pool(self, replica: Replica) -> Pool:
        key = _server_address(replica)
        if key not in self._pools:
            self._pools[key] = Pool(*key)
        return self._pools[key]

    # --- the front door ------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        request_id = (request.header(b"x-request-id") or os.urandom(16).hex().encode()).decode(errors="replace")
        try:
            answered = await self._answer(request, request_id)
        except Exception:  # a bug must cost one request an error, never the connection or the gateway
            log.exception("gateway: request %s failed", request_id)
            answered = _error(500, f"internal error in the gateway (request {request_id}); see the supervisor's log")
        answered.headers.append((b"x-request-id", request_id.encode()))
        return answered

    async def _answer(self, request: Request, request_id: str) -> Response:
        if self._api_key is not None and not self._authorized(request):
            return _error(401, "a valid API key is required: send it as 'Authorization: Bearer <key>'")
        path = request.target.split("?", 1)[0]
        if request.method == "GET" and path == "/v1/models":
            return self._model_list()
        if not path.startswith("/v1/"):
            return _error(404, f"no route {path}: the gateway serves the OpenAI API under /v1/")
        if request.method != "POST":
            return _error(405, f"{request.method} {path} is not served; use POST")
        try:
            payload = json.loads(request.body)
        except ValueError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        name = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(name, str):
            return _error(400, "the body must be a JSON object naming a model in 'model'", "model")
        model = self._resolve(name) or await self._resolve_after_asking(name)
        if model is None:
            known = ", ".join(self._models()) or "none"
            return _error(404, f"The model `{name}` does not exist. Known models: {known}", "model")
        now = self._clock()
        headers = [(k, v) for k, v in request.headers if k not in HOP_BY_HOP and k != b"authorization"]
        if self._api_key is None and (auth := request.header(b"authorization")) is not None:
            headers.append((b"authorization", auth))  # the servers' own key, when the gateway has none
        deadline = now + self._settings.hold_timeout
        journey = Journey(model, request.target, payload, request.body, request_id, headers, now, deadline)
        metrics = self._metrics.of(model.id)
        metrics.in_flight.inc()
        try:
            response = await self._route(journey)
        except BaseException:
            metrics.in_flight.dec()
            raise
        finally:
            if journey.held:
                metrics.held.observe(journey.held)
        self._finish(journey, response)
        return response

    # --- routing, holding, retrying ------------------------------------------------------------------

    async def _route(self, journey: Journey) -> Response:
        while True:
            replica = self._pick(journey.target, journey.failed_runs)
            if replica is None:
                now = self._clock()
                if now < journey.deadline and journey.target.may_become_ready():
                    await journey.target.wait_changed(journey.deadline - now)
                    journey.held += self._clock() - now
                    continue
                if journey.target is journey.model and (fallback := self._fallback(journey.model)) is not None:
                    journey.target = fallback
                    journey.fallback_reason = f"no ready replica of {journey.model.id}"
                    journey.failed_runs = set()
                    self._metrics.fallbacks.labels(journey.model.id, fallback.id).inc()  # rare: no cache
                    continue
                return self._unavailable(journey)
            if journey.attempts >= self._settings.max_attempts:
                return _error(502, f"{journey.attempts} attempts failed; the last: {journey.last_error}")
            journey.attempts += 1
            response = await self._attempt(journey, replica)
            if response is not None:
                return response

    def _pick(self, model: SupervisedModel, failed_runs: set[tuple[int, int]]) -> Replica | None:
        ready = [r for r in model.ready_replicas() if (r.index, r.owner.snapshot.run) not in failed_runs]
        return min(ready, key=lambda r: r.in_flight, default=None)

    async def _attempt(self, journey: Journey, replica: Replica) -> Response | None:
        """Send the request to one replica: its answer, or None to try again elsewhere.

        With `progress_timeout`, no wait on the server (for the head, the body, or the first chunk of a
        stream) lasts longer than that: a hung server fails the request over instead of holding it."""
        run = (replica.index, replica.owner.snapshot.run)
        limit = journey.target.cfg.progress_timeout
        pool = self.pool(replica)
        name = self._names.first(journey.target.id) or await self._names.learn(journey.target.id, pool)
        renamed = name is not None and name != journey.payload["model"]
        body = json.dumps({**journey.payload, "model": name}).encode() if renamed else journey.body
        headers = [(b"host", pool.host.encode()), *journey.headers]
        replica.started_request(self._clock())
        handed_on = False
        try:
            answer = await _within(limit, pool.request("POST", journey.path, headers, body))
            if answer.status >= 500 and self._may_retry_5xx(journey, replica, run):
                await _within(limit, _read_all(answer.chunks()))
                self._retry_elsewhere(journey, run, f"http_{answer.status}", f"HTTP {answer.status}")
                return None
            if not journey.streaming or answer.status != 200:
                content = await _within(limit, _read_all(answer.chunks()))
                replica.progressed(self._clock())
                return Response(answer.status, self._answer_headers(journey, answer), content)
            chunks = answer.chunks()
            try:
                # The head waits for the first chunk, so a stream that breaks before it is retried.
                first = await _within(limit, anext(chunks))
            except BaseException:
                await chunks.aclose()
                raise
            if first.startswith(b'data: {"error"') and self._may_retry_5xx(journey, replica, run):
                # The stream failed before anything reached the client (an engine dying as it began):
                # as retryable as a 5xx.
                await chunks.aclose()
                self._retry_elsewhere(journey, run, "error_event", first.decode(errors="replace")[:200])
                return None
            replica.progressed(self._clock())
            handed_on = True
            stream = self._relay(journey, replica, first, chunks)
            return Response(answer.status, self._answer_headers(journey, answer), stream=stream)
        except NoResponse as exc:
            self._retry_elsewhere(journey, run, exc.reason, str(exc))
        except BrokenBody as exc:
            self._retry_elsewhere(journey, run, "broken", str(exc))
        except StopAsyncIteration:
            self._retry_elsewhere(journey, run, "broken", "the stream ended before any data")
        except TimeoutError:
            detail = f"no output for {limit:g}s from a request in flight"
            self._on_stall(replica, detail)
            self._retry_elsewhere(journey, run, "timeout", detail)
        finally:
            if not handed_on:
                replica.finished_request()
        return None

    async def _relay(
        self, journey: Journey, replica: Replica, first: bytes, chunks: AsyncGenerator[bytes, None]
    ) -> AsyncGenerator[bytes, None]:
        limit = journey.target.cfg.progress_timeout
        try:
            yield first
            if first.endswith(b"data: [DONE]\n\n"):
                limit = None  # the answer is complete: only the end of the body is awaited, not more progress
            while True:
                # Bytes already reached the client: a broken or stalled stream cannot be retried, and
                # must not look complete.
                try:
                    chunk = await _within(limit, anext(chunks))
                except StopAsyncIteration:
                    return
                except BrokenBody as exc:
                    yield error_event(f"the model server's stream broke: {exc}", 502)
                    return
                except TimeoutError:
                    self._on_stall(replica, f"no output for {limit:g}s from a request in flight")
                    yield error_event(f"the model server sent nothing for {limit:g}s (progress_timeout)", 504)
                    return
                replica.progressed(self._clock())
                if chunk.endswith(b"data: [DONE]\n\n"):
                    limit = None
                yield chunk
        finally:
            await chunks.aclose()
            replica.finished_request()
            metrics = self._metrics.of(journey.model.id)
            metrics.duration.observe(self._clock() - journey.arrived)
            metrics.in_flight.dec()

    def _retry_elsewhere(self, journey: Journey, run: tuple[int, int], reason: str, detail: str) -> None:
        """This run failed the request before any byte reached the client: the caller tries again."""
        journey.failed_runs.add(run)
        journey.last_error = detail
        self._metrics.retries.labels(journey.model.id, reason).inc()

    def _may_retry_5xx(self, journey: Journey, replica: Replica, run: tuple[int, int]) -> bool:
        """A 5xx before any byte reached the client is tried again when attempts remain and another replica is
        ready, or when this one is no longer ready (being stopped or restarted: a new run will answer). A 5xx
        from a replica that still serves, with no other, is the server's answer and goes to the client."""
        if journey.attempts >= self._settings.max_attempts:
            return False
        return not replica.ready or self._pick(journey.target, journey.failed_runs | {run}) is not None

    # --- answers -------------------------------------------------------------------------------------

    def _answer_headers(self, journey: Journey, answer: Answer) -> Headers:
        headers = [(k, v) for k, v in answer.headers if k not in HOP_BY_HOP and not k.startswith(b"x-llm-supervisor")]
        headers.append((b"x-llm-supervisor-model", journey.target.id.encode()))
        if journey.fallback_reason is not None:
            headers.append((b"x-llm-supervisor-fallback", journey.fallback_reason.encode()))
        return headers

    def _unavailable(self, journey: Journey) -> Response:
        model = journey.target
        restart_in = _seconds_to_restart(model, self._clock())
        if journey.attempts:
            message = f"{model.id}: no replica could answer ({journey.last_error})"
        elif not model.may_become_ready():
            message = f"{model.id} is {model.replicas[0].owner.snapshot.state}: start it to serve requests"
        else:
            message = f"{model.id} has no ready replica after {self._settings.hold_timeout:g} s"
        response = _error(503, message)
        if restart_in is not None:
            response.headers.append((b"retry-after", str(max(1, math.ceil(restart_in))).encode()))
        response.headers.append((b"x-llm-supervisor-model", model.id.encode()))
        return response

    def _model_list(self) -> Response:
        data = [{"id": model_id, "object": "model", "owned_by": "llm-supervisor"} for model_id in self._models()]
        return Response(200, list(JSON), json.dumps({"object": "list", "data": data}).encode())

    def _finish(self, journey: Journey, response: Response) -> None:
        model_id = journey.model.id
        metrics = self._metrics.of(model_id)
        metrics.answered(response.status)
        metrics.first_byte.observe(self._clock() - journey.arrived)
        if response.stream is None:  # a stream is timed, and leaves in_flight, when it ends (see _relay)
            metrics.duration.observe(self._clock() - journey.arrived)
            metrics.in_flight.dec()

    # --- lookups -------------------------------------------------------------------------------------

    def _resolve(self, name: str) -> SupervisedModel | None:
        models = self._models()
        if name in models:
            return models[name]
        model_id = self._names.model_for(name)
        return models.get(model_id) if model_id is not None else None

    async def _resolve_after_asking(self, name: str) -> SupervisedModel | None:
        """A name no known model answers to may be one of a server whose names are not learnt yet (it became
        ready a moment ago): ask those servers now, rather than answer 404 to a name that exists."""
        unasked = [
            m
            for m in self._models().values()
            if m.cfg.probe_root_url is not None and self._names.first(m.id) is None and m.ready_replicas()
        ]
        if not unasked:
            return None
        await asyncio.gather(*(self._names.learn(m.id, self.pool(m.ready_replicas()[0])) for m in unasked))
        return self._resolve(name)

    def _fallback(self, model: SupervisedModel) -> SupervisedModel | None:
        fallback = self._models().get(model.cfg.fallback) if model.cfg.fallback else None
        return fallback if fallback is not None and fallback.ready_replicas() else None

    def _authorized(self, request: Request) -> bool:
        given = request.header(b"authorization") or b""
        expected = b"Bearer " + (self._api_key or "").encode()
        return hmac.compare_digest(given, expected)


def _server_address(replica: Replica) -> tuple[str, int, bool]:
    """Host, port and whether it speaks TLS, from the replica's base_url (the gateway serves only models
    that have one)."""
    root = replica.cfg.probe_root_url
    assert root is not None, "the gateway routes only to models with endpoints.base_url"
    parts = urlsplit(root)
    tls = parts.scheme == "https"
    return parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), tls


def _seconds_to_restart(model: SupervisedModel, now: float) -> float | None:
    due = [r.owner.snapshot.restart_at for r in model.replicas if r.owner.snapshot.restart_at is not None]
    return min(due) - now if due else None


async def _read_all(chunks: AsyncGenerator[bytes, None]) -> bytes:
    """A whole body; closing the generator on any way out drops a connection whose answer was cut off."""
    try:
        return b"".join([chunk async for chunk in chunks])
    finally:
        await chunks.aclose()


async def _within(limit: float | None, awaitable: Awaitable[T]) -> T:
    """Await, for at most `limit` seconds when one is set (TimeoutError past it)."""
    if limit is None:
        return await awaitable
    async with asyncio.timeout(limit):
        return await awaitable


def _error(status: int, message: str, param: str | None = None) -> Response:
    return Response(status, list(JSON), error_body(message, status, param))
