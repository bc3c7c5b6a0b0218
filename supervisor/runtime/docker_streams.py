"""The two blocking streams a container run reads from the Docker Engine, in plain functions for worker threads.

- Output: the attach stream, demultiplexed into (stdout, stderr) chunks, is cut into lines per stream
  (by `runtime.lines.LineSplitter`, the process runtime's too, so both runtimes log the same lines).
- Exit: the engine's event stream, filtered to the container's `die` event, is read until that event comes.
  If the stream breaks (the daemon restarted), it is opened again and the container's state is read, so an
  exit that happened while nobody listened is still seen. Nothing here polls a container's state on a timer.

Both run in threads because the Docker SDK is synchronous; they hand results to the event loop through
callables given by the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from docker.types import CancellableStream
from docker.utils.socket import demux_adaptor, frames_iter

from supervisor.runtime.base import Stream
from supervisor.runtime.lines import LineSplitter

log = logging.getLogger(__name__)


class AttachedOutput:
    """A container's output from its start on, as (stdout, stderr) chunks; `close()` ends it from any thread.

    Made from `attach_socket` rather than `attach(stream=True)`, whose generator hides its socket: a
    connection nobody can close leaks a file descriptor per run."""

    def __init__(self, api: Any, container_id: str) -> None:
        self._sock = api.attach_socket(container_id, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 1})
        chunks = (demux_adaptor(stream_id, data) for stream_id, data in frames_iter(self._sock, tty=False))
        # attach_socket keeps the HTTP response on the socket; CancellableStream.close shuts that connection.
        self._stream = CancellableStream(chunks, self._sock._response)

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        return self._stream  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stream.close()
        # The socket object stays open while this file-like view of it does.
        self._sock.close()


def pump_output(chunks: Iterable[tuple[bytes | None, bytes | None]], emit: Callable[[Stream, str], None]) -> None:
    """Read demultiplexed attach chunks until the container's output ends; emit each line in arrival order."""
    splitters = {Stream.STDOUT: LineSplitter(), Stream.STDERR: LineSplitter()}
    try:
        for out, err in chunks:
            for stream, data in ((Stream.STDOUT, out), (Stream.STDERR, err)):
                if data:
                    for line in splitters[stream].feed(data):
                        emit(stream, line)
    except Exception:  # the connection to the engine broke; the exit watcher still reports the exit
        log.warning("container output stream broke; later output of this run is not captured", exc_info=True)
    finally:
        for stream, splitter in splitters.items():
            for line in splitter.flush():
                emit(stream, line)


@dataclass(frozen=True, slots=True)
class DieNotice:
    """What the engine said about the end of a container: its exit code, or None when it vanished unseen."""

    exit_code: int | None


# Returns a fresh event stream for the container, and whether the container has already ended (with its code).
Resubscribe = Callable[[], tuple[Iterator[dict[str, Any]], DieNotice | None]]


def wait_for_die(
    events: Iterator[dict[str, Any]],
    resubscribe: Resubscribe,
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_delay: float = 5.0,
) -> DieNotice:
    """Block until the container's `die` event; survive a broken event stream by subscribing again."""
    delay = 0.2
    stream: Iterator[dict[str, Any]] | None = events
    while True:
        if stream is not None:
            try:
                for event in stream:
                    if event.get("Action", event.get("status")) == "die":
                        return DieNotice(_exit_code(event))
                log.warning("the engine closed the event stream; subscribing again")
            except Exception:
                log.warning("the engine's event stream broke; subscribing again", exc_info=True)
            finally:
                close_quietly(stream)
        # Back off: a restarting daemon refuses connections for a while, and a tight loop would spin a core.
        sleep(delay)
        delay = min(delay * 2, max_delay)
        try:
            stream, ended = resubscribe()
        except Exception:
            log.warning("cannot reach the Docker daemon to watch a container; retrying in %.1f s", delay)
            stream = None
            continue
        if ended is not None:
            close_quietly(stream)
            return ended


def _exit_code(event: dict[str, Any]) -> int | None:
    code = event.get("Actor", {}).get("Attributes", {}).get("exitCode")
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


def close_quietly(stream: object) -> None:
    """Close a stream from the engine (None is fine); failing to close a dead connection is no error."""
    # CancellableStream.close shuts its socket down but leaves the HTTP response's file object open, and that
    # keeps the descriptor alive until garbage collection: close the response as well.
    for closable in (stream, getattr(stream, "_response", None)):
        close = getattr(closable, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception:  # closing a dead connection can fail in many ways; it is closed either way
            log.debug("closing a stream from the engine failed", exc_info=True)
