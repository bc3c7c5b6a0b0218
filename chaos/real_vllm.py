"""Catalogue scenarios run against real `vllm serve` instead of fake-vllm (docs/chaos.md, "Real vLLM").

A scenario opts in with a `real_vllm:` block. Given a `VllmServer` (the `vllm` program and a model directory),
the local target runs `vllm serve MODEL_DIR --port P --enforce-eager ARGS` for each model, and the scenario is
adjusted once, before anything starts: its fake-vllm flags are dropped (they mean nothing to vLLM), the block's
per-model keys replace the scenario's, and every `within` (and `observe_at_most`) gets `slack` more seconds,
because a start of real vLLM takes tens of seconds where the fake takes a fraction of one. Everything else, the
faults and the expectations, stays as written: the same story, judged the same way, on the real server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.scenario import Scenario

SLACK_KEYS = ("within", "observe_at_most")


@dataclass(frozen=True, slots=True)
class VllmServer:
    """Where real vLLM is: the `vllm` program and the model directory it serves (built locally, no download)."""

    command: str
    model_dir: str
    flags: tuple[str, ...] = ()  # what this model needs on every start (e.g. --max-model-len 256)

    def args(self, port: int | str, extra: list[str]) -> list[str]:
        # --enforce-eager: vLLM 0.32 for CPUs compiles again on every start (no reusable cache); eager mode
        # starts the same processes, tens of seconds sooner.
        return ["serve", self.model_dir, "--port", str(port), "--enforce-eager", *self.flags, *extra]


def program(command: str) -> str:
    """A command given as a path is made absolute: the supervisor runs its models from its own directory."""
    return str(Path(command).resolve()) if os.sep in command else command


def not_on_real_vllm(scenario: Scenario) -> str | None:
    """Why a scenario cannot run against real vLLM, or None."""
    if scenario.real_vllm is None:
        return "written for fake-vllm only (it has no real_vllm block)"
    if scenario.target is None:
        return "it has no target to start (a real_vllm block needs target.models)"
    return None


def for_real_vllm(scenario: Scenario) -> Scenario:
    """The scenario as it runs against real vLLM (see the module docstring)."""
    spec = scenario.real_vllm
    if spec is None or scenario.target is None:
        raise ValueError(f"{scenario.name}: {not_on_real_vllm(scenario) or 'no target to start'}")
    data = _with_slack(scenario.model_dump(mode="json", by_alias=True, exclude_unset=True), spec.slack)
    for model, keys in data["target"]["models"].items():
        keys.pop("fake_vllm", None)
        override = spec.models.get(model)
        if override is not None:
            keys.update(override.model_dump(mode="json", by_alias=True, exclude_unset=True))
    return Scenario.model_validate(data)


def _with_slack(node: Any, slack: float) -> Any:
    if isinstance(node, dict):
        return {k: v + slack if k in SLACK_KEYS and v is not None else _with_slack(v, slack) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_slack(item, slack) for item in node]
    return node
