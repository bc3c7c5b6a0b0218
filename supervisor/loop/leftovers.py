"""Stop, never adopt, what an earlier life of this supervisor left running: its output pipes died with it,
so a run it started can be neither watched nor diagnosed (docs/operations.md)."""

from __future__ import annotations

import asyncio
import logging

from supervisor.config.schema import Config
from supervisor.loop.runtimes import stop_leftover_run
from supervisor.store.base import PersistedModel

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0  # stop_timeout's default, for a model no longer configured


async def stop_leftovers(config: Config, persisted: dict[str, PersistedModel], instance: str) -> set[str]:
    """The ids of the models of which something was still running, and is now stopped.

    Models no longer in the config are included: their processes would otherwise be orphans on the GPU.
    """
    model_ids = [*config.models, *(m for m in persisted if m not in config.models)]
    results = await asyncio.gather(
        *(
            stop_leftover_run(
                model_id,
                persisted[model_id].run if model_id in persisted else None,
                config.models.get(model_id),
                _stop_timeout(config, model_id),
                instance,
            )
            for model_id in model_ids
        ),
        return_exceptions=True,  # one model's trouble (Docker unreachable) must not stop the others
    )
    stopped = set()
    for model_id, result in zip(model_ids, results, strict=True):
        if isinstance(result, BaseException):
            log.error("%s: could not clean up after the previous supervisor: %s", model_id, result)
        elif result:
            log.warning("%s: stopped a run left behind by the previous supervisor", model_id)
            stopped.add(model_id)
    return stopped


def _stop_timeout(config: Config, model_id: str) -> float:
    cfg = config.models.get(model_id)
    return cfg.stop_timeout if cfg is not None else DEFAULT_STOP_TIMEOUT
