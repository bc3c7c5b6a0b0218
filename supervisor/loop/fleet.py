"""The supervisor: one owner task per model, wired to runtimes, probes, logs, the journal and observers.

This is the facade the API, metrics and CLI use. Reads (`status`, `events`) are pure: they never probe or
move a counter (PRIOR_ART 6). Actions go through the model's owner task, which serializes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import httpx

from supervisor.api.facade import Observer
from supervisor.config.schema import Config, ModelConfig
from supervisor.config.settings import machine_settings
from supervisor.core.clock import Clock, RealClock
from supervisor.core.machine import Machine
from supervisor.core.machine_types import (
    Boot,
    Desired,
    Event,
    ProbeDone,
    Record,
    RestartRequested,
    ShutdownRequested,
    Snapshot,
    StartRequested,
    StopRequested,
)
from supervisor.core.views import ActionResult, EventKind, HealthCheckReport, ModelStatus, State, TimelineEvent
from supervisor.loop.owner import ModelOwner
from supervisor.loop.status_view import build_status
from supervisor.probe.http import ProbeResult, probe
from supervisor.runtime.base import Runtime, Stream
from supervisor.runtime.factory import build_runtime, instance_id, stop_leftover_run
from supervisor.store.journal import Journal, PersistedModel, RunRecord
from supervisor.store.logs import LogWriter
from supervisor.store.redact import Redactor, secrets_from_argv

log = logging.getLogger(__name__)

MEMORY_EVENTS_PER_MODEL = 2000
# How long past the longest stop_timeout a shutdown waits for SIGKILLed processes to disappear.
SHUTDOWN_GRACE = 10.0
DEFAULT_STOP_TIMEOUT = 30.0  # the contract's stop_timeout default
ProbeFn = Callable[[float], Awaitable[ProbeResult]]


class UnknownModel(KeyError):
    """No model with this id is configured."""

    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}"


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        journal: Journal | None = None,
        runtimes: dict[str, Runtime] | None = None,
        http: httpx.AsyncClient | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or RealClock()
        # Monotonic -> Unix, fixed once, so two reads of the same instant always agree.
        self._offset = self.clock.wall() - self.clock.now()
        self.journal = journal
        self._runtimes = runtimes or {}
        self._http = http  # tests may hand in one client (e.g. with a mock transport) for every model
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.instance = instance_id(config.supervisor.state_dir)
        self._tls: ssl.SSLContext | None = None
        self._rng = random.Random(seed)
        self._observers: list[Observer] = []
        self._owners: dict[str, ModelOwner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._configs: dict[str, ModelConfig] = {}
        self._writers: dict[str, LogWriter] = {}
        self._events: dict[str, deque[TimelineEvent]] = {}
        self._seq = journal.last_seq() if journal else 0
        self._closing = False
        self._journal_broken = False
        self._saved: dict[str, PersistedModel] = {}  # what the journal holds for each model, to skip rewrites

    # --- life -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Stop whatever a previous life left running, then start looking after every model."""
        persisted = self.journal.load_models() if self.journal else {}
        leftovers = await self._stop_leftovers(persisted)
        for model_id, cfg in self.config.models.items():
            self.add_model(model_id, cfg, persisted.get(model_id))
            if model_id in leftovers:
                detail = "stopped a run left behind by the previous supervisor"
                self._record(model_id, 0, Record(EventKind.STOPPED, State.STOPPED, detail))

    def add_model(self, model_id: str, cfg: ModelConfig, persisted: PersistedModel | None = None) -> None:
        """Start looking after one more model; it is watched like those configured at start (PRIOR_ART 10)."""
        if model_id in self._owners:
            raise ValueError(f"model {model_id!r} is already supervised")
        self._configs[model_id] = cfg
        self._events[model_id] = deque(maxlen=MEMORY_EVENTS_PER_MODEL)
        self._writers[model_id] = LogWriter(
            self.log_dir(),
            model_id,
            max_bytes=self.config.supervisor.log_max_bytes,
            backups=self.config.supervisor.log_backups,
            # The child inherits our environment too, so its secrets are masked as well as the model's own.
            redactor=Redactor({**os.environ, **cfg.env}, secrets_from_argv(cfg.args)),
        )
        root = cfg.probe_root_url
        owner = ModelOwner(
            model_id,
            Machine(machine_settings(cfg), random.Random(self._rng.random())),
            self._runtimes.get(model_id) or build_runtime(model_id, cfg, self.instance),
            self.clock,
            probe=None if root is None else self._prober(model_id, root),
            on_record=self._record,
            on_probe=self._probed,
            on_line=lambda run, stream, text: self._line(model_id, run, stream, text),
            snapshot=self._restore(persisted),
        )
        self._owners[model_id] = owner
        task = asyncio.get_running_loop().create_task(owner.serve(), name=f"model:{model_id}")
        task.add_done_callback(self._owner_ended)
        self._tasks[model_id] = task
        owner.post(Boot())

    def _owner_ended(self, task: asyncio.Task[None]) -> None:
        # serve() only ends by cancellation at shutdown; anything else leaves a model unsupervised.
        if not task.cancelled() and not self._closing:
            log.critical("%s ended: this model is no longer supervised", task.get_name(), exc_info=task.exception())

    async def shutdown(self) -> None:
        """Stop every model, whole process groups included, and return once nothing of them is left.

        Bounded: a process that outlives its SIGKILL (stuck in the kernel on a wedged GPU driver) is logged
        and left after the longest stop_timeout plus a grace; the journal keeps its record, so the next start
        of the supervisor stops it (PRIOR_ART 18: a shutdown must be able to finish).
        """
        if self._closing:
            return
        self._closing = True
        for owner in self._owners.values():
            owner.post(ShutdownRequested())
        limit = max((cfg.stop_timeout for cfg in self._configs.values()), default=0.0) + SHUTDOWN_GRACE
        try:
            async with asyncio.timeout(limit):
                await asyncio.gather(*(owner.wait_settled() for owner in self._owners.values()))
        except TimeoutError:
            stuck = [m for m, o in self._owners.items() if o.snapshot.live or o.snapshot.group_alive]
            log.error("shutdown: gave up after %.0f s waiting for %s to stop", limit, ", ".join(stuck))  # noqa: TRY400
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for writer in self._writers.values():
            writer.close()
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))

    # --- reads (pure) -----------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        return list(self._owners)

    def status(self, model_id: str) -> ModelStatus:
        owner = self._owner(model_id)
        return build_status(model_id, self._configs[model_id], owner, self.clock, self._offset)

    def statuses(self) -> list[ModelStatus]:
        return [self.status(model_id) for model_id in self._owners]

    def events(self, model_id: str, since: int = 0, limit: int | None = None) -> list[TimelineEvent]:
        """Events with seq > since, oldest first; with `limit`, only the newest `limit` of them."""
        self._owner(model_id)
        if self.journal is not None:
            return self.journal.events(model_id, since, newest=limit)
        found = [e for e in self._events[model_id] if e.seq > since]
        return found[-limit:] if limit else found

    def log_dir(self) -> Path:
        return self.config.supervisor.state_dir / "logs"

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    # --- actions (through the owner) ---------------------------------------------------------------

    async def start_model(self, model_id: str) -> ActionResult:
        return await self._act(model_id, StartRequested())

    async def stop_model(self, model_id: str, force: bool = False) -> ActionResult:
        return await self._act(model_id, StopRequested(force))

    async def restart_model(self, model_id: str) -> ActionResult:
        return await self._act(model_id, RestartRequested())

    async def health_check(self, model_id: str) -> HealthCheckReport:
        """Run one probe now, outside the schedule; its result is reported, never counted."""
        owner = self._owner(model_id)
        root = self._configs[model_id].probe_root_url
        if root is None:
            ok, message = owner.snapshot.live, None if owner.snapshot.live else "process not running"
        else:
            result = await self._prober(model_id, root)(self._configs[model_id].health_check_timeout)
            self._probed(model_id, result)
            ok, message = result.ok, result.message
        await owner.request(ProbeDone(owner.snapshot.run, ok, message, manual=True))
        status = self.status(model_id)
        return HealthCheckReport(
            model_id,
            ok,
            message,
            status.consecutive_health_failures,
            status.last_health_check_time,
            status.has_cuda_oom,
        )

    async def _act(self, model_id: str, event: Event) -> ActionResult:
        owner = self._owner(model_id)
        if self._closing:
            return ActionResult(False, "the supervisor is shutting down", self.status(model_id))
        reply = await owner.request(event)
        return ActionResult(reply.accepted, reply.message, self.status(model_id))

    # --- plumbing ---------------------------------------------------------------------------------

    def _owner(self, model_id: str) -> ModelOwner:
        try:
            return self._owners[model_id]
        except KeyError:
            raise UnknownModel(model_id) from None

    def _prober(self, model_id: str, root: str) -> ProbeFn:
        client = self._http or self._client(model_id)

        async def run(timeout: float) -> ProbeResult:
            return await probe(client, root, timeout)

        return run

    def _client(self, model_id: str) -> httpx.AsyncClient:
        """One small client per model: its one kept-alive connection is reused by every probe, and no pool is
        shared (httpx's pool scans all its connections per request; shared by 100 models it costs 3x the CPU).
        No proxies: probes go to the model's own server."""
        if model_id not in self._clients:
            limits = httpx.Limits(max_connections=2, max_keepalive_connections=1)
            if self._tls is None:  # one TLS context for all clients: building one per client costs ~0.6 MiB
                self._tls = ssl.create_default_context()
            self._clients[model_id] = httpx.AsyncClient(limits=limits, trust_env=False, verify=self._tls)
        return self._clients[model_id]

    def _record(self, model_id: str, run: int, record: Record) -> None:
        self._seq += 1
        event = TimelineEvent(
            self._seq, self.clock.wall(), model_id, record.kind, record.state, record.detail, record.reason
        )
        if self.journal is None:  # with a journal, the timeline is read from there
            self._events[model_id].append(event)
        self._mark_log(model_id, run, record)
        self._journal_write(model_id, event)
        self._notify(lambda o: o.on_event(event))

    def _journal_write(self, model_id: str, event: TimelineEvent) -> None:
        """Persist an event and the model's state; a broken journal (disk full) never stops supervision."""
        if self.journal is None:
            return
        try:
            self.journal.append(event)
            persisted = self._persisted(model_id)
            if self._saved.get(model_id) != persisted:  # most events (probe failures) change no saved state
                self.journal.save_model(model_id, persisted)
                self._saved[model_id] = persisted
        except sqlite3.Error as exc:
            if not self._journal_broken:
                log.error("journal write failed (%s): supervising on; state will not survive a restart", exc)  # noqa: TRY400
            self._journal_broken = True
        else:
            if self._journal_broken:
                log.warning("journal writes work again")
            self._journal_broken = False

    def _mark_log(self, model_id: str, run: int, record: Record) -> None:
        """Put run boundaries into the model's log, so a reader can tell runs apart."""
        writer = self._writers[model_id]
        if record.kind is EventKind.SPAWNED:
            owner = self._owners[model_id]
            writer.start_run(run, owner.run.handle.pid if owner.run else None)
        elif record.kind in (EventKind.EXITED, EventKind.KILLED, EventKind.FAILED):
            writer.note(f"run {run}: {record.kind}" + (f" ({record.detail})" if record.detail else ""))

    def _probed(self, model_id: str, result: ProbeResult) -> None:
        self._notify(lambda o: o.on_probe(model_id, result.ok, result.duration))

    def _notify(self, call: Callable[[Observer], None]) -> None:
        for observer in self._observers:
            try:
                call(observer)
            except Exception:  # an observer's bug must never stop supervision
                log.exception("observer %r failed", observer)

    def _line(self, model_id: str, run: int, stream: Stream, text: str) -> None:
        self._writers[model_id].write(stream, text)

    def _persisted(self, model_id: str) -> PersistedModel:
        owner = self._owners[model_id]
        snap = owner.snapshot
        offset = self._offset
        run = None
        if owner.run is not None and (snap.live or snap.group_alive):
            run = RunRecord(
                owner.run.handle.ident,
                owner.run.number,
                _wall(snap.spawned_at, offset),
                self._configs[model_id].runtime,
            )
        return PersistedModel(
            desired=snap.desired.value,
            restart_times=tuple(t + offset for t in snap.restart_times),
            restart_count=snap.restart_count,
            attempt=snap.attempt,
            failed=snap.state is State.FAILED,
            run=run,
        )

    def _restore(self, persisted: PersistedModel | None) -> Snapshot:
        if persisted is None:
            return Snapshot()
        offset = self._offset
        return replace(
            Snapshot(),
            state=State.FAILED if persisted.failed else State.STOPPED,
            desired=Desired(persisted.desired),
            restart_times=tuple(t - offset for t in persisted.restart_times),
            restart_count=persisted.restart_count,
            attempt=persisted.attempt,
        )

    async def _stop_leftovers(self, persisted: dict[str, PersistedModel]) -> set[str]:
        """Stop, never adopt, runs of the previous life: their output pipes died with it (docs/operations.md).

        Models no longer in the config are included: their processes would otherwise be orphans on the GPU.
        """
        models: dict[str, RunRecord | None] = {m: state.run for m, state in persisted.items() if state.run is not None}
        models.update({m: models.get(m) for m, cfg in self.config.models.items() if cfg.runtime == "docker"})
        results = await asyncio.gather(
            *(
                stop_leftover_run(
                    model_id, run, self.config.models.get(model_id), self._stop_timeout(model_id), self.instance
                )
                for model_id, run in models.items()
            ),
            return_exceptions=True,  # one model's trouble (Docker unreachable) must not stop the others
        )
        stopped = set()
        for model_id, result in zip(models, results, strict=True):
            if isinstance(result, BaseException):
                log.error("%s: could not clean up after the previous supervisor: %s", model_id, result)
            elif result:
                stopped.add(model_id)
        for model_id in stopped:
            log.warning("%s: stopped a run left behind by the previous supervisor", model_id)
        return stopped

    def _stop_timeout(self, model_id: str) -> float:
        cfg = self.config.models.get(model_id)
        return cfg.stop_timeout if cfg is not None else DEFAULT_STOP_TIMEOUT  # a model no longer configured


def _wall(mono: float | None, offset: float) -> float:
    return 0.0 if mono is None else mono + offset
