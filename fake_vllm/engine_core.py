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
import json
import os
import signal
import socket
import time
import traceback
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fake_vllm import tracebacks, vllm_log
from fake_vllm.engine import Engine, EngineDead, GenerationRequest, Step
from fake_vllm.settings import KV_BLOCK_SIZE, KV_BYTES_PER_TOKEN, VLLM_VERSION, Settings
from fake_vllm.shutdown import flush_streams

GIB = 1024**3
_STOP_GRACE = 5.0


def set_process_title(title: str) -> None:
    """What setproctitle does on Linux: rewrite the argv area (``ps``, psutil's name) and ``comm`` (15 bytes).

    Best effort: where /proc is missing or read-only the process keeps its name.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path("/proc/self/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
        text = title.encode()[: max(0, arg_end - arg_start - 1)]
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(arg_start)
            memory.write(text + b"\0" * (arg_end - arg_start - len(text)))
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(title[:15])


class StartupFailure(Exception):
    """EngineCore could not start: where it failed (frames) and the exception line."""

    def __init__(self, frames: str, final_line: str) -> None:
        super().__init__(final_line)
        self.frames = frames
        self.final_line = final_line

    def report(self, engine_pid: int) -> None:
        """Print it as EngineCore does: vLLM's logger on stdout, then multiprocessing's traceback on stderr."""
        frames = tracebacks.engine_failure_frames(self.frames)
        logged = "EngineCore failed to start.\n" + tracebacks.traceback_text(frames, self.final_line)
        vllm_log.error("core.py:1510", logged, process=vllm_log.ENGINE_CORE, pid=engine_pid)
        vllm_log.stderr_text(tracebacks.engine_process_traceback(frames, self.final_line))


@dataclass(frozen=True, slots=True)
class Loader:
    """Who logs the loading lines: the worker that loads the model, or EngineCore when it has no worker."""

    process: str
    pid: int


async def load_engine(
    settings: Settings, engine_pid: int, loader: Loader, claim: Callable[[], None], started: float
) -> None:
    """vLLM 0.32's loading, as logged by EngineCore and its worker; raises StartupFailure as vLLM fails.

    ``--startup-delay`` is spent 60% loading the weights, 40% warming up (CPU build) or profiling (GPU
    build). The fake-GPU check (``claim``) comes first, the CUDA OOM of ``--oom startup`` after the weights,
    the KV-cache check last.
    """
    s = settings
    cpu = s.device == "cpu"
    runner = "cpu_model_runner.py" if cpu else "gpu_model_runner.py"

    def log(where: str, message: str) -> None:
        vllm_log.info(where, message, process=loader.process, pid=loader.pid)

    claim()
    log(f"{runner}:{68 if cpu else 5040}", f"Starting to load model {s.model}...")
    await asyncio.sleep(s.startup_delay * 0.6)
    log("default_loader.py:501", f"Loading weights took {time.monotonic() - started:.2f} seconds")
    if not cpu:
        weights = round(s.claim_bytes * 0.25 / GIB, 2)
        log(
            "gpu_model_runner.py:5150",
            f"Model loading took {weights} GiB memory and {time.monotonic() - started:.6f} seconds",
        )
    if s.oom_at_startup:
        held = s.claim_bytes / GIB * 0.92
        raise StartupFailure("profile", tracebacks.cuda_oom_message(s.fake_gpu_total_gib, held))
    if cpu:
        log("cpu_model_runner.py:87", "Warming up model for the compilation...")
    await asyncio.sleep(s.startup_delay * 0.4)
    available = s.kv_cache_tokens * KV_BYTES_PER_TOKEN
    if cpu:
        log("cpu_model_runner.py:91", "Warming up done.")
    else:
        log("gpu_worker.py:760", f"Available KV cache memory: {round(available / GIB, 2)} GiB")
    needed = -(-s.max_model_len // KV_BLOCK_SIZE) * KV_BLOCK_SIZE * KV_BYTES_PER_TOKEN
    if needed > available:
        estimated = s.kv_cache_tokens // KV_BLOCK_SIZE * KV_BLOCK_SIZE
        raise StartupFailure("kv_cache", tracebacks.kv_cache_message(s.max_model_len, needed, available, estimated))
    vllm_log.info(
        "kv_cache_utils.py:2327",
        f"{'CPU' if cpu else 'GPU'} KV cache size: {s.kv_cache_tokens:,} tokens, Maximum concurrency for "
        f"{s.max_model_len:,} tokens per request: {s.kv_cache_tokens / s.max_model_len:.2f}x",
        process=vllm_log.ENGINE_CORE,
        pid=engine_pid,
    )
    vllm_log.info(
        "core.py:402",
        f"init engine (profile, create kv cache, warmup model) took {time.monotonic() - started:.2f} s",
        process=vllm_log.ENGINE_CORE,
        pid=engine_pid,
    )


def engine_config_line(settings: Settings, seed: int) -> str:
    """EngineCore's first line: ``Initializing a V1 LLM engine (v0.32.0) with config: ...``."""
    s = settings
    return (
        f"Initializing a V1 LLM engine (v{VLLM_VERSION}) with config: model={s.model!r}, "
        f"speculative_config=None, tokenizer={s.model!r}, skip_tokenizer_init=False, tokenizer_mode=auto, "
        f"revision=None, trust_remote_code=False, dtype=torch.bfloat16, max_seq_len={s.max_model_len}, "
        f"download_dir=None, load_format=auto, tensor_parallel_size={s.tensor_parallel_size}, "
        f"pipeline_parallel_size=1, data_parallel_size=1, quantization=None, enforce_eager=False, "
        f"kv_cache_dtype=auto, device_config={s.device}, seed={seed}, served_model_name={s.model_name}"
    )


