"""The former httpx health probe, kept only until the fleet uses `HttpProbe` (supervisor.probe.client).

Same questions and the same messages as `HttpProbe`, on a caller's httpx client. `ProbeResult` and
`server_root` moved to supervisor.probe.result and are re-exported here for the modules that import them
from this path. Delete this module once nothing calls `probe`.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from supervisor.probe.result import FALLBACK_PATH, HEALTH_PATH, ProbeResult, server_root

__all__ = ["ProbeResult", "probe", "server_root"]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes: httpx hides 'connection refused' behind 'All connection attempts failed'."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _describe_error(exc: Exception, timeout: float) -> str:
    chain = _chain(exc)
    if any(isinstance(e, httpx.TimeoutException | TimeoutError) for e in chain):
        return f"timed out after {timeout}s"
    text = str(exc) or type(exc).__name__
    if any(isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower() for e in chain):
        return "connection refused"  # vLLM while loading: the socket is bound but not listening
    if any(isinstance(e, ConnectionResetError) or "reset" in str(e).lower() for e in chain):
        return "connection reset"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"server closed the connection: {text}"
    if isinstance(exc, httpx.TransportError):
        return f"connection failed: {text}"
    return f"probe error: {type(exc).__name__}: {text}"


async def probe(client: httpx.AsyncClient, root_url: str, timeout: float) -> ProbeResult:
    """Probe the server at `root_url` within `timeout` seconds in total; never raises."""
    root = server_root(root_url)
    started = time.monotonic()
    url = root + HEALTH_PATH
    status: int | None = None
    try:
        async with asyncio.timeout(timeout):
            response = await client.get(url, timeout=timeout)
            status = response.status_code
            if status == httpx.codes.NOT_FOUND:
                # Not every OpenAI-compatible server has /health; the model list proves it is serving.
                url, status = root + FALLBACK_PATH, None
                remaining = max(timeout - (time.monotonic() - started), 0.001)
                response = await client.get(url, timeout=remaining)
                status = response.status_code
                if not response.is_success:
                    message = f"HTTP 404 from {HEALTH_PATH}, HTTP {status} from {FALLBACK_PATH}"
                    return _result(False, message, status, started, url)
            elif not response.is_success:
                return _result(False, f"HTTP {status} from {HEALTH_PATH}", status, started, url)
    except Exception as exc:  # a probe reports failure; it must never take its caller down
        return _result(False, _describe_error(exc, timeout), status, started, url)
    return _result(True, None, status, started, url)


def _result(ok: bool, message: str | None, status: int | None, started: float, url: str) -> ProbeResult:
    return ProbeResult(ok, message, status, time.monotonic() - started, url)
