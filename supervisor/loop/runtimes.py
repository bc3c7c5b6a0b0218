"""Each runtime kind as one `Backend`: how a model of that kind is run, and how a run that an earlier life
of this supervisor left behind is found and stopped. The only place the config's `runtime` is dispatched."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from supervisor.config.schema import ModelConfig
from supervisor.core.states import RuntimeKind
from supervisor.runtime.base import Runtime
from supervisor.runtime.process import ProcessRuntime
from supervisor.runtime.process_group import run_marker, stop_leftover
from supervisor.runtime.usage import INSTANCE_ENV
from supervisor.store.base import RunRecord


class Backend(Protocol):
    def build(self, unit: str, cfg: ModelConfig, instance: str) -> Runtime:
        """The runtime that starts this model's runs."""

    async def stop_leftover(self, unit: str, recorded: RunRecord | None, stop_timeout: float, instance: str) -> bool:
        """Stop the recorded run (None: nothing was recorded) and whatever else of the model this kind can
        find; True if something was still running."""


class ProcessBackend:
    def build(self, unit: str, cfg: ModelConfig, instance: str) -> Runtime:
        return ProcessRuntime(
            argv=[cfg.command, *cfg.args],
            # The instance mark lets heal tell this supervisor's leftover processes from another's.
            env={**cfg.env, INSTANCE_ENV: instance},
            cwd=None if cfg.cwd is None else str(cfg.cwd),
        )

    async def stop_leftover(self, unit: str, recorded: RunRecord | None, stop_timeout: float, instance: str) -> bool:
        if recorded is None:  # a process group left no trace but the journal's record
            return False
        return await stop_leftover(recorded.ident, stop_timeout, marker=run_marker(unit, recorded.run_number))


class DockerBackend:
    # The docker SDK is an optional extra: imported only when a model uses it.
    def build(self, unit: str, cfg: ModelConfig, instance: str) -> Runtime:
        from supervisor.loop.container_spec import spec_from_model_config
        from supervisor.runtime.docker import DockerRuntime

        return DockerRuntime(spec_from_model_config(cfg, instance))

    async def stop_leftover(self, unit: str, recorded: RunRecord | None, stop_timeout: float, instance: str) -> bool:
        from supervisor.runtime.docker import remove_leftover_container

        # Containers are also found by their labels, so one created in the instant before a crash of the
        # supervisor, before the journal recorded it, is stopped too.
        ident = None if recorded is None else recorded.ident
        return await remove_leftover_container(unit, ident, stop_timeout, instance=instance)


BACKENDS: dict[RuntimeKind, Backend] = {RuntimeKind.PROCESS: ProcessBackend(), RuntimeKind.DOCKER: DockerBackend()}


def instance_id(state_dir: Path) -> str:
    """A stable name for one supervisor: its state directory, hashed (labels its containers)."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


def build_runtime(unit: str, cfg: ModelConfig, instance: str) -> Runtime:
    return BACKENDS[cfg.runtime].build(unit, cfg, instance)


async def stop_leftover_run(
    unit: str, recorded: RunRecord | None, cfg: ModelConfig | None, stop_timeout: float, instance: str
) -> bool:
    """Before a model's first run: stop what a previous life of this supervisor left of it.

    The recorded run is stopped the way it was started (its runtime may have changed in the config since),
    and the kind the config names now looks for what it can find of the model without a record.
    """
    kinds = {recorded.runtime} if recorded is not None else set()
    if cfg is not None:
        kinds.add(cfg.runtime)
    stopped = False
    for kind in sorted(kinds):
        own_record = recorded if recorded is not None and recorded.runtime is kind else None
        stopped |= await BACKENDS[kind].stop_leftover(unit, own_record, stop_timeout, instance)
    return stopped
