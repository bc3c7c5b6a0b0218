"""The fleet's reload: apply a re-read config file without touching the models whose settings are unchanged.

A mixin of `supervisor.loop.fleet.Fleet`, kept apart because it is a job of its own: the plan comes from
`supervisor.config.reload_plan`, the order of a changed model's replacement from `supervisor.loop.rollover`;
this part removes, replaces and adds replicas with the fleet's own tools (`_replica`, `add_model`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from supervisor.config.reload_plan import ReloadPlan, ReloadRefused, applied_config, plan_reload
from supervisor.config.schema import Config, ConfigError, ModelConfig, load_config
from supervisor.core.machine_types import ShutdownRequested, Snapshot
from supervisor.loop.model import Replica, SupervisedModel
from supervisor.loop.probes import ProbeClients
from supervisor.loop.recorder import Recorder
from supervisor.loop.rollover import replace_all, roll
from supervisor.store.base import PersistedModel

log = logging.getLogger(__name__)

# How long past a replica's stop_timeout a reload waits for its SIGKILLed processes to disappear.
STOP_GRACE = 10.0


class Reloading:
    """What `Fleet` keeps and does that a reload uses; `Fleet.__init__` sets every attribute."""

    config: Config
    recorder: Recorder
    _models: dict[str, SupervisedModel]
    _tasks: dict[str, list[asyncio.Task[None]]]
    _probes: ProbeClients
    _rollovers: dict[str, asyncio.Task[None]]
    _reload_lock: asyncio.Lock
    _reload_listeners: list[Callable[[ReloadPlan], None]]
    _closing: bool

    def add_model(self, model_id: str, cfg: ModelConfig, persisted: dict[str, PersistedModel] | None = None) -> None:
        raise NotImplementedError

    def _replica(self, model_id: str, index: int, cfg: ModelConfig, snapshot: Snapshot) -> Replica:
        raise NotImplementedError

    def on_reload(self, listener: Callable[[ReloadPlan], None]) -> None:
        """Call `listener` with the plan of every reload, once its models were added and removed."""
        self._reload_listeners.append(listener)

    async def reload(self, wanted: Config | None = None) -> ReloadPlan:
        """Apply the config file again (or `wanted`): see config.reload_plan for what changes.

        Unchanged models are not touched; removed ones stop; changed ones are replaced (one replica at a
        time, in the background, when they have several); new ones start. Returns once the removed and the
        replaced runs have stopped and the new ones are booting. Raises ConfigError when the file does not
        validate (nothing changes) and ReloadRefused when there is no file to read or the fleet is closing.
        """
        if wanted is None:
            if self.config.path is None:
                raise ReloadRefused("this supervisor was not started from a config file: there is nothing to re-read")
            try:
                wanted = load_config(self.config.path)
            except ConfigError as exc:
                log.error("reload refused, nothing changed: %s", exc)  # noqa: TRY400 (the problems, not a traceback)
                raise
        async with self._reload_lock:
            if self._closing:
                raise ReloadRefused("the supervisor is shutting down")
            plan = plan_reload(self.config, wanted)
            self.config = applied_config(self.config, wanted)
            for key in plan.needs_restart:
                log.warning("reload: %s changed; it applies only at the next start of the supervisor", key)
            await asyncio.gather(*(self._remove_model(model_id) for model_id in plan.removed))
            await asyncio.gather(*(self._reconfigure(model_id, wanted.models[model_id]) for model_id in plan.restarted))
            persisted = self.recorder.store.load_models()
            for model_id in plan.added:
                self.add_model(model_id, wanted.models[model_id], persisted)
        for listener in self._reload_listeners:
            listener(plan)
        return plan

    async def _quiesce(self, model_id: str) -> SupervisedModel:
        """End what is under way on the model before a reload changes it: a rolling restart, and the rolling
        replacement an earlier reload started (a replica it was retiring is retired again, harmlessly)."""
        rollover = self._rollovers.pop(model_id, None)
        if rollover is not None:
            rollover.cancel()
            await asyncio.gather(rollover, return_exceptions=True)
        model = self._models[model_id]
        await model.close()
        return model

    async def _remove_model(self, model_id: str) -> None:
        model = await self._quiesce(model_id)
        await asyncio.gather(*(self._retire(replica) for replica in model.replicas))
        del self._models[model_id]

    async def _reconfigure(self, model_id: str, cfg: ModelConfig) -> None:
        """Replace the model's replicas with ones built from `cfg`: all at once, or rolling when it has several.

        The desired state carries over (a model an operator stopped stays stopped); the restart budget
        starts afresh, as at an operator's start, since the settings it counted against are gone."""
        model = await self._quiesce(model_id)
        desired = {r.index: r.owner.snapshot.desired for r in model.replicas}

        def build(index: int, replica_cfg: ModelConfig) -> Replica:
            fresh = replace(Snapshot(), desired=desired.get(index, model.replicas[0].owner.snapshot.desired))
            return self._replica(model_id, index, replica_cfg, fresh)

        if len(model.replicas) == 1:
            await replace_all(model, cfg, self._retire, build)
            return
        drain = self.config.supervisor.gateway.drain_timeout if self.config.supervisor.gateway else 0.0
        task = asyncio.get_running_loop().create_task(
            roll(model, cfg, self._retire, build, drain), name=f"reload-rollover:{model_id}"
        )
        self._rollovers[model_id] = task
        task.add_done_callback(lambda done: self._rollover_done(model_id, done))

    def _rollover_done(self, model_id: str, task: asyncio.Task[None]) -> None:
        if self._rollovers.get(model_id) is task:
            del self._rollovers[model_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed: %r", task.get_name(), exc, exc_info=exc)

    async def _retire(self, replica: Replica) -> None:
        """Stop one replica's run and its owner for good: a reload removed or replaced it. The desired state
        is left as it was (this is no operator's stop), so a model added back later starts as before."""
        owner = replica.owner
        owner.post(ShutdownRequested())
        limit = replica.cfg.stop_timeout + STOP_GRACE
        try:
            async with asyncio.timeout(limit):
                await owner.wait_settled()
        except TimeoutError:
            log.error("reload: gave up after %.0f s waiting for %s to stop", limit, owner.model_id)  # noqa: TRY400
        tasks = self._tasks.pop(owner.model_id, [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.recorder.remove_unit(owner.model_id)
        await self._probes.forget(owner.model_id)
