"""An asyncio TCP fault proxy with Toxiproxy's toxics, placed between the supervisor and a server.

The supervisor is configured to reach a model through `127.0.0.1:<proxy port>`; the proxy forwards to the
real server and, while a toxic is set, misbehaves like a bad network (Toxiproxy's names, parameters in ms
and KB/s):

- `latency {latency, jitter}`: each chunk waits latency ± jitter ms (uniform, from the seeded RNG);
- `bandwidth {rate}`: at most `rate` KB/s (rate 0 passes nothing);
- `blackhole`: connections are accepted, data is swallowed, nothing comes back (= Toxiproxy `timeout` 0);
- `timeout {timeout}`: data is swallowed and the connection closed after `timeout` ms (0: never closed);
- `reset_peer {timeout}`: connections are reset (TCP RST) `timeout` ms after the toxic or the connection began.

A toxic applies to one `stream` (downstream = server to client, Toxiproxy's default; upstream; or both) and
can be changed at any moment; it affects connections already open as well as new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal

Stream = Literal["downstream", "upstream", "both"]
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class Toxic:
    name: Literal["latency", "reset_peer", "blackhole", "timeout", "bandwidth"]
    attributes: dict[str, int] = field(default_factory=dict)
    stream: Stream = "downstream"

    def applies_to(self, direction: str) -> bool:
        return self.stream in ("both", direction)

    def describe(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(self.attributes.items()))
        return f"{self.name}({attrs}) {self.stream}"


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.server) if w is not None]


class FaultProxy:
    """Listens on listen_host (127.0.0.1; port 0 = any free port) and forwards to upstream_host:upstream_port."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._rng = rng or random.Random(0)
        self._toxic: Toxic | None = None
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def toxic(self) -> Toxic | None:
        return self._toxic

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._listen_host, self._listen_port)

    def set_toxic(self, toxic: Toxic | None) -> None:
        """Replace the active toxic (None: a clean network); open connections see the change at once."""
        self._toxic = toxic
        previous, self._changed = self._changed, asyncio.Event()
        previous.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            self._abort(conn, reset=False)
        tasks = [t for conn in self._connections for t in conn.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # --- per connection ---------------------------------------------------------------------------

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        conn = _Connection(client_writer)
        self._connections.add(conn)
        try:
            try:
                server_reader, conn.server = await asyncio.open_connection(*self.upstream)
            except OSError:
                return  # upstream down (e.g. still loading): the client sees its connection closed
            conn.tasks = [
                asyncio.create_task(self._pump(client_reader, conn.server, "upstream")),
                asyncio.create_task(self._pump(server_reader, client_writer, "downstream")),
            ]
            watcher = asyncio.create_task(self._watch(conn))
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        finally:
            self._abort(conn, reset=False)
            self._connections.discard(conn)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while data := await reader.read(_CHUNK):
                toxic = self._toxic
                if toxic is not None and toxic.applies_to(direction):
                    if toxic.name in ("blackhole", "timeout"):
                        continue  # swallowed: the peer waits for bytes that never come
                    if toxic.name == "latency":
                        await asyncio.sleep(self._latency(toxic))
                    elif toxic.name == "bandwidth":
                        await self._throttle(toxic, len(data), direction)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # half-close, so HTTP clients that wait for EOF still see it
        except (OSError, RuntimeError):
            return

    def _latency(self, toxic: Toxic) -> float:
        base = toxic.attributes.get("latency", 0)
        jitter = toxic.attributes.get("jitter", 0)
        return max(0.0, base + self._rng.uniform(-jitter, jitter)) / 1000.0

    async def _throttle(self, toxic: Toxic, size: int, direction: str) -> None:
        rate = toxic.attributes.get("rate", 0)
        while rate == 0:  # nothing passes until the toxic changes
            await self._changed.wait()
            current = self._toxic
            if current is None or current.name != "bandwidth" or not current.applies_to(direction):
                return
            rate = current.attributes.get("rate", 0)
        await asyncio.sleep(size / (rate * 1000.0))

    async def _watch(self, conn: _Connection) -> None:
        """Carry out the connection-wide toxics (reset_peer, timeout) whenever one becomes active."""
        while True:
            changed = self._changed
            toxic = self._toxic
            wait_ms = None
            if toxic is not None and toxic.name == "reset_peer":
                wait_ms = toxic.attributes.get("timeout", 0)
            elif toxic is not None and toxic.name == "timeout" and toxic.attributes.get("timeout", 0) > 0:
                wait_ms = toxic.attributes["timeout"]
            if wait_ms is None:
                await changed.wait()
                continue
            try:
                await asyncio.wait_for(changed.wait(), wait_ms / 1000.0)
            except TimeoutError:
                self._abort(conn, reset=toxic is not None and toxic.name == "reset_peer")
                return

    @staticmethod
    def _abort(conn: _Connection, *, reset: bool) -> None:
        for writer in conn.writers():
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
