"""The container a model's config describes. Imported only for `runtime: docker` models: it needs the
optional `docker` extra, which a process-only install never has."""

from __future__ import annotations

from supervisor.config.schema import ModelConfig
from supervisor.runtime.docker_spec import ContainerSpec


def spec_from_model_config(cfg: ModelConfig, instance: str | None = None) -> ContainerSpec:
    """`command` becomes the entrypoint and `args` its command, so `command: vllm, args: [serve, ...]` runs
    the same in the vllm/vllm-openai image as on a host."""
    settings = cfg.docker
    if settings is None:
        raise ValueError("runtime: docker needs a docker: block")
    return ContainerSpec(
        image=settings.image,
        entrypoint=[cfg.command],
        command=list(cfg.args),
        # The supervisor's own environment is not passed on: a container gets only what the config names.
        env={**cfg.env, **settings.env},
        ports=dict(settings.ports),
        gpus=settings.gpus,
        ipc_mode=settings.ipc_mode,
        shm_size=settings.shm_size,
        volumes=dict(settings.volumes),
        mem_limit=settings.mem_limit,
        stop_timeout=cfg.stop_timeout,
        pull=settings.pull,
        instance=instance,
    )
