"""The life of one fake-vllm API server: bind, start the engine, listen, serve, fail on command, shut down.

The order copies vLLM 0.32: the banner, the socket bound first (a taken port fails at once with Errno 98)
but listening only once the engine has loaded, so connections are refused meanwhile. SIGTERM while loading
is ignored, as vLLM ignores it (``--honor-sigterm-while-loading`` stops instead). Fault timers set on the
command line run from the moment the server listens; timers set through /admin/faults run from the POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fake_vllm import tracebacks, vllm_log
from fake_vllm.app import ROUTES, make_handler
from fake_vllm.engine_core import RemoteEngine
from fake_vllm.engine_load import Loader, StartupFailure, engine_config_line, load_engine
from fake_vllm.httpserver import HttpServer
from fake_vllm.runtime import EngineClient, LocalEngine, Phase, Runtime
from fake_vllm.settings import VLLM_VERSION, Settings
from fake_vllm.shutdown import die, flush_streams

if TYPE_CHECKING:
    from fake_vllm.gpu import FakeGpu

GIB = 1024**3
# uvicorn looks at should_exit ten times a second: how soon a request that met a dead engine stops the server.
_UVICORN_TICK = 0.1
# --grow-memory adds its memory in steps this many seconds apart.
GROW_STEP = 0.1


class Lifecycle:
    """Owns the socket, the engine, the fault timers, and the exit status."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rt = Runtime(settings)
        self.engine: EngineClient | None = None
        self.gpu: FakeGpu | None = None
        if settings.fake_gpu_dir is not None and settings.engine_processes == 0:
            from fake_vllm.gpu import FakeGpu

            self.gpu = FakeGpu(settings.fake_gpu_dir, int(settings.fake_gpu_total_gib * GIB))
        self.http = HttpServer(make_handler(self.rt), self.rt.gate, access_log=settings.access_log)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._requests_baseline = 0
        self._leaked: list[bytes] = []  # what --grow-memory holds
        self._stop: asyncio.Future[str] | None = None
        self.rt.on_faults_changed = self._faults_changed
        self.rt.on_inference_answered = self._check_request_budget
        self.rt.on_engine_error = self._engine_error
        local = os.path.exists(settings.model)
        self._model_problem = None if local else tracebacks.repo_id_problem(settings.model)

    @property
    def engine_pid(self) -> int:
        """The pid that EngineCore lines carry: EngineCore's, or ours when the engine runs in this process."""
        return self.rt.engine_pids[0] if self.rt.engine_pids else os.getpid()

    async def main(self) -> int:
        """Run until a signal, a fault or a failed start-up ends the process; returns the exit status."""
        s = self.settings
        vllm_log.banner(VLLM_VERSION, s.model)
        vllm_log.info("api_utils.py:286", f"non-default args: {dict(s.non_default_args)!r}")
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            sock = bind(s.host, s.port)
        except OSError:
            traceback.print_exc()
            return 1
        loading = asyncio.ensure_future(self._load(sock))
        waiters: set[asyncio.Future[Any]] = {loading, self._stop}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():  # SIGINT, or SIGTERM with --honor-sigterm-while-loading
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            sock.close()
            return await self._shutdown(self._stop.result())
        if not loading.result():
            sock.close()
            await self._stop_engine_async()
            return 1
        await self._listen(sock)
        return await self._shutdown(await self._stop)

    async def _load(self, sock: socket.socket) -> bool:
        """Start the engine and wait until it has loaded; False when start-up failed (already reported)."""
        s = self.settings
        started = time.monotonic()
        problem = self._model_problem
        if problem is not None:
            # vLLM resolves the model before anything else: a path that is not there fails as a Hub repo id.
            await asyncio.sleep(s.startup_delay * 0.3)
            vllm_log.stderr_text(tracebacks.model_path_traceback(problem))
            return False
        vllm_log.info("model.py:2152", f"Using max model len {s.max_model_len}")
        if s.engine_processes == 0:
            return await self._load_here(started)
        remote = RemoteEngine.start(s, [sock.fileno()], self.rt.on_engine_stats)
        self.engine = remote
        self.rt.engine_pids = [remote.pid]
        if not await remote.wait_ready():
            vllm_log.stderr_text(tracebacks.engine_start_failed_traceback())
            return False
        self.rt.engine_pids = list(remote.pids)
        remote.on_death = self._engine_died
        self.rt.client = remote
        return True

    async def _load_here(self, started: float) -> bool:
        """``--engine-children 0``: the engine loads and runs inside this process."""
        s = self.settings
        pid = os.getpid()
        vllm_log.info("core.py:133", engine_config_line(s, self.rt.faults.seed), process=vllm_log.ENGINE_CORE)
        try:
            await load_engine(s, pid, Loader(vllm_log.ENGINE_CORE, pid), self._claim_gpu, started)
        except StartupFailure as failure:
            failure.report(pid)
            vllm_log.stderr_text(tracebacks.engine_start_failed_traceback())
            return False
        local = LocalEngine(s, self.rt.on_engine_stats)
        local.on_death = self._engine_died
        self.engine = self.rt.client = local
        return True

    def _claim_gpu(self) -> None:
        """Check free fake-GPU memory and register ours, under the device lock (engine in this process)."""
        if self.gpu is None:
            return
        from fake_vllm.gpu import process_create_time

        s = self.settings
        with self.gpu.locked():
            free = self.gpu.free_bytes()
            if free < s.claim_bytes:
                message = tracebacks.free_memory_message(free, self.gpu.total_bytes, s.gpu_memory_utilization)
                raise StartupFailure("device", message)
            self.gpu.register(os.getpid(), process_create_time(os.getpid()), s.claim_bytes, "fake-vllm")

    async def _listen(self, sock: socket.socket) -> None:
        sock.listen(2048)
        await self.http.start(sock)
        self.rt.phase = Phase.READY
        self.rt.ready_at = time.time()
        host, port = sock.getsockname()[:2]
        vllm_log.info("entry.py:136", "Supported tasks: ['generate']")
        vllm_log.info("entry.py:140", f"Starting vLLM server on http://{host}:{port}")
        vllm_log.info("launcher.py:186", "Available routes are:")
        for path, (_kind, methods) in ROUTES.items():
            for method in methods:
                vllm_log.info("launcher.py:195", f"Route: {path}, Methods: {method}")
        vllm_log.uvicorn(f"Started server process [{os.getpid()}]")
        vllm_log.uvicorn("Waiting for application startup.")
        vllm_log.uvicorn("Application startup complete.")
        self._arm(self.rt.faults.as_dict())

    # -- faults --------------------------------------------------------------------------------------

    def _faults_changed(self, update: dict[str, object]) -> None:
        if "ignore_sigterm" in update and self.engine is not None:
            self.engine.set_ignore_sigterm(self.rt.faults.ignore_sigterm)
        self._arm(update)

    def _arm(self, update: dict[str, object]) -> None:
        """(Re)start the timers of the faults in ``update``, counted from now."""
        f = self.rt.faults
        actions: dict[str, tuple[float | None, Callable[[], object]]] = {
            "crash_after": (f.crash_after, lambda: self._crash("crash_after")),
            "hang_after": (f.hang_after, self._hang),
            "stall_after": (f.stall_after, self._stall),
            "engine_dead_after": (f.engine_dead_after, self._engine_dead),
            "oom": (float(f.oom.removeprefix("after:")) if f.oom else None, self._oom),
        }
        if self.rt.is_engine_dead:
            actions["engine_dead_exit_after"] = (f.engine_dead_exit_after, self._engine_dead_exit)
        for key, (delay, action) in actions.items():
            if key in update:
                self._schedule(key, delay, action)
        if "grow_memory" in update:
            self._grow()
        if "crash_after_requests" in update:
            self._requests_baseline = self.rt.stats.inference_answered
            self._check_request_budget(count=False)

    def _schedule(self, key: str, delay: float | None, action: Callable[[], object]) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        if delay is not None:
            self._timers[key] = asyncio.get_running_loop().call_later(delay, action)

    def _check_request_budget(self, *, count: bool = True) -> None:
        if count:
            self.rt.stats.inference_answered += 1
        budget = self.rt.faults.crash_after_requests
        if budget is not None and self.rt.stats.inference_answered - self._requests_baseline >= budget:
            # Soon, not now: the answer that used up the budget (or the POST that set 0) goes out first.
            self._schedule("crash_after_requests", 0.0, lambda: self._crash("crash_after_requests"))

    def _crash(self, reason: str) -> None:
        f = self.rt.faults
        how = f"signal {f.exit_signal}" if f.exit_signal else f"exit code {f.exit_code}"
        self.rt.record("crash", reason=reason)
        vllm_log.stderr_text(f"ERROR:    fake-vllm: injected crash ({reason}); dying with {how}")
        if f.exit_signal is None:
            # A Python-level crash runs vLLM's shutdown hooks, which take the engine down with it.
            self._stop_engine()
        die(f.exit_code, f.exit_signal)

    def _grow(self) -> None:
        # A leak: resident memory the server never gives back, written to so that every page is really held.
        rate = self.rt.faults.grow_memory
        self._schedule("grow_memory", None, self._grow)
        if rate > 0:
            self._leaked.append(b"\x01" * int(rate * 1e6 * GROW_STEP))
            self._schedule("grow_memory", GROW_STEP, self._grow)

    def _hang(self) -> None:
        self.rt.phase = Phase.HUNG
        self.rt.record("hang")

    def _stall(self) -> None:
        # Like an EngineCore that was SIGSTOPped: the API server answers, the engine never steps again.
        if self.rt.phase is not Phase.READY:
            return
        self.rt.phase = Phase.STALLED
        self.rt.metrics.freeze()
        self.rt.record("stall")
        if self.engine is not None:
            self.engine.stall()

    def _engine_dead(self) -> None:
        """The injected engine death: EngineCore is SIGKILLed, and the server notices as it would."""
        if self.rt.phase is not Phase.READY or self.engine is None:
            return
        self.engine.kill()

    def _engine_died(self) -> None:
        """EngineCore is gone (killed, crashed, or its worker died): vLLM's AsyncLLM output handler fails."""
        if self.rt.phase in (Phase.STOPPING, Phase.ENGINE_DEAD):
            return
        self.rt.phase = Phase.ENGINE_DEAD
        self.rt.record("engine_dead")
        if self.settings.engine_processes:
            vllm_log.warning(
                "core_client.py:817", "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup"
            )
            for where, text in (
                ("core_client.py:770", "start timeout=default"),
                ("core_client.py:772", "stopping engine manager"),
                ("core_client.py:774", "engine manager stopped"),
                ("core_client.py:775", "cleaning up background resources"),
                ("core_client.py:777", "complete"),
            ):
                vllm_log.info(where, f"[shutdown] MPClient: {text}")
        vllm_log.error("async_llm.py:906", tracebacks.engine_dead_traceback())
        if self.gpu is not None:
            self.gpu.unregister(os.getpid())
        self._arm({"engine_dead_exit_after": None})

    def _engine_error(self) -> None:
        """A request failed on the dead engine: vLLM's handler sets uvicorn's should_exit (unless kept alive)."""
        if self.rt.faults.engine_dead_exit_after is None:
            return
        loop = asyncio.get_running_loop()
        timer = self._timers.get("engine_dead_exit_after")
        if timer is None or timer.when() > loop.time() + _UVICORN_TICK:
            self._schedule("engine_dead_exit_after", _UVICORN_TICK, self._engine_dead_exit)

    def _engine_dead_exit(self) -> None:
        self.rt.record("engine_dead_exit")
        self._request_stop("engine_dead")

    def _oom(self) -> None:
        s = self.settings
        self.rt.record("oom")
        line = tracebacks.cuda_oom_message(s.fake_gpu_total_gib, s.claim_bytes / GIB)
        frames = tracebacks.runtime_oom_frames()
        logged = "EngineCore encountered a fatal error.\n" + tracebacks.traceback_text(frames, line)
        vllm_log.error("core.py:1512", logged, process=vllm_log.ENGINE_CORE, pid=self.engine_pid)
        vllm_log.stderr_text(tracebacks.engine_process_traceback(frames, line))
        self._stop_engine()
        die(1, None)

    # -- stopping ------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            if self.rt.faults.ignore_sigterm:
                self.rt.record("sigterm_ignored")
                return
            if self.rt.phase is Phase.LOADING and not self.settings.honor_sigterm_while_loading:
                self.rt.record("sigterm_ignored", phase="loading")
                return
        self._request_stop(signal.Signals(signum).name)

    def _request_stop(self, reason: str) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(reason)

    async def _shutdown(self, reason: str) -> int:
        """vLLM's graceful path: stop the engine, then the HTTP server; exit 0.

        On a signal vLLM logs its ``[shutdown]`` lines; when the server ends itself after engine death
        (uvicorn's should_exit) only uvicorn's lines appear, ending with ``Finished server process``.
        """
        self.rt.phase = Phase.STOPPING
        for timer in self._timers.values():
            timer.cancel()
        by_signal = reason != "engine_dead"
        if by_signal:
            vllm_log.info("launcher.py:254", "[shutdown] API server: shutdown triggered")
            vllm_log.info("launcher.py:270", "[shutdown] API server: stopping engine client mode=abort timeout=0s")
            if self.settings.engine_processes:
                vllm_log.info("core_client.py:770", "[shutdown] MPClient: start timeout=0s")
                vllm_log.info("core_client.py:772", "[shutdown] MPClient: stopping engine manager")
                vllm_log.info("utils.py:628", "[shutdown] Process manager: send sigterm to process EngineCore")
            await self._stop_engine_async()
            if self.settings.engine_processes:
                vllm_log.info("core_client.py:774", "[shutdown] MPClient: engine manager stopped")
                vllm_log.info("core_client.py:775", "[shutdown] MPClient: cleaning up background resources")
                vllm_log.info("core_client.py:777", "[shutdown] MPClient: complete")
            vllm_log.info("launcher.py:279", "[shutdown] API server: engine client stopped")
            vllm_log.info("launcher.py:282", "[shutdown] API server: signalling HTTP server shutdown")
            vllm_log.info("launcher.py:304", "[shutdown] API server: shutting down FastAPI HTTP server")
        vllm_log.uvicorn("Shutting down")
        await self.http.close()
        vllm_log.uvicorn("Waiting for application shutdown.")
        if not by_signal:
            await self._stop_engine_async()
        vllm_log.uvicorn("Application shutdown complete.")
        if not by_signal:
            vllm_log.uvicorn(f"Finished server process [{os.getpid()}]")
        flush_streams()
        return 0

    def _stop_engine(self) -> None:
        """Take the engine down (EngineCore frees its workers' and its own fake-GPU memory), then free ours."""
        if self.engine is not None:
            self.engine.stop()
        if self.gpu is not None:
            self.gpu.unregister(os.getpid())

    async def _stop_engine_async(self) -> None:
        """``_stop_engine`` for the graceful paths, without blocking the event loop."""
        if self.engine is not None:
            await self.engine.stop_async()
        if self.gpu is not None:
            self.gpu.unregister(os.getpid())


def bind(host: str, port: int) -> socket.socket:
    """Bind without listening (connections are refused until listen); raises OSError (Errno 98) if taken."""
    resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = resolved[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR only skips TIME_WAIT; a socket bound by any live process still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def run(settings: Settings) -> int:
    """Run one server process to its end; returns the exit status."""
    status = asyncio.run(Lifecycle(settings).main())
    flush_streams()
    return status
