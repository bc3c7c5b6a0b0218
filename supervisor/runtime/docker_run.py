"""One run of a model as a container: output lines, the exit as the engine reports it, stop, kill, removal.

Blocking Docker SDK calls run in daemon threads, one per job, so a 30 s `docker stop` or a stream that lasts
the container's whole life never blocks the event loop or fills asyncio's shared executor. Threads hand their
results to the loop with `call_soon_threadsafe`; every output line is queued before the exit is, so the
supervisor has read a CUDA OOM traceback by the time it learns that the container died.

After the exit the run reads `State.OOMKilled` and the exit code, then removes the container: `wait_gone`
returns once it is removed, which also frees its published ports.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from docker import errors as docker_errors

from supervisor.core.states import ExitStatus
from supervisor.runtime.base import LineSink, Stream, discard_line
from supervisor.runtime.docker_streams import AttachedOutput, DieNotice, close_quietly, pump_output, wait_for_die

log = logging.getLogger(__name__)

# After the die event the attach stream ends by itself; this bounds the wait if the engine leaves it open.
OUTPUT_DRAIN_TIMEOUT = 5.0
_SIGNAL_EXIT_BASE = 128  # the engine reports death by signal N as exit code 128 + N, like a shell


def exit_status(code: int | None, oom_killed: bool) -> ExitStatus:
    """The engine's exit code as an ExitStatus: 137 is SIGKILL, 143 SIGTERM; OOMKilled is kept as a flag."""
    signal = None
    if code is not None and _SIGNAL_EXIT_BASE < code <= _SIGNAL_EXIT_BASE + 64:
        signal = code - _SIGNAL_EXIT_BASE
    return ExitStatus(code=code, signal=signal, oom_killed=oom_killed)


class DockerRun:
    """A started container. Create with `DockerRun(...)` and call `begin()` right after the container starts."""

    def __init__(
        self,
        client: Any,
        container_id: str,
        *,
        pid: int | None,
        events: Iterator[dict[str, Any]],
        output: AttachedOutput,
        sink: LineSink,
        stop_timeout: float,
    ) -> None:
        self._client = client
        self._id = container_id
        self._pid = pid
        self._events = events
        self._output = output
        self._sink = sink
        self._stop_timeout = math.ceil(stop_timeout)
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._gone: asyncio.Future[None] = self._loop.create_future()
        self._output_done = threading.Event()

    @property
    def pid(self) -> int | None:
        """The host pid of the container's main process, as the engine reported it at start."""
        return self._pid

    @property
    def ident(self) -> str:
        return self._id

    def begin(self) -> None:
        self._thread(self._read_output, "output")
        self._thread(self._watch, "exit")

    async def wait_exit(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    async def wait_gone(self) -> None:
        await asyncio.shield(self._gone)
        self._sink = discard_line  # see Run.wait_gone; a line the output thread still sends is not this run's

    def terminate(self) -> None:
        """`docker stop`: the image's stop signal (SIGTERM), then SIGKILL from the engine after stop_timeout."""
        self._thread(lambda: self._ignore_gone(self._client.api.stop, self._id, timeout=self._stop_timeout), "stop")

    def kill(self) -> None:
        self._thread(lambda: self._ignore_gone(self._client.api.kill, self._id), "kill")

    # --- threads -------------------------------------------------------------------------------------------

    def _thread(self, target: Callable[[], None], job: str) -> None:
        threading.Thread(target=target, name=f"docker-{job}-{self._id[:12]}", daemon=True).start()

    def _read_output(self) -> None:
        try:
            pump_output(self._output, self._emit)
        finally:
            close_quietly(self._output)
            self._output_done.set()

    def _emit(self, stream: Stream, line: str) -> None:
        self._call_in_loop(self._sink, stream, line)

    def _watch(self) -> None:
        notice = wait_for_die(self._events, self._resubscribe)
        status = self._final_status(notice)
        # Lines are queued on the loop before the exit, so diagnosis has read them when the exit arrives.
        if not self._output_done.wait(OUTPUT_DRAIN_TIMEOUT):
            log.warning("container %s: output still open %.0f s after exit", self._id[:12], OUTPUT_DRAIN_TIMEOUT)
        self._call_in_loop(_settle, self._exit, status)
        self._remove()
        self._call_in_loop(_settle, self._gone, None)
        self._client.close()

    def _resubscribe(self) -> tuple[Iterator[dict[str, Any]], DieNotice | None]:
        stream = self._client.api.events(filters=die_filter(self._id), decode=True)
        try:
            state = self._client.api.inspect_container(self._id)["State"]
        except docker_errors.NotFound:
            return stream, DieNotice(None)  # removed behind our back: it has certainly ended
        if state.get("Status") in ("exited", "dead"):
            return stream, DieNotice(int(state.get("ExitCode", 0)))
        return stream, None

    def _final_status(self, notice: DieNotice) -> ExitStatus:
        try:
            state = self._client.api.inspect_container(self._id)["State"]
        except Exception:  # gone or unreachable: the die event's code is all there is
            log.warning("container %s: cannot read its final state", self._id[:12], exc_info=True)
            return exit_status(notice.exit_code, oom_killed=False)
        return exit_status(int(state.get("ExitCode", notice.exit_code or 0)), bool(state.get("OOMKilled")))

    def _remove(self) -> None:
        delay = 0.2
        while True:
            try:
                self._client.api.remove_container(self._id, v=True, force=True)
            except docker_errors.NotFound:
                return
            except Exception:  # daemon restarting, or "removal already in progress": try again
                log.warning("container %s: removal failed; retrying", self._id[:12], exc_info=True)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            return

    @staticmethod
    def _ignore_gone(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except docker_errors.NotFound:
            pass  # already removed: the run is over, which is what stop and kill ask for
        except docker_errors.APIError as exc:
            if exc.status_code != 409:  # 409: not running any more
                log.warning("docker %s failed: %s", call.__name__, exc)
        except Exception:
            log.warning("docker %s failed", call.__name__, exc_info=True)

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the supervisor is gone, nobody is listening
            log.debug("event loop closed; dropping a container notice")


def die_filter(container_id: str) -> dict[str, Any]:
    """Engine event filter for one container's `die` event (the id is exact; labels could match others)."""
    return {"type": "container", "container": container_id, "event": ["die"]}


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
