"""What the real-vLLM tests share: where vLLM is, the model entry and supervisor that run it, its processes,
and a report of what was seen.

Real vLLM for CPUs lives in its own venv (.venv-vllm, made by ci/real-vllm.sh); the tests run in the dev
venv and start `vllm serve` as a process of the supervisor, like any model. Nothing here imports vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client import CollectorRegistry

from supervisor.config.schema import parse_config
from supervisor.core.states import EventKind
from supervisor.core.views import TimelineEvent
from supervisor.gateway.service import Gateway
from supervisor.loop.fleet import Fleet

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("VLLM_VENV", REPO / ".venv-vllm"))
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
VLLM = VLLM_VENV / "bin" / "vllm"
BUILDER = Path(__file__).with_name("tiny_model.py")

ENABLE_ENV = "LLM_SUPERVISOR_REAL_VLLM"  # set by `make test-real`; without it every test here skips
REPORT_ENV = "LLM_SUPERVISOR_REAL_VLLM_REPORT"  # where observations are written (default reports/real-vllm)
TAG_ENV = "LLM_SUPERVISOR_TEST_ID"  # every process of a test's servers carries it (tests/e2e's name for it)

# vLLM for CPUs with no network and a KV cache of 1 GiB (its default is a share of the RAM).
VLLM_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
MAX_MODEL_LEN = "256"
ENGINE_CORE = "VLLM::EngineCore"
SHUTDOWN_LIMIT = 120.0


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV) == "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vllm_model(
    model_dir: Path,
    tag: str,
    *flags: str,
    max_model_len: str = MAX_MODEL_LEN,
    env: dict[str, str] | None = None,
    **keys: Any,
) -> dict[str, Any]:
    """A model entry that runs real vLLM on the tiny model on a free port.

    `--enforce-eager`: vLLM 0.32 on CPUs fails to reload its torch.compile cache and compiles again on every
    start (some 30 s more per start on two cores); eager mode starts the same processes and loads the same
    way. Start-up on a loaded two-core machine takes one to two minutes, hence the generous timeouts.
    """
    port = free_port()
    entry: dict[str, Any] = {
        "command": str(VLLM),
        "args": [
            "serve",
            str(model_dir),
            "--port",
            str(port),
            "--max-model-len",
            max_model_len,
            "--enforce-eager",
            *flags,
        ],
        "env": {**VLLM_ENV, **(env or {}), TAG_ENV: tag},
        "endpoints": {"base_url": f"http://127.0.0.1:{port}/v1"},
        "restart_delay": 0.5,
        "max_restarts": 10,
        "restart_window": 3600,
        "startup_timeout": 240,
        "startup_probe_interval": 0.5,
        "health_check_interval": 1,
        "health_check_timeout": 5,
        "health_failure_threshold": 3,
        "stop_timeout": 15,
    }
    entry.update(keys)
    return entry


# --- a supervisor over real vLLM -------------------------------------------------------------------------


@dataclass
class Served:
    fleet: Fleet
    gateway: Gateway | None
    client: httpx.AsyncClient | None  # on the gateway, when there is one


@asynccontextmanager
async def supervised(
    state_dir: Path, models: dict[str, dict[str, Any]], tag: str, gateway: bool = False
) -> AsyncIterator[Served]:
    """A real Fleet (and gateway) over real vLLM; shut down at the end, and then nothing tagged may be left."""
    settings: dict[str, Any] = {"state_dir": str(state_dir)}
    if gateway:
        settings["gateway"] = {"port": 0, "hold_timeout": 60}
    config = parse_config({"supervisor": settings, "llmModels": models}, "real-vllm")
    fleet = Fleet(config)
    gw = None
    if config.supervisor.gateway is not None:
        gw = Gateway(fleet, config.supervisor.gateway, CollectorRegistry(), None)
    await fleet.start()
    try:
        if gw is None:
            yield Served(fleet, None, None)
        else:
            host, port = await gw.start("127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=60, trust_env=False) as client:
                yield Served(fleet, gw, client)
    finally:
        if gw is not None:
            await gw.close()
        try:
            await asyncio.wait_for(fleet.shutdown(), SHUTDOWN_LIMIT)
        finally:
            left = tagged(tag)
            described = describe(left)
            kill_all(left)
            if left:
                raise AssertionError(f"the supervisor's shutdown left processes of real vLLM: {described}")


# --- processes ----------------------------------------------------------------------------------------


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Every live process of a process group (a run's group is its leader's pid)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and alive(proc):
                found.append(proc)
    return found


def tagged(tag: str) -> list[psutil.Process]:
    """Every live process that carries the tag in its environment, wherever it was re-parented."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get(TAG_ENV) == tag and alive(proc):
                found.append(proc)
    return found


