"""HttpProbe's one kept-alive connection: reused across probes, replaced when the server closed it, over TLS too.

A server that closed an idle kept-alive connection (its keep-alive timeout, a restart) is healthy: the probe
that finds out retries once on a new connection and does not report a failure.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from test_probe import LOOPBACK, HealthServer, http_probe

from supervisor.probe import shared_tls_context
from supervisor.probe.connection import BODY_LIMIT


async def test_probes_reuse_one_connection() -> None:
    """Several probes travel over the one connection the first opened."""
    async with HealthServer() as server, http_probe(server.url) as probe:
        results = [await probe(5.0) for _ in range(5)]
    assert all(result.ok for result in results)
    assert server.requested == ["/health"] * 5
    assert server.connections == 1


async def test_fallback_reuses_the_connection_too() -> None:
    """/health (404) then /v1/models, probe after probe, over one connection."""
    async with HealthServer({"/v1/models": (200, 0.0)}) as server, http_probe(f"{server.url}/v1") as probe:
        results = [await probe(5.0) for _ in range(3)]
    assert all(result.ok for result in results)
    assert server.requested == ["/health", "/v1/models"] * 3
    assert server.connections == 1


async def test_failed_status_keeps_the_connection() -> None:
    """A 503 is an answer like any other: the connection stays in use."""
    async with HealthServer({"/health": (503, 0.0)}) as server, http_probe(server.url) as probe:
        results = [await probe(5.0) for _ in range(3)]
    assert [result.message for result in results] == ["HTTP 503 from /health"] * 3
    assert server.connections == 1


async def test_server_closed_idle_connection_between_probes_is_not_a_failure() -> None:
    """The server drops the kept connection between probes: the next probe reconnects and succeeds."""
    async with HealthServer() as server, http_probe(f"{server.url}/v1") as probe:
        first = await probe(5.0)
        await server.drop_connections()
        second = await probe(5.0)
        third = await probe(5.0)
    assert first.ok
    assert second.ok
    assert second.message is None
    assert third.ok
    assert server.connections == 2


@pytest.mark.parametrize("how", ["close", "reset", "408"])
async def test_stale_connection_is_retried_once_on_a_new_one(how: str) -> None:
    """A reused connection that ends before any byte of the answer (closed, reset) is retried on a new one.

    A 408 on a reused connection is a server announcing its idle timeout: retried the same way.
    """
    async with HealthServer() as server, http_probe(server.url) as probe:
        first = await probe(5.0)
        server.misbehave = [how]
        second = await probe(5.0)
    assert first.ok
    assert second.ok
    assert second.message is None
    assert second.status_code == 200
    assert server.requested == ["/health"] * 3
    assert server.connections == 2


async def test_stale_retry_happens_once() -> None:
    """When the new connection fails too, that failure is reported: one retry, never a loop."""
    async with HealthServer() as server, http_probe(server.url) as probe:
        await probe(5.0)
        server.misbehave = ["close", "close"]
        result = await probe(5.0)
    assert not result.ok
    assert result.message is not None
    assert result.message.startswith("server closed the connection: ")
    assert server.connections == 2


async def test_answer_cut_short_on_a_reused_connection_is_a_failure() -> None:
    """Once the server has begun to answer, a cut is a failure, not a stale connection; the next probe recovers."""
    async with HealthServer() as server, http_probe(server.url) as probe:
        await probe(5.0)
        server.misbehave = ["partial"]
        cut = await probe(5.0)
        after = await probe(5.0)
    assert not cut.ok
    assert cut.message is not None
    assert cut.message.startswith("server closed the connection: ")
    assert after.ok
    assert server.connections == 2


async def test_stale_retry_stays_within_the_timeout() -> None:
    """The retry spends the same budget: a hung answer on the new connection still ends at the timeout."""
    async with HealthServer() as server, http_probe(server.url) as probe:
        await probe(5.0)
        server.misbehave = ["close"]
        server.routes = {"/health": (200, 60.0)}
        result = await probe(0.3)
    assert result.message == "timed out after 0.3s"
    assert server.connections == 2


async def test_connection_close_answers_open_a_connection_each() -> None:
    """A server that says 'Connection: close' gets a new connection per probe, and every probe succeeds."""
    async with HealthServer(keep_alive=False) as server, http_probe(server.url) as probe:
        results = [await probe(5.0) for _ in range(3)]
    assert all(result.ok for result in results)
    assert server.connections == 3


async def test_timed_out_connection_is_not_reused() -> None:
    """A probe cut by its timeout leaves its connection mid-answer: the next probe opens a new one."""
    async with HealthServer({"/health": (200, 60.0)}) as server, http_probe(server.url) as probe:
        hung = await probe(0.2)
        server.routes = {"/health": (200, 0.0)}
        after = await probe(5.0)
    assert hung.message == "timed out after 0.2s"
    assert after.ok
    assert server.connections == 2


async def test_overlapping_probes_each_get_a_connection() -> None:
    """A manual check during a scheduled probe opens its own connection; one is kept afterwards."""
    async with HealthServer({"/health": (200, 0.1)}) as server, http_probe(server.url) as probe:
        both = await asyncio.gather(probe(5.0), probe(5.0))
        after = [await probe(5.0) for _ in range(2)]
    assert all(result.ok for result in [*both, *after])
    assert server.connections == 2


async def test_body_over_the_limit_is_dropped_with_the_connection() -> None:
    """A huge answer is not read to its end: its status counts, and the next probe uses a new connection."""
    async with HealthServer(body=b"x" * (4 * BODY_LIMIT)) as server, http_probe(server.url) as probe:
        results = [await probe(5.0) for _ in range(2)]
    assert all(result.ok for result in results)
    assert server.connections == 2


async def test_user_info_in_the_url_is_sent_as_basic_credentials() -> None:
    """http://user:pass@host is sent as Basic credentials, as the httpx probe did; the Host header omits them."""
    async with HealthServer() as server, http_probe(f"http://user:p%40ss@{LOOPBACK}:{server.port}") as probe:
        result = await probe(5.0)
    assert result.ok
    assert server.headers[0]["authorization"] == "Basic dXNlcjpwQHNz"  # base64 of "user:p@ss"
    assert server.headers[0]["host"] == f"{LOOPBACK}:{server.port}"


