"""The gateway as a service of the daemon: its HTTP server, the request forwarder, the served names it
learns as replicas become healthy, and the stall watch that turns requests without progress into events.

The gateway never decides a restart. What it sees (no output byte for `progress_timeout` while requests
are in flight) goes to the replica's owner as a `Stalled` event, and the machine decides, as for a probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from supervisor.config.reload_plan import ReloadPlan
from supervisor.config.schema import GatewaySettings
from supervisor.core.machine_types import Stalled
from supervisor.core.states import EventKind, State
from supervisor.core.views import TimelineEvent
from supervisor.gateway.forward import Forwarder
from supervisor.gateway.http11 import HttpServer
from supervisor.gateway.metrics import GatewayMetrics
from supervisor.gateway.names import ServedNames
from supervisor.loop.fleet import Fleet
from supervisor.loop.model import Replica

log = logging.getLogger(__name__)

STALL_CHECK_MAX_INTERVAL = 1.0


class Gateway:
    def __init__(
        self, fleet: Fleet, settings: GatewaySettings, registry: CollectorRegistry, api_key: str | None
    ) -> None:
        self._fleet = fleet
        self._names = ServedNames()
        self.forwarder = Forwarder(
            fleet.models,
            settings=settings,
            metrics=GatewayMetrics(registry),
            names=self._names,
            api_key=api_key,
            on_stall=self._report_stall,
        )
        self._server = HttpServer(self.forwarder.handle)
        self._tasks: set[asyncio.Task[object]] = set()
        self._stalls_reported: dict[str, int] = {}  # unit -> the run already reported as stalled
        self._stall_watch: asyncio.Task[object] | None = None
        fleet.add_observer(self)
        fleet.on_reload(self._models_changed)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        address = await self._server.start(host, port)
        self._watch_stalls()
        return address

    def _watch_stalls(self) -> None:
        if self._stall_watch is None or self._stall_watch.done():
            self._stall_watch = self._spawn(self._watch_progress(), "gateway:stall-watch")

    async def close(self) -> None:
        await self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.forwarder.close()

    # --- what the fleet tells us (the Observer seam) -----------------------------------------------------

    def on_event(self, event: TimelineEvent) -> None:
        # A replica that just became healthy says which names its model answers to.
        if event.kind is EventKind.HEALTHY and event.model_id in self._fleet.models():
            model = self._fleet.models()[event.model_id]
            if event.replica < len(model.replicas) and model.cfg.probe_root_url is not None:
                pool = self.forwarder.pool(model.replicas[event.replica])
                self._spawn(self._names.learn(model.id, pool), f"gateway:names:{model.id}")

    def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
        pass

    def _models_changed(self, plan: ReloadPlan) -> None:
        # Models are read live from the fleet, so added ones are routed to and removed ones answer 404; what
        # the gateway keeps of its own is the names a server answered to, and whether stalls are watched.
        for model_id in (*plan.removed, *plan.restarted):
            self._names.forget(model_id)
        if self._stall_watch is not None:
            self._watch_stalls()

    # --- the stall watch -------------------------------------------------------------------------------

    async def _watch_progress(self) -> None:
        limits = [m.cfg.progress_timeout for m in self._fleet.models().values() if m.cfg.progress_timeout]
        if not limits:
            return
        interval = min(STALL_CHECK_MAX_INTERVAL, min(limits) / 4)
        while True:
            await asyncio.sleep(interval)
            self._check_progress(time.monotonic())

    def _check_progress(self, now: float) -> None:
        for model in self._fleet.models().values():
            limit = model.cfg.progress_timeout
            if limit is None:
                continue
            for replica in model.replicas:
                if replica.in_flight > 0 and now - replica.progress_at > limit:
                    self._report_stall(
                        replica, f"no output for {limit:g}s from {replica.in_flight} request(s) in flight"
                    )

    def _report_stall(self, replica: Replica, detail: str) -> None:
        """Tell the replica's owner once per run; the machine decides what a stall means in its state."""
        snap = replica.owner.snapshot
        unit = replica.owner.model_id
        if snap.state is State.HEALTHY and self._stalls_reported.get(unit) != snap.run:
            self._stalls_reported[unit] = snap.run
            log.warning("%s: %s", unit, detail)
            replica.owner.post(Stalled(snap.run, detail))

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[object]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
