"""Translate a model's config into the machine's settings (the only place the two vocabularies meet)."""

from __future__ import annotations

from supervisor.config.schema import ModelConfig
from supervisor.core.adapt import Floors
from supervisor.core.machine_types import Settings
from supervisor.core.policy import Backoff, Budget, RestartPolicy


def machine_settings(cfg: ModelConfig) -> Settings:
    return Settings(
        restart_policy=RestartPolicy(cfg.restart_policy),
        success_exit_codes=frozenset(cfg.success_exit_codes),
        backoff=Backoff(
            initial=cfg.restart_delay,
            multiplier=cfg.backoff_multiplier,
            cap=cfg.backoff_max,
            jitter=cfg.backoff_jitter,
            reset_after=cfg.backoff_reset_after,
        ),
        budget=Budget(cfg.max_restarts, cfg.restart_window),
        has_probe=cfg.probe_root_url is not None,
        startup_timeout=cfg.startup_timeout,
        startup_probe_interval=cfg.startup_probe_interval,
        health_check_interval=cfg.health_check_interval,
        health_check_timeout=cfg.health_check_timeout,
        health_failure_threshold=cfg.health_failure_threshold,
        stop_timeout=cfg.stop_timeout,
        startup_stop_timeout=cfg.startup_stop_timeout,
        max_memory=cfg.max_memory,
        max_gpu_memory=cfg.max_gpu_memory,
        memory_check_interval=cfg.memory_check_interval,
        adapt=Floors(cfg.adapt_min_max_model_len, cfg.adapt_min_gpu_memory_utilization) if cfg.adapt else None,
    )
