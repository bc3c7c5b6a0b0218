"""The engine processes: ``VLLM::EngineCore`` under the API server, ``VLLM::Worker`` processes under it.

As in vLLM 0.32, the API server starts EngineCore, EngineCore starts its workers (one even at
``--tensor-parallel-size 1``), and EngineCore does the loading and the generating: the API server sends it
requests over a socket pair and relays the tokens it sends back, with its scheduler stats (running,
waiting, KV-cache usage). So the faults of the real thing happen here too:

- SIGKILL of EngineCore: the API server reads end-of-file at once, logs EngineDeadError and answers /health
  with 503; the workers notice their parent is gone and exit.
- SIGSTOP of EngineCore: nothing is generated and no stats arrive, while the API server still answers
  /health with 200; SIGCONT resumes.
- SIGKILL of the API server: EngineCore and its workers keep running (and keep their fake-GPU memory);
  they neither watch the API server nor hold its listening socket.
- SIGKILL of a worker: EngineCore logs ``Worker proc ... died unexpectedly`` and exits; the engine is dead.

The processes are forked (a millisecond each, so start-up stays fast) and renamed as vLLM names them with
setproctitle: ``/proc/PID/cmdline`` becomes ``VLLM::EngineCore`` and ``/proc/PID/comm`` its first 15
characters. Messages on the socket are JSON lists, one per line: to EngineCore ``["add", id, request]``,
``["abort", id]``, ``["stall"]``, ``["sigterm", ignore]``, ``["shutdown"]``; from it ``["ready", pids]``,
``["t", id, [[tokens, last], ...]]`` (the steps of one request made in one round of its event loop) and
``["s", running, waiting, kv_usage]``. Each side writes what one round produced in a single write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fake_vllm import tracebacks, vllm_log
from fake_vllm.engine import Engine, EngineDead, GenerationRequest, Step
from fake_vllm.engine_load import Loader, StartupFailure, engine_config_line, load_engine
from fake_vllm.engine_procs import (
    STOP_WORKER,
    Outbox,
    WorkerProcess,
    fork_child,
    read_messages,
    reap,
    set_process_title,
    stop_child,
    wait_gone,
    worker_main,
)
from fake_vllm.settings import Settings
from fake_vllm.shutdown import flush_streams

GIB = 1024**3
_STOP_GRACE = 5.0


# -- EngineCore ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _EngineCore:
    """The EngineCore process: loads, then generates for the API server until it is stopped or killed."""

    settings: Settings
    conn: socket.socket
    pid: int = field(default_factory=os.getpid)
    workers: list[WorkerProcess] = field(default_factory=list)
    loading: bool = True
    ignore_sigterm: bool = False
    engine: Engine | None = None
    outbox: Outbox = field(default_factory=Outbox)
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    batches: dict[int, list[list[Any]]] = field(default_factory=dict)
    stats_pending: bool = False
    stopping: bool = False

    def run(self) -> int:
        set_process_title("VLLM::EngineCore")
        self.ignore_sigterm = self.settings.faults.ignore_sigterm
        pending: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _frame: pending.append(number))
        vllm_log.info(
            "core.py:133",
            engine_config_line(self.settings, self.settings.faults.seed),
            process=vllm_log.ENGINE_CORE,
        )
        self._start_workers()
        return asyncio.run(self._main(pending))

    def _start_workers(self) -> None:
        gpu_dir = self.settings.fake_gpu_dir
        for name in self.settings.worker_names:
            mine, theirs = socket.socketpair()
            close = [self.conn.fileno(), mine.fileno(), *(w.conn.fileno() for w in self.workers)]
            pid = fork_child(close, functools.partial(worker_main, name, theirs, gpu_dir))
            theirs.close()
            self.workers.append(WorkerProcess(pid, name, mine))

    @property
    def pids(self) -> list[int]:
        return [self.pid, *(w.pid for w in self.workers)]

    async def _main(self, pending: list[int]) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        for number in pending:
            self._on_signal(number)
        for worker in self.workers:
            worker.conn.setblocking(False)
            loop.add_reader(worker.conn.fileno(), self._on_worker_message, worker)
        reader, self.outbox.writer = await asyncio.open_connection(sock=self.conn)
        commands = asyncio.ensure_future(self._read_commands(reader))
        started = time.monotonic()
        loader = (
            Loader(vllm_log.WORKER, self.workers[0].pid) if self.workers else Loader(vllm_log.ENGINE_CORE, self.pid)
        )
        try:
            await load_engine(self.settings, self.pid, loader, self._claim_gpu, started)
        except StartupFailure as failure:
            failure.report(self.pid)
            self._exit(1)
        self.loading = False
        self.engine = Engine(self.settings.max_num_seqs, self.settings.kv_cache_tokens, self._stats_changed)
        self._send(["ready", self.pids])
        await commands
        # The API server is gone (killed): like vLLM's EngineCore, stay alive, holding the memory.
        await loop.create_future()
        return 0

    def _claim_gpu(self) -> None:
        """Check free fake-GPU memory and register every engine process's share, under the device lock."""
        s = self.settings
        if s.fake_gpu_dir is None:
            return
        from fake_vllm.gpu import FakeGpu, process_create_time

        gpu = FakeGpu(s.fake_gpu_dir, int(s.fake_gpu_total_gib * GIB))
        with gpu.locked():
            free = gpu.free_bytes()
            if free < s.claim_bytes:
                message = tracebacks.free_memory_message(free, gpu.total_bytes, s.gpu_memory_utilization)
                raise StartupFailure("device", message)
            share = s.claim_bytes // len(self.pids)
            names = ["VLLM::EngineCore", *(f"VLLM::{w.name}" for w in self.workers)]
            for pid, name in zip(self.pids, names, strict=True):
                gpu.register(pid, process_create_time(pid), share, name)

    # -- commands from the API server --------------------------------------------------------------

    async def _read_commands(self, reader: asyncio.StreamReader) -> None:
        async for message in read_messages(reader):
            self._command(message)

    def _command(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == "add" and self.engine is not None:
            rid = message[1]
            request = GenerationRequest.from_json(message[2])
            self.tasks[rid] = asyncio.ensure_future(self._generate(rid, self.engine.generate(request)))
        elif kind == "abort":
            task = self.tasks.pop(message[1], None)
            if task is not None:
                task.cancel()
        elif kind == "stall" and self.engine is not None:
            self.engine.stall()
        elif kind == "sigterm":
            self.ignore_sigterm = bool(message[1])
        elif kind == "shutdown":
            self._shutdown()

    async def _generate(self, rid: int, steps: AsyncGenerator[Step, None]) -> None:
        try:
            async for step in steps:
                batch = self.batches.get(rid)
                if batch is None:
                    if not self.batches:
                        asyncio.get_running_loop().call_soon(self._send_batches)
                    batch = self.batches[rid] = []
                batch.append([step.tokens, step.last])
        except EngineDead:
            pass
        finally:
            self.tasks.pop(rid, None)
            await steps.aclose()

    def _send_batches(self) -> None:
        """The steps of this round, one message per request (all of them, when nothing slows it down)."""
        for rid, batch in self.batches.items():
            self._send(["t", rid, batch])
        self.batches.clear()

    def _stats_changed(self) -> None:
        if not self.stats_pending:
            self.stats_pending = True
            asyncio.get_running_loop().call_soon(self._send_stats)

    def _send_stats(self) -> None:
        self.stats_pending = False
        if self.engine is not None:
            self._send(["s", *self.engine.stats()])

    def _send(self, message: list[Any]) -> None:
        self.outbox.put(message)

    # -- ending ------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM and (self.ignore_sigterm or (self.loading and not self._honor_while_loading)):
            return
        vllm_log.info(
            "core.py:1454",
            f"[shutdown] EngineCore: trigger received signal={signal.Signals(signum).name}",
            process=vllm_log.ENGINE_CORE,
        )
        self._shutdown()

    @property
    def _honor_while_loading(self) -> bool:
        return self.settings.honor_sigterm_while_loading

    def _on_worker_message(self, worker: WorkerProcess) -> None:
        try:
            data = worker.conn.recv(64)
        except OSError:
            data = b""
        if data or self.stopping:
            return
        status = wait_gone(worker.pid, 1.0)
        rank = self.workers.index(worker)
        vllm_log.error(
            "multiproc_executor.py:315",
            f"Worker proc VllmWorker-{rank} died unexpectedly (exit code: {status}), shutting down executor.",
            process=vllm_log.ENGINE_CORE,
        )
        self._exit(1)

    def _shutdown(self) -> NoReturn:
        vllm_log.info(
            "core.py:1635", "[shutdown] EngineCore: start mode=abort timeout=0s", process=vllm_log.ENGINE_CORE
        )
        self._exit(0)

    def _exit(self, status: int) -> NoReturn:
        """Stop the workers (they end when their socket closes), free our memory, and exit."""
        self.stopping = True
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.conn.sendall(STOP_WORKER)
            worker.conn.close()
        for worker in self.workers:
            stop_child(worker.pid, _STOP_GRACE)
        if self.settings.fake_gpu_dir is not None:
            (self.settings.fake_gpu_dir / f"{self.pid}.json").unlink(missing_ok=True)
        flush_streams()
        os._exit(status)


def _engine_core_main(settings: Settings, conn: socket.socket) -> int:
    return _EngineCore(settings, conn).run()


# -- the API server's side -------------------------------------------------------------------------------


class RemoteEngine:
    """The API server's client of its EngineCore process: requests out, steps and stats in."""

    def __init__(self, pid: int, conn: socket.socket, on_stats: Callable[[int, int, float], None]) -> None:
        self.pid = pid
        self.pids: list[int] = [pid]
        self._conn = conn
        self._on_stats = on_stats
        self._outbox = Outbox()
        self._reader: asyncio.StreamReader | None = None
        self._queues: dict[int, asyncio.Queue[list[Step] | None]] = {}
        self._next_id = 0
        self._reading: asyncio.Future[None] | None = None
        self.dead = False
        self.on_death: Callable[[], None] = lambda: None
        self.status: int | None = None

    @classmethod
    def start(cls, settings: Settings, close: list[int], on_stats: Callable[[int, int, float], None]) -> RemoteEngine:
        """Fork EngineCore (which forks its workers and loads); ``close``: descriptors it must not keep."""
        mine, theirs = socket.socketpair()
        pid = fork_child([*close, mine.fileno()], lambda: _engine_core_main(settings, theirs))
        theirs.close()
        return cls(pid, mine, on_stats)

    async def wait_ready(self) -> bool:
        """Wait for EngineCore to finish loading; False if it exited instead (it has printed why)."""
        self._reader, self._outbox.writer = await asyncio.open_connection(sock=self._conn)
        self._incoming = read_messages(self._reader)
        async for message in self._incoming:
            if message[0] == "ready":
                self.pids = list(message[1])
                self._reading = asyncio.ensure_future(self._read())
                return True
        self.dead = True
        await self.reaped()
        return False

    async def _read(self) -> None:
        async for message in self._incoming:
            if message[0] == "t":
                queue = self._queues.get(message[1])
                if queue is not None:
                    queue.put_nowait([Step(tuple(map(tuple, tokens)), last) for tokens, last in message[2]])
            elif message[0] == "s":
                self._on_stats(message[1], message[2], message[3])
        self.dead = True
        for queue in self._queues.values():
            queue.put_nowait(None)
        self.on_death()
        await self.reaped()

    async def reaped(self, timeout: float = 10.0) -> int | None:
        """Wait (briefly) until EngineCore has exited and reap it; its status."""
        deadline = time.monotonic() + timeout
        while self.status is None and time.monotonic() < deadline:
            self.status = reap(self.pid)
            if self.status is None:
                await asyncio.sleep(0.005)
        return self.status

    def _send(self, message: list[Any]) -> None:
        self._outbox.put(message)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        """The steps of one request, as EngineCore sends them; EngineDead if it dies meanwhile."""
        if self.dead:
            raise EngineDead
        rid = self._next_id = self._next_id + 1
        queue: asyncio.Queue[list[Step] | None] = asyncio.Queue()
        self._queues[rid] = queue
        finished = False
        self._send(["add", rid, request.to_json()])
        try:
            while not finished:
                steps = await queue.get()
                if steps is None:
                    raise EngineDead
                for step in steps:
                    finished = step.last
                    yield step
        finally:
            del self._queues[rid]
            if not finished and not self.dead:
                self._send(["abort", rid])

    def stall(self) -> None:
        """Make EngineCore stop stepping for good."""
        self._send(["stall"])

    def set_ignore_sigterm(self, ignore: bool) -> None:
        """Tell EngineCore whether SIGTERM stops it (``--ignore-sigterm`` covers the whole engine)."""
        self._send(["sigterm", ignore])

    def kill(self) -> None:
        """SIGKILL EngineCore (an injected engine death); its workers follow it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def _ask_to_stop(self) -> None:
        """vLLM's process manager: SIGTERM to EngineCore. A ``shutdown`` message goes first, so an
        EngineCore that ignores SIGTERM (``--ignore-sigterm``, or still loading) stops all the same."""
        if self._outbox.writer is None:  # the socket is not the event loop's yet
            with contextlib.suppress(OSError):
                self._conn.sendall(b'["shutdown"]\n')
        else:
            self._outbox.put(["shutdown"])
            self._outbox.flush()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
            os.kill(self.pid, signal.SIGCONT)  # a stopped process would hold its SIGTERM until SIGKILL

    def stop(self, grace: float = _STOP_GRACE) -> None:
        """Stop EngineCore and wait for it (blocking: for the paths that exit right after, such as a crash);
        SIGKILL once ``grace`` is over."""
        if self.status is None:
            self._ask_to_stop()
            self.status = stop_child(self.pid, grace)

    async def stop_async(self, grace: float = _STOP_GRACE) -> None:
        """Stop EngineCore without blocking the event loop; SIGKILL once ``grace`` is over."""
        if self.status is not None:
            return
        self._ask_to_stop()
        if await self.reaped(grace) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await self.reaped()
