"""Pick the runtime a model's config asks for, and clean up runs a previous supervisor left behind."""

from __future__ import annotations

from supervisor.config import ModelConfig
from supervisor.journal import RunRecord
from supervisor.runtime.base import Runtime
from supervisor.runtime.process import ProcessRuntime, stop_leftover


def build_runtime(model_id: str, cfg: ModelConfig) -> Runtime:
    if cfg.runtime == "docker":
        from supervisor.runtime.docker import docker_runtime_for  # optional extra: imported only when used

        return docker_runtime_for(model_id, cfg)
    return ProcessRuntime(
        argv=[cfg.command, *cfg.args], env=dict(cfg.env), cwd=None if cfg.cwd is None else str(cfg.cwd)
    )


async def stop_leftover_run(model_id: str, run: RunRecord, cfg: ModelConfig | None, stop_timeout: float) -> bool:
    """Stop a run recorded by a previous supervisor life; True if something was still running."""
    if run.runtime == "docker":
        from supervisor.runtime.docker import remove_leftover_container

        return await remove_leftover_container(model_id, run.ident, stop_timeout)
    return await stop_leftover(run.ident, stop_timeout)
