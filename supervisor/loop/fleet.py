"""The fleet: every supervised model, each looked after by its own owner task.

This is what the API, metrics and CLI use. Reads (`status`, `events`) are pure: they never probe or move a
counter, so a dashboard's polling cannot change when restarts fire. Actions go through the model's owner
task, which serializes them. Wiring lives in small neighbours: `runtimes` (what runs a model), `probes`,
`recorder` (timeline, store, logs, observers) and `leftovers` (what a previous life left running).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from supervisor.config.reload_plan import ReloadPlan
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
from supervisor.core.states import EventKind, ExitStatus, State
from supervisor.core.views import ActionResult, HealthCheckReport, ModelStatus, TimelineEvent
from supervisor.loop.failures import LastFailures
from supervisor.loop.fleet_reload import Reloading
from supervisor.loop.inference import InferenceProber
from supervisor.loop.leftovers import stop_leftovers
from supervisor.loop.model import SETTLED, Replica, SupervisedModel, unit_name
from supervisor.loop.observer import Observer
from supervisor.loop.owner import ModelOwner
from supervisor.loop.persistence import restored_snapshot
from supervisor.loop.probes import ProbeClients
from supervisor.loop.recorder import Recorder
from supervisor.loop.runtimes import build_runtime, instance_id
from supervisor.loop.status_view import model_status
from supervisor.runtime.base import Runtime
from supervisor.store.base import PersistedModel, Store
from supervisor.store.logs import LogWriter
from supervisor.store.memory import MemoryStore
from supervisor.store.redact import Redactor, secrets_from_argv

log = logging.getLogger(__name__)

# How long past the longest stop_timeout a shutdown waits for SIGKILLed processes to disappear.
SHUTDOWN_GRACE = 10.0
# How long a restart's answer waits for the new run: a server that stops in seconds answers with the new
# run's pid; one that takes its whole stop_timeout is answered while stopping, well within an HTTP client's
# timeout (the CLI's is 30 s).
RESTART_ANSWER_WAIT = 10.0


class UnknownModel(KeyError):
    """No model with this id is configured."""

    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}"


class UnknownReplica(UnknownModel):
    """The model has no replica with this index."""

    def __str__(self) -> str:
        return f"model {self.args[0]!r} has no replica {self.args[1]}"


class Fleet(Reloading):
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        runtimes: dict[str, Runtime] | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or RealClock()
        # Monotonic -> Unix, fixed once, so two reads of the same instant always agree.
        self._offset = self.clock.wall() - self.clock.now()
        self.recorder = Recorder(store or MemoryStore(), self.clock, self._offset)
        self.instance = instance_id(config.supervisor.state_dir)
        self._runtimes = runtimes or {}  # tests hand in fakes by model id
        self._probes = ProbeClients()
        self._rng = random.Random(seed)
        self._models: dict[str, SupervisedModel] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}  # by unit: its owner and inference probe
        self._rollovers: dict[str, asyncio.Task[None]] = {}  # by model: the rolling replacement a reload started
        self._reload_lock = asyncio.Lock()  # one reload at a time, and none before start() is done
        self._reload_listeners: list[Callable[[ReloadPlan], None]] = []
        self._closing = False
        self.recorder.add_observer(_Changes(self._models))
        self._failures = LastFailures(self._last_exit)
        self.recorder.add_observer(self._failures)

    # --- life -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Stop whatever a previous life left running, then start looking after every model."""
        async with self._reload_lock:
            await self._start()

    async def _start(self) -> None:
        persisted = self.recorder.store.load_models()
        leftovers = await stop_leftovers(self.config, persisted, self.instance)
        for model_id, cfg in self.config.models.items():
            self.add_model(model_id, cfg, persisted)
        for unit in leftovers & set(self._units()):
            detail = "stopped a run left behind by the previous supervisor"
            owner = self._units()[unit]
            self.recorder.record(unit, Record(EventKind.STOPPED, State.STOPPED, detail), owner.snapshot, None)

    def add_model(self, model_id: str, cfg: ModelConfig, persisted: dict[str, PersistedModel] | None = None) -> None:
        """Start looking after one more model, each replica its own run; watched like those configured at start."""
        if model_id in self._models:
            raise ValueError(f"model {model_id!r} is already supervised")
        saved = persisted or {}
        snapshots = [restored_snapshot(saved.get(unit_name(model_id, i)), self._offset) for i in range(cfg.replicas)]
        replicas = [self._replica(model_id, i, cfg.replica(i), snapshots[i]) for i in range(cfg.replicas)]
        self._models[model_id] = SupervisedModel(model_id, cfg, replicas)
        if any(snapshot.desired is Desired.STOPPED for snapshot in snapshots):
            # The journal keeps an operator's stop across lives; say so, or a model that "did not come back"
            # after a supervisor restart looks like a bug.
            log.warning(
                "%s: stopped by an operator before this supervisor started; it stays stopped "
                "(start it with: llm-supervisor start %s)",
                model_id,
                model_id,
            )

    def _replica(self, model_id: str, index: int, cfg: ModelConfig, snapshot: Snapshot) -> Replica:
        """Build one replica's owner (and inference probe), and boot it."""
        unit = unit_name(model_id, index)
        writer = LogWriter(
            self.log_dir(),
            unit,
            max_bytes=self.config.supervisor.log_max_bytes,
            backups=self.config.supervisor.log_backups,
            # The child inherits our environment too, so its secrets are masked as well as the model's own.
            redactor=Redactor({**os.environ, **cfg.env}, secrets_from_argv(cfg.args)),
        )
        self.recorder.add_unit(unit, writer, cfg.runtime)
        root = cfg.probe_root_url
        owner = ModelOwner(
            unit,
            Machine(machine_settings(cfg), random.Random(self._rng.random())),
            self._runtimes.get(unit) or build_runtime(unit, cfg, self.instance),
            self.clock,
            probe=None if root is None else self._probes.prober(unit, root),
            reports=self.recorder,
            snapshot=snapshot,
        )
        task = asyncio.get_running_loop().create_task(owner.serve(), name=f"model:{unit}")
        task.add_done_callback(self._owner_ended)
        tasks = self._tasks.setdefault(unit, [])
        tasks.append(task)
        if cfg.inference_probe is not None and root is not None:
            prober = InferenceProber(owner, root, cfg.inference_probe, self.clock)
            tasks.append(asyncio.get_running_loop().create_task(prober.run(), name=f"inference-probe:{unit}"))
        owner.post(Boot())
        return Replica(index, cfg, owner)

    def _units(self) -> dict[str, ModelOwner]:
        return {unit_name(m.id, r.index): r.owner for m in self._models.values() for r in m.replicas}

    def _owner_ended(self, task: asyncio.Task[None]) -> None:
        # serve() only ends by cancellation at shutdown; anything else leaves a model unsupervised.
        if not task.cancelled() and not self._closing:
            log.critical("%s ended: this model is no longer supervised", task.get_name(), exc_info=task.exception())

    async def shutdown(self) -> None:
        """Stop every model, whole process groups included, and return once nothing of them is left.

        Bounded, so a shutdown can always finish: a process that outlives its SIGKILL (stuck in the kernel on
        a wedged GPU driver) is logged and left after the longest stop_timeout plus a grace; the store keeps
        its record, so the next start of the supervisor stops it.
        """
        if self._closing:
            return
        self._closing = True
        rollovers = list(self._rollovers.values())
        for rollover in rollovers:
            rollover.cancel()
        await asyncio.gather(*rollovers, return_exceptions=True)
        for model in self._models.values():
            await model.close()
        units = self._units()
        for owner in units.values():
            owner.post(ShutdownRequested())
        limit = max((m.cfg.stop_timeout for m in self._models.values()), default=0.0) + SHUTDOWN_GRACE
        try:
            async with asyncio.timeout(limit):
                await asyncio.gather(*(owner.wait_settled() for owner in units.values()))
        except TimeoutError:
            stuck = [u for u, o in units.items() if o.snapshot.live or o.snapshot.group_alive]
            log.error("shutdown: gave up after %.0f s waiting for %s to stop", limit, ", ".join(stuck))  # noqa: TRY400
        tasks = [task for unit_tasks in self._tasks.values() for task in unit_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.recorder.close()
        await self._probes.aclose()

    # --- reads (pure) -----------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        return list(self._models)

    def models(self) -> Mapping[str, SupervisedModel]:
        """Every supervised model by id (a live view: models added later appear in it)."""
        return self._models

    def model(self, model_id: str) -> SupervisedModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise UnknownModel(model_id) from None

    def status(self, model_id: str) -> ModelStatus:
        model = self.model(model_id)
        status = model_status(model_id, model.cfg, model.replicas, self.clock, self._offset)
        return replace(status, last_failure=self._failures.get(model_id))

    def statuses(self) -> list[ModelStatus]:
        return [self.status(model_id) for model_id in self._models]

    def events(self, model_id: str, since: int = 0, limit: int | None = None) -> list[TimelineEvent]:
        """Events with seq > since, oldest first; with `limit`, only the newest `limit` of them."""
        self.model(model_id)
        return self.recorder.events(model_id, since, limit)

    def log_dir(self) -> Path:
        return self.config.supervisor.state_dir / "logs"

    @property
    def closing(self) -> bool:
        """Shutting down: no action may start a run any more."""
        return self._closing

    def add_observer(self, observer: Observer) -> None:
        self.recorder.add_observer(observer)

    # --- actions (through the owner) ---------------------------------------------------------------

    async def start_model(self, model_id: str) -> ActionResult:
        return await self._act(model_id, StartRequested)

    async def stop_model(self, model_id: str, force: bool = False) -> ActionResult:
        return await self._act(model_id, lambda: StopRequested(force))

    async def restart_model(self, model_id: str, replica: int | None = None, rolling: bool = False) -> ActionResult:
        """Restart every replica at once, one replica (`replica`), or all one at a time out of routing (`rolling`)."""
        model = self.model(model_id)
        if replica is not None and not 0 <= replica < len(model.replicas):
            raise UnknownReplica(model_id, replica)
        if self._closing:
            return ActionResult(False, "the supervisor is shutting down", self.status(model_id))
        if rolling:
            drain = self.config.supervisor.gateway.drain_timeout if self.config.supervisor.gateway else 0.0
            reply = model.start_rolling_restart(drain)
        else:
            targets = model.replicas if replica is None else [model.replicas[replica]]
            runs = {r.index: r.owner.snapshot.run for r in targets}
            if replica is not None:
                reply = await targets[0].owner.request(RestartRequested())
            else:
                reply = await model.request_all(RestartRequested)
            if reply.accepted:
                await _until_new_runs(model, targets, runs)
        return ActionResult(reply.accepted, reply.message, self.status(model_id))

    async def health_check(self, model_id: str) -> HealthCheckReport:
        """Probe every replica now, outside the schedule; the results are reported, never counted."""
        results = [await self._check_replica(replica) for replica in self.model(model_id).replicas]
        ok = any(good for good, _ in results)
        message = None if ok else next(message for _, message in results)
        status = self.status(model_id)
        return HealthCheckReport(
            model_id,
            ok,
            message,
            status.consecutive_health_failures,
            status.last_health_check_time,
            status.has_cuda_oom,
        )

    async def _check_replica(self, replica: Replica) -> tuple[bool, str | None]:
        owner = replica.owner
        root = replica.cfg.probe_root_url
        if root is None:
            ok, message = owner.snapshot.live, None if owner.snapshot.live else "process not running"
        else:
            result = await self._probes.prober(owner.model_id, root)(replica.cfg.health_check_timeout)
            self.recorder.probed(owner.model_id, result)
            ok, message = result.ok, result.message
        await owner.request(ProbeDone(owner.snapshot.run, ok, message, manual=True))
        return ok, message

    async def _act(self, model_id: str, make: Callable[[], Event]) -> ActionResult:
        model = self.model(model_id)
        if self._closing:
            return ActionResult(False, "the supervisor is shutting down", self.status(model_id))
        before = _fingerprint(model)
        reply = await model.request_all(make)
        return ActionResult(reply.accepted, reply.message, self.status(model_id), _fingerprint(model) != before)

    def _last_exit(self, model_id: str, replica: int) -> ExitStatus | None:
        model = self._models.get(model_id)
        if model is None or replica >= len(model.replicas):
            return None
        return model.replicas[replica].owner.snapshot.last_exit


def _fingerprint(model: SupervisedModel) -> list[tuple[Desired, State, int]]:
    """What an action can change: a replica's desired state, state and run. Equal before and after: a no-op."""
    return [(r.owner.snapshot.desired, r.owner.snapshot.state, r.owner.snapshot.run) for r in model.replicas]


async def _until_new_runs(model: SupervisedModel, replicas: list[Replica], runs: dict[int, int]) -> None:
    """Wait until each restarted replica's new run is spawned (or could not be), so the restart's answer shows
    the new run's pid and uptime rather than the old one's; for at most RESTART_ANSWER_WAIT."""

    def spawned(replica: Replica) -> bool:
        snap = replica.owner.snapshot
        return snap.run > runs[replica.index] and (snap.live or snap.state in SETTLED or snap.state is State.BACKOFF)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESTART_ANSWER_WAIT
    while not all(spawned(r) for r in replicas) and (remaining := deadline - loop.time()) > 0:
        await model.wait_changed(remaining)


class _Changes:
    """Tells a model that one of its replicas changed, so requests held for it look again."""

    def __init__(self, models: dict[str, SupervisedModel]) -> None:
        self._models = models

    def on_event(self, event: TimelineEvent) -> None:
        model = self._models.get(event.model_id)
        if model is not None:
            model.notify_changed()

    def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
        pass