def _after_fork_in_child(close: list[int]) -> None:
    """Leave the parent's event loop and descriptors behind (asyncio does this itself from Python 3.12)."""
    with contextlib.suppress(AttributeError):
        asyncio.events._set_running_loop(None)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fork(close: list[int], child: Callable[[], int]) -> int:
    """Fork; the child closes ``close``, runs ``child`` and exits with its status (never returns)."""
    flush_streams()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        _after_fork_in_child(close)
        status = child()
    except BaseException:  # a child must never return into its parent's code
        traceback.print_exc()
    finally:
        flush_streams()
        os._exit(status)


def reap(pid: int) -> int | None:
    """The exit status of ``pid`` if it has ended (as subprocess reports it: -N for a signal), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    if not done:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def wait_gone(pid: int, timeout: float) -> int | None:
    """Reap ``pid``, waiting up to ``timeout`` seconds; its status, or None if it still runs."""
    deadline = time.monotonic() + timeout
    while True:
        status = reap(pid)
        if status is not None or time.monotonic() >= deadline:
            return status
        time.sleep(0.002)


def _stop_child(pid: int, grace: float) -> int | None:
    """Wait for a child told to stop; SIGKILL it once ``grace`` is over. Its exit status."""
    status = wait_gone(pid, grace)
    if status is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        status = wait_gone(pid, 10.0)
    return status


class _Outbox:
    """Messages for one socket, written together once per round of the event loop: one system call for all
    the steps and stats of that round, however many requests are running."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self._pending: list[bytes] = []

    def put(self, message: list[Any]) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(json.dumps(message, separators=(",", ":")).encode())

    def flush(self) -> None:
        if self._pending and self.writer is not None and not self.writer.is_closing():
            self.writer.write(b"\n".join(self._pending) + b"\n")
        self._pending.clear()


async def _messages(reader: asyncio.StreamReader) -> AsyncGenerator[list[Any], None]:
    """The JSON messages on a socket, one per line, read in large chunks; ends at end-of-file."""
    buffer = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(1 << 18):
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                yield json.loads(line)


# -- the worker ------------------------------------------------------------------------------------------


def _worker_main(name: str, conn: socket.socket, gpu_dir: Path | None) -> int:
    """A worker: it holds its share of the fake GPU and lives as long as its EngineCore does."""
    set_process_title(f"VLLM::{name}")
    # Signals to the group are EngineCore's business: the worker ends with it, whichever way it ends.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        while conn.recv(64):
            pass
    vllm_log.info(
        "multiproc_executor.py:843", "Parent process exited, terminating worker queues", process=vllm_log.WORKER
    )
    if gpu_dir is not None:
        (gpu_dir / f"{os.getpid()}.json").unlink(missing_ok=True)
    return 0


@dataclass(slots=True)
class _Worker:
    pid: int
    name: str
    conn: socket.socket


# -- EngineCore ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _EngineCore:
    """The EngineCore process: loads, then generates for the API server until it is stopped or killed."""

    settings: Settings
    conn: socket.socket
    pid: int = field(default_factory=os.getpid)
    workers: list[_Worker] = field(default_factory=list)
    loading: bool = True
    ignore_sigterm: bool = False
    engine: Engine | None = None
    outbox: _Outbox = field(default_factory=_Outbox)
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
            pid = _fork(close, functools.partial(_worker_main, name, theirs, gpu_dir))
            theirs.close()
            self.workers.append(_Worker(pid, name, mine))

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
        async for message in _messages(reader):
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

    def _on_worker_message(self, worker: _Worker) -> None:
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
            worker.conn.close()
        for worker in self.workers:
            _stop_child(worker.pid, _STOP_GRACE)
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
        self._outbox = _Outbox()
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
        pid = _fork([*close, mine.fileno()], lambda: _engine_core_main(settings, theirs))
        theirs.close()
        return cls(pid, mine, on_stats)

    async def wait_ready(self) -> bool:
        """Wait for EngineCore to finish loading; False if it exited instead (it has printed why)."""
        self._reader, self._outbox.writer = await asyncio.open_connection(sock=self._conn)
        self._incoming = _messages(self._reader)
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
            self.status = _stop_child(self.pid, grace)

    async def stop_async(self, grace: float = _STOP_GRACE) -> None:
        """Stop EngineCore without blocking the event loop; SIGKILL once ``grace`` is over."""
        if self.status is not None:
            return
        self._ask_to_stop()
        if await self.reaped(grace) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await self.reaped()
