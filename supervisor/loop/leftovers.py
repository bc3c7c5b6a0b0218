"""Stop, never adopt, what an earlier life of this supervisor left running: its output pipes died with it,
so a run it started can be neither watched nor diagnosed (docs/operations.md)."""

from __future__ import annotations

import asyncio
import logging

from supervisor.config.schema import Config
from supervisor.loop.model import unit_name
from supervisor.loop.runtimes import stop_leftover_run
from supervisor.store.base import PersistedModel

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0  # stop_timeout's default, for a model no longer configured


async def stop_leftovers(config: Config, persisted: dict[str, PersistedModel], instance: str) -> set[str]:
    """The units (replicas, by `unit_name`) of which something was still running, and is now stopped.

    Models and replicas no longer in the config are included: their processes would otherwise be orphans on
    the GPU.
    """
    configured = {unit_name(m, i): cfg.replica(i) for m, cfg in config.models.items() for i in range(cfg.replicas)}
    units = [*configured, *(u for u in persisted if u not in configured)]
    results = await asyncio.gather(
        *(
            stop_leftover_run(
                unit,
                persisted[unit].run if unit in persisted else None,
                configured.get(unit),
                configured[unit].stop_timeout if unit in configured else DEFAULT_STOP_TIMEOUT,
                instance,
            )
            for unit in units
        ),
        return_exceptions=True,  # one model's trouble (Docker unreachable) must not stop the others
    )
    stopped = set()
    for unit, result in zip(units, results, strict=True):
        if isinstance(result, BaseException):
            log.error("%s: could not clean up after the previous supervisor: %s", unit, result)
        elif result:
            log.warning("%s: stopped a run left behind by the previous supervisor", unit)
            stopped.add(unit)
    return stopped
