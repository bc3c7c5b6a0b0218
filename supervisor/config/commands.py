"""Whether each model's command can be executed from here: `llm-supervisor validate` warns when it cannot.

A warning, not an error: the config may be checked on another machine than the one that runs it. The lookup
is the one the process runtime's spawn makes (Python's subprocess): a bare name is searched on the PATH of the
model's environment (its `env.PATH` when set, else the supervisor's own); a name with a slash is a path,
relative to the model's `cwd` (else the current directory).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from supervisor.config.schema import Config, ModelConfig
from supervisor.core.states import RuntimeKind


def command_warnings(config: Config) -> list[str]:
    """One sentence per model whose command cannot be executed from here (docker models are not checked)."""
    warnings = []
    for model_id, cfg in config.models.items():
        if cfg.runtime is RuntimeKind.PROCESS and (problem := _command_problem(cfg)) is not None:
            warnings.append(f"model '{model_id}': {problem}")
    return warnings


def _command_problem(cfg: ModelConfig) -> str | None:
    command = cfg.command
    if "/" not in command:
        path = cfg.env.get("PATH", os.environ.get("PATH", os.defpath))
        if shutil.which(command, path=path) is not None:
            return None
        return (
            f"command {command!r} is not on PATH ({path}): a start will fail with command_not_found. Give its "
            "absolute path, or add its directory to PATH (the model's env, or the supervisor's environment)"
        )
    target = Path(command) if os.path.isabs(command) else (cfg.cwd or Path.cwd()) / command
    if not target.is_file():
        return f"command {command!r} does not exist ({target}): a start will fail with command_not_found"
    if not os.access(target, os.X_OK):
        return f"command {command!r} is not executable ({target}): chmod +x it"
    return None
