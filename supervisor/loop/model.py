"""One supervised model: its replicas, and what is done to all of them at once.

Each replica is a run of its own with its own owner task, restarts and backoff; a model of one replica is
exactly the model the supervisor always had. The gateway reads which replicas are ready and counts what it
has in flight on each; it waits for a change of state on `wait_changed`, never by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor.config.schema import ModelConfig
from supervisor.core.machine_types import Event, Reply, RestartRequested
from supervisor.core.states import State
from supervisor.loop.owner import ModelOwner

# A replica whose state is one of these will not come back without an operator: nothing to wait for.
SETTLED = frozenset({State.STOPPED, State.FAILED})


def unit_name(model_id: str, index: int) -> str:
    """The name a replica's log, journal row and owner task go by: the model id for the first replica, so a
    model of one replica keeps the names it always had; '#' cannot occur in a model id."""
    return model_id if index == 0 else f"{model_id}#{index}"


def parse_unit(unit: str) -> tuple[str, int]:
    model_id, _, index = unit.partition("#")
    return model_id, int(index) if index.isdigit() else 0


@dataclass
class Replica:
    index: int
    cfg: ModelConfig  # this replica's own settings, its port filled in
    owner: ModelOwner
    draining: bool = False  # out of routing while a rolling restart lets it finish what it has
    in_flight: int = 0  # requests the gateway has on it
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # When a request to it last made progress (an output byte), or began while none was in flight
    # (monotonic); the gateway's stall watch compares it with progress_timeout.
    progress_at: float = 0.0

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def ready(self) -> bool:
        """Serving and in routing: the gateway may send it a request."""
        snap = self.owner.snapshot
        return snap.state is State.HEALTHY and snap.live and not self.draining

    def started_request(self, now: float) -> None:
        if self.in_flight == 0:
            self.progress_at = now
        self.in_flight += 1
        self.idle.clear()

    def progressed(self, now: float) -> None:
        self.progress_at = now

    def finished_request(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


class SupervisedModel:
    def __init__(self, model_id: str, cfg: ModelConfig, replicas: list[Replica]) -> None:
        self.id = model_id
        self.cfg = cfg
        self.replicas = replicas
        self._changed = asyncio.Event()
        self._rolling: asyncio.Task[None] | None = None

    # --- readiness, for the gateway ------------------------------------------------------------------

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready]

    def may_become_ready(self) -> bool:
        """Whether waiting makes sense: some replica is starting, serving or scheduled to restart."""
        return any(r.owner.snapshot.state not in SETTLED for r in self.replicas)

    def notify_changed(self) -> None:
        """A replica's state or routing changed: wake whoever waits for one to become ready."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> None:
        """Return at the next change, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0)):
                await self._changed.wait()

    # --- actions -------------------------------------------------------------------------------------

    async def request_all(self, make: Callable[[], Event]) -> Reply:
        """Deliver one request to every replica's owner, in order; the model's answer sums theirs."""
        replies = [await replica.owner.request(make()) for replica in self.replicas]
        if len(replies) == 1:
            return replies[0]
        accepted = any(reply.accepted for reply in replies)
        message = "; ".join(
            f"replica {r.index}: {reply.message}" for r, reply in zip(self.replicas, replies, strict=True)
        )
        return Reply(accepted, message)

    @property
    def rolling(self) -> bool:
        return self._rolling is not None and not self._rolling.done()

    def start_rolling_restart(self, drain_timeout: float) -> Reply:
        """Restart the replicas one at a time, each out of routing while it drains and restarts."""
        if self.rolling:
            return Reply(False, "a rolling restart is already under way")
        self._rolling = asyncio.get_running_loop().create_task(
            self._roll(drain_timeout), name=f"rolling-restart:{self.id}"
        )
        return Reply(True, f"rolling restart of {len(self.replicas)} replica(s) started")

    async def _roll(self, drain_timeout: float) -> None:
        for replica in self.replicas:
            replica.draining = True
            self.notify_changed()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(drain_timeout):
                        await replica.idle.wait()
                reply = await replica.owner.request(RestartRequested())
                if reply.accepted:
                    await self._until_settled_or_healthy(replica)
            finally:
                replica.draining = False
                self.notify_changed()

    async def _until_settled_or_healthy(self, replica: Replica) -> None:
        """Wait for the restarted replica to serve again, or to end where only an operator can help."""
        limit = replica.cfg.stop_timeout + replica.cfg.startup_timeout
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            state = replica.owner.snapshot.state
            if state is State.HEALTHY or state in SETTLED:
                return
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await self.wait_changed(remaining)

    async def close(self) -> None:
        if self._rolling is not None:
            self._rolling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rolling