async def test_aclose_closes_the_kept_connection() -> None:
    """After aclose the server sees its connection end."""
    async with HealthServer() as server:
        async with http_probe(server.url) as probe:
            await probe(5.0)
        await server.wait_idle()
    assert server.connections == 1


# --- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the openssl CLI: trustme and cryptography are not installed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "2", "-keyout", str(key), "-out", str(cert)),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-subj", f"/CN={LOOPBACK}", "-addext", f"subjectAltName=IP:{LOOPBACK}"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


async def test_https_probe_keeps_one_connection(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    """An https base URL is probed over TLS, and the TLS connection is reused like a plain one."""
    async with HealthServer(tls=server_tls) as server, http_probe(f"{server.url}/v1", client_tls) as probe:
        results = [await probe(5.0) for _ in range(3)]
    assert all(result.ok for result in results)
    assert results[0].url == f"{server.url}/health"
    assert server.url.startswith("https://")
    assert server.connections == 1


async def test_https_server_closed_idle_connection_is_not_a_failure(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    """Over TLS too, a connection the server dropped between probes is replaced without a failure."""
    async with HealthServer(tls=server_tls) as server, http_probe(server.url, client_tls) as probe:
        first = await probe(5.0)
        await server.drop_connections()
        second = await probe(5.0)
    assert first.ok
    assert second.ok
    assert server.connections == 2


async def test_https_untrusted_certificate_is_connection_failed(server_tls: ssl.SSLContext) -> None:
    """The shared default context does not trust a self-signed certificate: 'connection failed', with the reason."""
    async with HealthServer(tls=server_tls) as server, http_probe(server.url) as probe:
        result = await probe(5.0)
    assert not result.ok
    assert result.message is not None
    assert result.message.startswith("connection failed: ")
    assert "CERTIFICATE_VERIFY_FAILED" in result.message


def test_shared_tls_context_is_built_once() -> None:
    """Every probe of the process shares one TLS context (each costs ~0.6 MiB)."""
    assert shared_tls_context() is shared_tls_context()
    assert shared_tls_context().verify_mode is ssl.CERT_REQUIRED


async def test_https_aclose_does_not_wait_on_the_peer(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    """Closing for good drops a TLS connection at once; the server sees it end."""
    async with HealthServer(tls=server_tls) as server:
        async with http_probe(server.url, client_tls) as probe:
            assert (await probe(5.0)).ok
        await server.wait_idle()
    assert server.connections == 1
