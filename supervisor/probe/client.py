"""The health probe of one model server: `HttpProbe`, one per model, keeps one connection open between probes.

Probing 100 idle servers every second must cost next to nothing, so each probe reuses the connection the
last one left open (no pool to scan, no per-request client machinery) and reconnects only when the server
closed it. A request that finds its kept-alive connection already closed by the server (vLLM/uvicorn
keep-alive timeouts, restarts) is retried once on a fresh one and is not a failure. `timeout` bounds the
whole probe, reconnection and fallback included, because the caller schedules the next probe from it. A
probe never raises: every failure becomes a `ProbeResult` with a message for an operator.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ssl
import time

import h11

from supervisor.probe.connection import AnswerCutShort, Connection, Endpoint, NoResponse, Request, StaleConnection
from supervisor.probe.result import FALLBACK_PATH, HEALTH_PATH, ProbeResult, server_root

_REFUSED_TEXT = f"[Errno {errno.ECONNREFUSED}]"


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """The TLS context of every probe in this process: building one per model costs ~0.6 MiB each."""
    return ssl.create_default_context()


class HttpProbe:
    """Probes one server root: `/health`, and `/v1/models` when `/health` is 404. Calls may overlap."""

    def __init__(self, root_url: str, *, tls: ssl.SSLContext | None = None) -> None:
        root = server_root(root_url)
        self._health_url = root + HEALTH_PATH
        self._fallback_url = root + FALLBACK_PATH
        if tls is None and root[:6].lower() == "https:":
            tls = shared_tls_context()
        self._endpoint: Endpoint | None = None
        self._invalid = ""
        try:
            self._endpoint = Endpoint.parse(root, tls)
        except ValueError as exc:  # reported by every probe, like any other reason it cannot succeed
            self._invalid = str(exc)
        self._idle: Connection | None = None  # the connection kept open for the next probe
        self._closed = False

    async def __call__(self, timeout: float) -> ProbeResult:
        """Probe within `timeout` seconds in total; never raises (cancellation aside)."""
        started = time.monotonic()
        url = self._health_url
        endpoint = self._endpoint
        if endpoint is None:
            return _result(False, f"connection failed: {self._invalid}", None, started, url)
        status: int | None = None
        try:
            async with asyncio.timeout(timeout):
                status = await self._get(endpoint, endpoint.health)
                if status == 404:
                    # Not every OpenAI-compatible server has /health; the model list proves it is serving.
                    url, status = self._fallback_url, None
                    status = await self._get(endpoint, endpoint.fallback)
                    if not 200 <= status < 300:
                        message = f"HTTP 404 from {HEALTH_PATH}, HTTP {status} from {FALLBACK_PATH}"
                        return _result(False, message, status, started, url)
                elif not 200 <= status < 300:
                    return _result(False, f"HTTP {status} from {HEALTH_PATH}", status, started, url)
        except Exception as exc:  # a probe reports failure; it must never take its caller down
            return _result(False, _describe_error(exc, timeout), status, started, url)
        return _result(True, None, status, started, url)

    async def aclose(self) -> None:
        """Close the kept connection; a probe still running closes its own when it ends."""
        self._closed = True
        idle, self._idle = self._idle, None
        if idle is not None:
            await idle.aclose()

    async def _get(self, endpoint: Endpoint, request: Request) -> int:
        # Take the kept connection, so that an overlapping probe (a manual check) opens its own.
        connection, self._idle = self._idle, None
        if connection is not None and not connection.reusable:
            connection.close()
            connection = None
        if connection is None:
            connection = await Connection.open(endpoint)
        try:
            try:
                status = await connection.get(request)
            except StaleConnection:
                connection.close()
                connection = await Connection.open(endpoint)
                status = await connection.get(request)  # a fresh connection never raises StaleConnection
        except BaseException:
            connection.close()  # cut mid-request (an error, the timeout): its state is unknown
            raise
        if connection.reusable and self._idle is None and not self._closed:
            self._idle = connection
        else:
            connection.close()
        return status


def _result(ok: bool, message: str | None, status: int | None, started: float, url: str) -> ProbeResult:
    return ProbeResult(ok, message, status, time.monotonic() - started, url)


def _describe_error(exc: Exception, timeout: float) -> str:
    """The operator's words for why a probe failed; the same words the fleet's alerts and timeline always used."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout}s"
    text = str(exc) or type(exc).__name__
    # A host with several addresses (localhost: ::1 and 127.0.0.1) fails with one OSError naming them all.
    if isinstance(exc, ConnectionRefusedError) or (type(exc) is OSError and _REFUSED_TEXT in text):
        return "connection refused"  # vLLM while loading: the socket is bound but not listening
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, NoResponse | AnswerCutShort | h11.RemoteProtocolError):
        return f"server closed the connection: {text}"
    if isinstance(exc, OSError):  # DNS, TLS, unreachable network, broken pipe
        return f"connection failed: {text}"
    return f"probe error: {type(exc).__name__}: {text}"
