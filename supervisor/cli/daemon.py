"""`llm-supervisor run`: the supervisor and its API in one process, on one event loop.

uvicorn serves the app on a socket bound here (so a busy port is a clear error before any model starts)
with uvicorn's own signal handling off: SIGTERM/SIGINT belong to us, because they must stop every model
(whole process groups) before the process exits 0. SIGHUP re-reads the config file (`Fleet.reload`), as it
does for supervisord and nginx, instead of killing the supervisor and leaving every model unsupervised.
Each timeline event, and each reload's outcome, is logged as one line on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import uvicorn

from supervisor.api.app import create_app
from supervisor.api.auth import token_from_env
from supervisor.cli.heap import collect_periodically
from supervisor.config.reload_plan import ReloadPlan, ReloadRefused
from supervisor.config.schema import Config, ConfigError, GatewaySettings, SupervisorSettings
from supervisor.core.states import EventKind
from supervisor.core.views import TimelineEvent
from supervisor.gateway.service import Gateway
from supervisor.loop.fleet import Fleet
from supervisor.loop.model import unit_name
from supervisor.store.journal import JOURNAL_FILENAME, Journal, JournalError

log = logging.getLogger(__name__)

LOCK_FILENAME = "supervisor.lock"
# Streaming log followers must not hold the exit hostage.
_GRACEFUL_HTTP_SHUTDOWN = 3


class StartupError(Exception):
    """`run` cannot begin; str() says why. `exit_code` is the CLI's (2 config/usage, 1 operation)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class EventPrinter:
    """An Observer that writes each timeline event as one readable line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def on_event(self, event: TimelineEvent) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.time))
        line = f"{stamp} {unit_name(event.model_id, event.replica)}: {event.kind}"
        if event.state.value != event.kind.value:  # "healthy -> healthy" says nothing twice
            line += f" -> {event.state}"
        if event.detail:
            seconds = " s" if event.kind is EventKind.BACKOFF else ""  # the backoff detail is a delay in seconds
            line += f" ({event.detail}{seconds})"
        if event.reason:
            line += f" [reason: {event.reason}]"
        print(line, file=self._out, flush=True)

    def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
        """Probes are too frequent for a line each; failures show up as probe_failed events."""


class ReloadPrinter:
    """Writes what each reload did (SIGHUP's or the API's) as one line, and what waits for a full restart."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, plan: ReloadPlan) -> None:
        parts = [
            f"{name} {', '.join(ids)}"
            for name, ids in (
                ("added", plan.added),
                ("removed", plan.removed),
                ("restarted", plan.restarted),
                ("unchanged", plan.unchanged),
            )
            if ids
        ]
        print(f"llm-supervisor: reloaded: {'; '.join(parts) or 'no models'}", file=self._out, flush=True)
        if plan.needs_restart:
            print(
                f"llm-supervisor: not applied until the supervisor restarts: {', '.join(plan.needs_restart)}",
                file=self._out,
                flush=True,
            )


class _Reloads:
    """SIGHUP's handler: one reload task at a time; a bad config file is reported and changes nothing."""

    def __init__(self, fleet: Fleet, out: TextIO) -> None:
        self._fleet = fleet
        self._out = out
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def signalled(self) -> None:
        if self.closed:
            print("llm-supervisor: SIGHUP ignored: the supervisor is stopping", file=self._out, flush=True)
            return
        print("llm-supervisor: SIGHUP: reloading the config file", file=self._out, flush=True)
        task = asyncio.get_running_loop().create_task(self._reload(), name="reload:SIGHUP")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self) -> None:
        try:
            await self._fleet.reload()
        except ConfigError:
            pass  # the fleet logged every problem
        except ReloadRefused as exc:
            print(f"llm-supervisor: reload refused: {exc}", file=self._out, flush=True)
        except Exception:  # a bug in a reload must not end the supervisor that keeps every model alive
            log.exception("reload failed")

    async def close(self) -> None:
        self.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _OwnSignalsServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; any other name might resolve to a public interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, token_env: str) -> None:
    """Refuse to expose an unauthenticated control plane beyond this machine (docs/design/contract.md section 4)."""
    if token is None and not is_loopback(host):
        raise StartupError(
            f"refusing to listen on {host} without a token: anyone who can reach it could stop your models. "
            f"Set ${token_env} to a secret, or listen on 127.0.0.1."
        )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", exit_code=1) from exc


