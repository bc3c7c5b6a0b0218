"""A reload's restart of a model whose settings changed: its replicas are replaced by new ones built from the
new settings, all at once for a model of one replica, or one at a time (each out of routing while it drains,
the next only once its replacement serves) when the model has several, so the gateway always has one to use.

The fleet says how to stop a replica for good (`retire`) and how to build one (`build`); this module only
orders the steps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from supervisor.config.schema import ModelConfig
from supervisor.core.machine_types import Desired
from supervisor.core.states import State
from supervisor.loop.model import SETTLED, Replica, SupervisedModel

Retire = Callable[[Replica], Awaitable[None]]
Build = Callable[[int, ModelConfig], Replica]


async def replace_all(model: SupervisedModel, cfg: ModelConfig, retire: Retire, build: Build) -> None:
    """Stop every replica, then start the new ones (a model of one replica has nothing to keep serving)."""
    old = list(model.replicas)
    await asyncio.gather(*(retire(replica) for replica in old))
    model.cfg = cfg
    model.replicas[:] = [build(i, cfg.replica(i)) for i in range(cfg.replicas)]
    model.notify_changed()


async def roll(model: SupervisedModel, cfg: ModelConfig, retire: Retire, build: Build, drain_timeout: float) -> None:
    """Replace replica after replica; a replica the new settings no longer have is only stopped."""
    count = max(len(model.replicas), cfg.replicas)
    model.cfg = cfg
    for index in range(count):
        old = model.replicas[index] if index < len(model.replicas) else None
        if old is not None:
            old.draining = True
            model.notify_changed()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await old.idle.wait()
            await retire(old)
        if index < cfg.replicas:
            new = build(index, cfg.replica(index))
            if old is None:
                model.replicas.append(new)
            else:
                model.replicas[index] = new
            model.notify_changed()
            await _until_settled_or_healthy(model, new)
    del model.replicas[cfg.replicas :]
    model.notify_changed()


async def _until_settled_or_healthy(model: SupervisedModel, replica: Replica) -> None:
    """Wait for the new replica to serve, or to end where only an operator can help, within its budgets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + replica.cfg.startup_timeout + replica.cfg.restart_delay
    while not _arrived(replica):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await model.wait_changed(remaining)


def _arrived(replica: Replica) -> bool:
    # A new replica begins stopped at run 0 until its owner handles Boot: that is not yet an end.
    snap = replica.owner.snapshot
    booted = snap.run > 0 or snap.desired is Desired.STOPPED
    return snap.state is State.HEALTHY or (snap.state in SETTLED and booted)
