"""The life of one fake-vllm process: bind, load, listen, serve, fail on command, shut down.

The order copies vLLM: the socket is bound first (a taken port fails at once with Errno 98) but listens
only when loading is done, so connections are refused meanwhile. Fault timers set on the command line run
from the moment the server listens; timers set through /admin/faults run from the POST.
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
from typing import TYPE_CHECKING, Any, NoReturn

from fake_vllm import tracebacks, vllm_log
from fake_vllm.app import ROUTES, make_handler
from fake_vllm.children import ChildStartError, EngineChildren
from fake_vllm.httpserver import HttpServer
from fake_vllm.runtime import Phase, Runtime
from fake_vllm.settings import VLLM_VERSION, Settings
from fake_vllm.shutdown import die, flush_streams

if TYPE_CHECKING:
    from fake_vllm.gpu import FakeGpu

GIB = 1024**3


class StartupFailed(Exception):
    """Start-up ended with an error already written to stderr."""


class Lifecycle:
    """Owns the socket, the children, the fault timers, and the exit status."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rt = Runtime(settings)
        self.children = EngineChildren()
        self.gpu: FakeGpu | None = None
        if settings.fake_gpu_dir is not None:
            from fake_vllm.gpu import FakeGpu

            self.gpu = FakeGpu(settings.fake_gpu_dir, int(settings.fake_gpu_total_gib * GIB))
        self.http = HttpServer(make_handler(self.rt), self.rt.gate, access_log=settings.access_log)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._requests_baseline = 0
        self._stop: asyncio.Future[str] | None = None
        self._claim: asyncio.Future[None] | None = None
        self.rt.on_faults_changed = self._arm
        self.rt.on_inference_answered = self._check_request_budget

    @property
    def engine_pid(self) -> int:
        """The pid that EngineCore lines carry: the first child's, or ours when there is none."""
        return self.children.pids[0] if self.children.pids else os.getpid()

    def _engine_log(self, where: str, message: str) -> None:
        vllm_log.info(where, message, process=vllm_log.ENGINE_CORE, pid=self.engine_pid)

    async def main(self) -> int:
        """Run until a signal, a fault or a failed start-up ends the process; returns the exit status."""
        s = self.settings
        vllm_log.info("api_server.py:1971", f"vLLM API server version {VLLM_VERSION}")
        args = {"model_tag": s.model, "host": s.host, "port": s.port}
        vllm_log.info("utils.py:328", f"non-default args: {args!r}")
        if s.ignored_args:
            ignored = " ".join(s.ignored_args)
            vllm_log.warning("arg_utils.py:1790", f"fake-vllm ignores unrecognized arguments: {ignored}")
        try:
            sock = bind(s.host, s.port)
        except OSError:
            traceback.print_exc()
            return 1
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loading = asyncio.ensure_future(self._load())
        waiters: set[asyncio.Future[Any]] = {loading, self._stop}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():  # a signal arrived while loading
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, StartupFailed):
                await loading
            if self._claim is not None:  # a thread cannot be cancelled: let it finish spawning before we reap
                with contextlib.suppress(StartupFailed, ChildStartError):
                    await self._claim
            sock.close()
            return await self._shutdown()
        try:
            loading.result()
        except (StartupFailed, ChildStartError) as exc:
            if isinstance(exc, ChildStartError):
                vllm_log.stderr_text(f"RuntimeError: Engine core initialization failed. {exc}")
            sock.close()
            await asyncio.to_thread(self._stop_engine)  # a failed start takes its engine down
            return 1
        await self._listen(sock)
        await self._stop
        return await self._shutdown()

    async def _load(self) -> None:
        s = self.settings
        started = time.monotonic()
        vllm_log.info("model.py:1510", f"Using max model len {s.max_model_len}")
        self._claim = asyncio.ensure_future(asyncio.to_thread(self._claim_gpu))
        await asyncio.shield(self._claim)
        self.rt.engine_children = self.children.pids
        self._engine_log(
            "core.py:77",
            f"Initializing a V1 LLM engine (v{VLLM_VERSION}) with config: "
            f"model={s.model!r}, served_model_name={s.model_name}, max_seq_len={s.max_model_len}, "
            f"seed={self.rt.faults.seed}",
        )
        self._engine_log("gpu_model_runner.py:2602", f"Starting to load model {s.model}...")
        await asyncio.sleep(s.startup_delay * 0.6)
        weights = s.claim_bytes / GIB * 0.25
        self._engine_log("default_loader.py:267", f"Loading weights took {time.monotonic() - started:.2f} seconds")
        self._engine_log(
            "gpu_model_runner.py:2653",
            f"Model loading took {weights:.4f} GiB and {time.monotonic() - started:.2f} seconds",
        )
        if s.oom_at_startup:
            used = s.fake_gpu_total_gib - (self.gpu.free_bytes() / GIB if self.gpu else 0.0)
            self._engine_start_failed(tracebacks.cuda_oom_message(s.fake_gpu_total_gib, used), during_profile=True)
        await asyncio.sleep(s.startup_delay * 0.4)
        self._engine_log("gpu_worker.py:298", f"Available KV cache memory: {s.claim_bytes / GIB * 0.7:.2f} GiB")
        self._engine_log("kv_cache_utils.py:1087", "GPU KV cache size: 49,152 tokens")
        self._engine_log(
            "core.py:210",
            f"init engine (profile, create kv cache, warmup model) took {time.monotonic() - started:.2f} seconds",
        )

    def _claim_gpu(self) -> None:
        """Check free fake-GPU memory and take ours, under the device lock (runs in a thread)."""
        s = self.settings
        if self.gpu is None:
            self.children.start(s.engine_children, None, 0)
            return
        with self.gpu.locked():
            free = self.gpu.free_bytes()
            if free < s.claim_bytes:
                message = tracebacks.free_memory_message(free, self.gpu.total_bytes, s.gpu_memory_utilization)
                self._engine_start_failed(message, during_profile=False)
            if s.engine_children:
                self.children.start(s.engine_children, self.gpu.directory, s.claim_bytes // s.engine_children)
            else:
                from fake_vllm.gpu import process_create_time

                self.gpu.register(os.getpid(), process_create_time(os.getpid()), s.claim_bytes, "fake-vllm")

    def _engine_start_failed(self, final_line: str, *, during_profile: bool) -> NoReturn:
        """Write EngineCore's start-up failure as vLLM does, ending with ``final_line``; raises StartupFailed."""
        vllm_log.error("core.py:708", "EngineCore failed to start.", process=vllm_log.ENGINE_CORE, pid=self.engine_pid)
        failure = tracebacks.engine_start_failure(
            self.engine_pid, os.getpid(), final_line, during_profile=during_profile
        )
        vllm_log.stderr_text(failure)
        raise StartupFailed

    async def _listen(self, sock: socket.socket) -> None:
        sock.listen(2048)
        await self.http.start(sock)
        self.rt.phase = Phase.READY
        self.rt.ready_at = time.time()
        host, port = sock.getsockname()[:2]
        vllm_log.info("api_server.py:2015", f"Starting vLLM API server 0 on http://{host}:{port}")
        vllm_log.info("launcher.py:34", "Available routes are:")
        for path, (_kind, methods) in ROUTES.items():
            vllm_log.info("launcher.py:42", f"Route: {path}, Methods: {', '.join(methods)}")
        vllm_log.uvicorn(f"Started server process [{os.getpid()}]")
        vllm_log.uvicorn("Waiting for application startup.")
        vllm_log.uvicorn("Application startup complete.")
        self._arm(self.rt.faults.as_dict())

    # -- faults --------------------------------------------------------------------------------------

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

    def _engine_dead(self) -> None:
        if self.rt.phase is not Phase.READY:
            return
        self.rt.phase = Phase.ENGINE_DEAD
        self.rt.record("engine_dead")
        vllm_log.error("async_llm.py:480", "AsyncLLM output_handler failed.")
        vllm_log.stderr_text(tracebacks.engine_dead(os.getpid()))
        self._stop_engine()  # the engine is what died
        self._arm({"engine_dead_exit_after": None})

    def _engine_dead_exit(self) -> None:
        self.rt.record("engine_dead_exit")
        self._request_stop("engine_dead")

    def _oom(self) -> None:
        s = self.settings
        self.rt.record("oom")
        vllm_log.error(
            "core.py:710", "EngineCore encountered a fatal error.", process=vllm_log.ENGINE_CORE, pid=self.engine_pid
        )
        vllm_log.stderr_text(tracebacks.runtime_oom(self.engine_pid, s.fake_gpu_total_gib, s.claim_bytes / GIB))
        self._stop_engine()
        die(1, None)

    # -- stopping ------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM and self.rt.faults.ignore_sigterm:
            self.rt.record("sigterm_ignored")
            return
        self._request_stop(signal.Signals(signum).name)

    def _request_stop(self, reason: str) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(reason)

    async def _shutdown(self) -> int:
        """vLLM's graceful path: log, stop serving, take the engine down, exit 0."""
        self.rt.phase = Phase.STOPPING
        for timer in self._timers.values():
            timer.cancel()
        vllm_log.info("launcher.py:80", "Shutting down FastAPI HTTP server.")
        vllm_log.uvicorn("Shutting down")
        await self.http.close()
        vllm_log.uvicorn("Waiting for application shutdown.")
        await asyncio.to_thread(self._stop_engine)
        vllm_log.uvicorn("Application shutdown complete.")
        flush_streams()
        return 0

    def _stop_engine(self) -> None:
        """Take the engine down: terminate the children (each frees its own fake GPU memory), then free ours."""
        self.children.terminate()
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