def lock_state_dir(state_dir: Path) -> int:
    """Hold an exclusive lock on the state directory for this process's life (released by the kernel on any
    exit, kill -9 included). A second supervisor on the same directory would take the first one's live runs
    for leftovers and stop them, then both would start the models: two copies fighting over the GPUs."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_FILENAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot use state_dir {state_dir}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            f"another llm-supervisor (pid {holder}) is using state_dir {state_dir}; give each supervisor its own"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def gateway_key(settings: GatewaySettings) -> str | None:
    """The key clients must send to the gateway; refuse a named variable that is unset, and an open gateway
    beyond this machine."""
    key = None
    if settings.api_key_env is not None:
        key = token_from_env(settings.api_key_env)
        if key is None:
            raise StartupError(
                f"supervisor.gateway.api_key_env names ${settings.api_key_env}, which is unset or empty: "
                "set it to the key clients must send, or remove api_key_env"
            )
    if key is None and not is_loopback(settings.host):
        raise StartupError(
            f"refusing to serve the gateway on {settings.host} without an API key: anyone who can reach it "
            "could use your GPUs. Set supervisor.gateway.api_key_env, or listen on 127.0.0.1."
        )
    return key


def open_journal(settings: SupervisorSettings) -> Journal:
    """The journal in the state directory, keeping the configured number of events per model."""
    try:
        return Journal.open(settings.state_dir / JOURNAL_FILENAME, max_events_per_model=settings.journal_max_events)
    except JournalError as exc:
        raise StartupError(str(exc)) from exc


async def serve(config: Config, host: str, port: int, out: TextIO = sys.stderr) -> int:
    """Run until SIGTERM/SIGINT, then stop every model and return 0. Raises StartupError before starting."""
    token_env = config.supervisor.token_env
    token = token_from_env(token_env)
    check_bind(host, token, token_env)
    key = gateway_key(config.supervisor.gateway) if config.supervisor.gateway else None
    # Each resource is released on every way out, a later one failing to open included; last opened, first
    # closed, so the journal is closed before the lock lets another supervisor open it.
    with contextlib.ExitStack() as release:
        sock = bind(host, port)
        release.callback(sock.close)
        lock = lock_state_dir(config.supervisor.state_dir)
        release.callback(os.close, lock)
        journal = open_journal(config.supervisor)
        release.callback(journal.close)
        return await _serve(config, journal, sock, token=token, key=key, out=out)


async def _serve(
    config: Config, journal: Journal, sock: socket.socket, *, token: str | None, key: str | None, out: TextIO
) -> int:
    supervisor = Fleet(config, store=journal)
    supervisor.add_observer(EventPrinter(out))
    supervisor.on_reload(ReloadPrinter(out))
    reloads = _Reloads(supervisor, out)
    app = create_app(supervisor, token=token)
    settings = config.supervisor.gateway
    gateway = None if settings is None else Gateway(supervisor, settings, app.state.metrics.registry, key)
    server = _OwnSignalsServer(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=_GRACEFUL_HTTP_SHUTDOWN,
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.signalled)  # waits for start(): the fleet's reload lock
    serving: asyncio.Task[None] | None = None
    collecting = asyncio.create_task(collect_periodically(), name="garbage-collection")
    try:
        await supervisor.start()
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"llm-supervisor: API and dashboard at http://{shown}:{port}/", flush=True)
        if gateway is not None and settings is not None:
            try:
                gw_host, gw_port = await gateway.start(settings.host, settings.port)
            except OSError as exc:
                raise StartupError(f"cannot serve the gateway on {settings.host}:{settings.port}: {exc}") from exc
            gw_shown = f"[{gw_host}]" if ":" in gw_host else gw_host
            print(f"llm-supervisor: OpenAI-compatible gateway at http://{gw_shown}:{gw_port}/v1", flush=True)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        print("llm-supervisor: stopping every model", file=out, flush=True)
    finally:
        # The gateway stops taking requests first; then the models, while the API still answers, so an
        # operator can watch them stop; on every path, a failed start or a crashed server included, so no
        # model outlives us.
        collecting.cancel()
        await reloads.close()
        if gateway is not None:
            await gateway.close()
        await supervisor.shutdown()
        server.should_exit = True
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        if serving is not None:
            await serving
    print("llm-supervisor: every model stopped; bye", file=out, flush=True)
    return 0
