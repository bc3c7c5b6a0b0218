"""Pick the runtime a model's config asks for, and clean up runs a previous supervisor left behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

from supervisor.config.schema import ModelConfig
from supervisor.runtime.base import Runtime
from supervisor.runtime.process import ProcessRuntime, run_marker, stop_leftover
from supervisor.store.journal import RunRecord


def instance_id(state_dir: Path) -> str:
    """A stable name for one supervisor: its state directory, hashed (labels its containers)."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


def build_runtime(model_id: str, cfg: ModelConfig, instance: str) -> Runtime:
    if cfg.runtime == "docker":
        from supervisor.runtime.docker import docker_runtime_for  # optional extra: imported only when used

        return docker_runtime_for(model_id, cfg, instance=instance)
    return ProcessRuntime(
        argv=[cfg.command, *cfg.args], env=dict(cfg.env), cwd=None if cfg.cwd is None else str(cfg.cwd)
    )


async def stop_leftover_run(
    model_id: str, run: RunRecord | None, cfg: ModelConfig | None, stop_timeout: float, instance: str
) -> bool:
    """Before a model's first run: stop what a previous life of this supervisor left of it.

    The recorded run is stopped the way it was started (its runtime may have changed in the config since).
    Containers of a docker model are also looked for by their labels, so one created in the instant before a
    crash, before the journal recorded it, is found too. True if something was still running.
    """
    stopped = False
    if run is not None and run.runtime == "process":
        marker = run_marker(model_id, run.run_number)
        stopped = await stop_leftover(run.ident, stop_timeout, marker=marker)
    recorded_container = run.ident if run is not None and run.runtime == "docker" else None
    if recorded_container is not None or (cfg is not None and cfg.runtime == "docker"):
        from supervisor.runtime.docker import remove_leftover_container

        stopped |= await remove_leftover_container(model_id, recorded_container, stop_timeout, instance=instance)
    return stopped