def describe(procs: Iterable[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} (pgid {os.getpgid(proc.pid)}) {' '.join(proc.cmdline())[:100]}")
        except (psutil.Error, ProcessLookupError):
            out.append(str(proc.pid))
    return out


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL each process and its group (cleanup of a failed test; a stopped process dies of SIGKILL too)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            proc.kill()


def is_engine_core(proc: psutil.Process) -> bool:
    """vLLM names the engine process with setproctitle: `VLLM::EngineCore` (comm keeps 15 characters)."""
    try:
        cmdline = proc.cmdline()
        return proc.name() == ENGINE_CORE[:15] or (bool(cmdline) and cmdline[0].startswith(ENGINE_CORE))
    except psutil.Error:
        return False


def engine_core(leader: int) -> psutil.Process | None:
    """The EngineCore process among a server's descendants, or None."""
    try:
        children = psutil.Process(leader).children(recursive=True)
    except psutil.Error:
        return None
    return next((child for child in children if is_engine_core(child) and alive(child)), None)


# --- what the supervisor recorded ----------------------------------------------------------------------


def events_since(fleet: Fleet, model_id: str, seq: int) -> list[TimelineEvent]:
    return fleet.events(model_id, since=seq)


def last_seq(fleet: Fleet, model_id: str) -> int:
    events = fleet.events(model_id)
    return events[-1].seq if events else 0


def of_kind(events: Iterable[TimelineEvent], *kinds: EventKind) -> list[TimelineEvent]:
    return [e for e in events if e.kind in kinds]


def show_events(events: Iterable[TimelineEvent]) -> str:
    """One line per event, as the daemon's event printer would say it."""
    lines = []
    for e in events:
        stamp = time.strftime("%H:%M:%S", time.gmtime(e.time)) + f".{int(e.time * 1000) % 1000:03d}"
        lines.append(f"{stamp} {e.kind.value:<17} state={e.state.value:<9} reason={e.reason} detail={e.detail}")
    return "\n".join(lines)


def log_lines(fleet: Fleet, model_id: str) -> list[str]:
    """The model's log as the supervisor wrote it: `TIME STREAM | line`, output and run markers."""
    path = fleet.log_dir() / f"{model_id}.log"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def lines_around(lines: list[str], needle: str, before: int, after: int) -> list[str]:
    """The lines around every line that contains `needle` (overlaps merged), in order."""
    keep: set[int] = set()
    for i, line in enumerate(lines):
        if needle in line:
            keep.update(range(max(0, i - before), min(len(lines), i + after + 1)))
    return [lines[i] for i in sorted(keep)]


def report(name: str, text: str) -> Path:
    """Write an observation to the report folder (and print it: `pytest -s` shows it as it happens)."""
    folder = Path(os.environ.get(REPORT_ENV, REPO / "reports" / "real-vllm"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.txt"
    path.write_text(text.rstrip("\n") + "\n")
    print(f"\n===== {name} =====\n{text}")
    return path


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll a condition until it holds, failing after `timeout` seconds with what was awaited; the wait's length."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
    return loop.time() - start
