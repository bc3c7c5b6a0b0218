"""The strict scenario model (docs/design/contract.md section 8) and its loader.

A scenario is data an operator reviews like a short story: what runs (`target`), what "fine" looks like
before anything breaks (`steady_state`), what breaks and when (`faults`), what the supervisor must do about it
(`expect`), and what to put back afterwards (`cleanup`). Every model is frozen and forbids unknown keys, so a
typo fails loudly with its key path (`faults.0.signal.signal: ...`) instead of silently testing nothing.

Fault steps (steps.py) are a tagged union on `action`; expectations (expectations.py) are one-key mappings
(`- restarts: {...}`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from chaos.expectations import ExpectItem, Requests, SteadyItem, TimedExpectation, expectation_replica
from chaos.steps import (
    EngineDeadStep,
    FaultStep,
    ModelId,
    OomStep,
    Seconds,
    Step,
    Strict,
    step_end,
    step_model,
    step_replica,
)
from chaos.suggest import did_you_mean


class ScenarioError(Exception):
    """A scenario file that cannot be used; `problems` are 'key.path: what is wrong' lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


# --- target -------------------------------------------------------------------------------------------


def _byte_size(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"[1-9]\d*\s*[bkmgt]?b?", value.strip().lower()):
        return value.strip()
    raise ValueError(f'must be a size like "8m" or "2g", or a number of bytes (got {value!r})')


class ContainerSettings(Strict):
    """How a container model runs (`runtime: docker`); every key has a default, so `docker:` may be left out."""

    # The image to run: it must start fake-vllm as `fake-vllm serve ...` (the entrypoint is set to fake-vllm).
    # Default: the fake-vLLM image built locally by ci/build-fake-vllm-image.sh.
    image: Annotated[str, Field(min_length=1)] | None = None
    # docker.mem_limit of the supervisor's config: the kernel OOM-kills the container above it (OOMKilled).
    mem_limit: Annotated[int | str, BeforeValidator(_byte_size)] | None = None


NULLABLE_KEYS = frozenset({"max_restarts", "restart_window", "docker"})


class InferenceProbeSpec(Strict):
    """The supervisor's `inference_probe`: keys left out keep its defaults (every 30 s, 10 s to answer)."""

    interval: Annotated[float, Field(gt=0)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None


class ModelSpec(Strict):
    """One fake server and the supervisor keys (docs/design/contract.md section 2) the scenario sets for it.

    Keys left out are not written, so the supervisor's own defaults apply. `runtime: docker` runs the fake in
    a container of the fake-vLLM image (docs/design/contract.md section 7) instead of as a process on this host.
    """

    fake_vllm: list[str] = []
    env: dict[str, str] = {}
    runtime: Literal["process", "docker"] = "process"
    docker: ContainerSettings | None = None
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"] | None = None
    max_restarts: Annotated[int, Field(ge=0)] | None = None
    restart_window: Annotated[float, Field(gt=0)] | None = None
    restart_delay: Seconds | None = None
    backoff_multiplier: Annotated[float, Field(ge=1)] | None = None
    backoff_max: Seconds | None = None
    backoff_jitter: Annotated[float, Field(ge=0, lt=1)] | None = None  # bounds as the supervisor's config
    backoff_reset_after: Annotated[float, Field(gt=0)] | None = None
    health_check_interval: Annotated[float, Field(gt=0)] | None = None
    health_check_timeout: Annotated[float, Field(gt=0)] | None = None
    health_failure_threshold: Annotated[int, Field(ge=1)] | None = None
    startup_timeout: Annotated[float, Field(gt=0)] | None = None
    startup_probe_interval: Annotated[float, Field(gt=0)] | None = None
    stop_timeout: Seconds | None = None
    success_exit_codes: list[Annotated[int, Field(ge=0, le=255)]] | None = None
    # Replicas: the harness gives each its own port ("{port}" in the args and base_url it writes).
    replicas: Annotated[int, Field(ge=1, le=8)] | None = None
    fallback: ModelId | None = None  # a model of the target that answers while this one has no ready replica
    progress_timeout: Annotated[float, Field(gt=0)] | None = None  # the gateway's stall watch
    inference_probe: InferenceProbeSpec | None = None  # a one-token completion as a liveness probe

    @model_validator(mode="after")
    def _container_keys_fit_runtime(self) -> ModelSpec:
        if self.docker is not None and self.runtime != "docker":
            raise ValueError("docker: needs runtime: docker")
        if self.replicas is not None and self.runtime == "docker":
            raise ValueError("replicas: run as processes in scenarios (each container would need its own port)")
        if self.runtime == "docker" and any("{gpu_dir}" in flag for flag in self.fake_vllm):
            raise ValueError("fake_vllm: {gpu_dir} is a directory on this host; it needs runtime: process")
        # null means "unlimited" for these two only; the supervisor refuses it for every other key.
        nulls = sorted(k for k in self.model_fields_set - NULLABLE_KEYS if getattr(self, k) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)}: null is allowed only for max_restarts and restart_window")
        return self

    @property
    def in_container(self) -> bool:
        return self.runtime == "docker"

    @property
    def replica_count(self) -> int:
        return self.replicas or 1

    def supervisor_keys(self) -> dict[str, Any]:
        """The explicitly set section-2 keys, ready for the config file (null kept where it was written)."""
        keys = self.model_fields_set - {"fake_vllm", "env", "runtime", "docker", "replicas"}
        return {k: _plain(getattr(self, k)) for k in sorted(keys)}


def _plain(value: Any) -> Any:
    """A nested block as the config file writes it: only its keys that were set."""
    return value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value


class GatewaySpec(Strict):
    """The local target's gateway settings (the supervisor's `supervisor.gateway`); keys left out keep the
    supervisor's defaults (hold_timeout 120 s, max_attempts 3, drain_timeout 60 s)."""

    hold_timeout: Annotated[float, Field(gt=0)] | None = None
    max_attempts: Annotated[int, Field(ge=1)] | None = None
    drain_timeout: Annotated[float, Field(ge=0)] | None = None


class Target(Strict):
    models: dict[ModelId, ModelSpec] = Field(min_length=1)
    # The harness enables the gateway for a scenario with `load` (or with this block), on a free port.
    gateway: GatewaySpec | None = None


class Load(Strict):
    """OpenAI requests sent through the gateway from the moment the steady state held to the end of the
    observation, by `concurrency` clients, each sending its next request when the last one ended (or, with
    `rate`, at that many requests per second in all, never more than `concurrency` at once)."""

    model: ModelId  # the model id the requests name
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    stream: bool | Literal["both"] = False  # both: every other client streams
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 16
    kind: Literal["completions", "chat"] = "completions"
    rate: Annotated[float, Field(gt=0, le=1000)] | None = None
    timeout: Annotated[float, Field(gt=0)] = 10.0  # seconds a request may take; past it, it counts as failed
    prompt: Annotated[str, Field(min_length=1)] = "Say something about supervisors."


class RealVllmSpec(Strict):
    """How the scenario runs against real `vllm serve` (chaos/real_vllm.py); its presence opts the scenario in."""

    slack: Seconds = 0.0  # seconds added to every `within`: one start of real vLLM takes this much longer
    args: list[str] = []  # added to `vllm serve MODEL_DIR --port P --enforce-eager`
    models: dict[ModelId, ModelSpec] = {}  # per-model keys that replace the scenario's on real vLLM


class Remote(Strict):
    """What a run against `--supervisor URL` may do besides reading the API."""

    allow_process_actions: bool = False


class Scenario(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,79}$")]
    title: Annotated[str, Field(min_length=1, max_length=80)] | None = None  # a short line for tables
    story: Annotated[str, Field(min_length=1)]
    target: Target | None = None
    remote: Remote = Remote()
    steady_state: list[SteadyItem] = []
    load: Load | None = None
    faults: list[Step] = []
    expect: list[ExpectItem] = Field(min_length=1)
    cleanup: list[Step] = []
    # Seconds watched after every expectation holds (or after the faults, when they never all hold).
    duration: Annotated[float, Field(gt=0)] | None = None
    # The watch never lasts longer than this after the faults (default: the longest `within`, else duration).
    observe_at_most: Annotated[float, Field(gt=0)] | None = None
    real_vllm: RealVllmSpec | None = None  # the scenario also runs against real vLLM (docs/chaos.md)

    @model_validator(mode="after")
    def _requests_have_a_load(self) -> Scenario:
        for i, item in enumerate(self.expect):
            spec = item.expectation
            if not isinstance(spec, Requests):
                continue
            if self.load is None:
                raise ValueError(f"expect.{i}: requests are judged on the scenario's load: add load: {{model: ...}}")
            if spec.model != self.load.model:
                raise ValueError(f"expect.{i}: requests of {spec.model!r}, but the load sends to {self.load.model!r}")
        return self

    @model_validator(mode="after")
    def _models_exist(self) -> Scenario:
        if self.target is None:
            return self
        models = self.target.models
        refs: list[tuple[str, str | None, int | None]] = [
            (f"steady_state.{i}", s.healthy.model, s.healthy.replica) for i, s in enumerate(self.steady_state)
        ]
        refs += [(f"faults.{i}", step_model(s), step_replica(s)) for i, s in enumerate(self.faults)]
        refs += [(f"cleanup.{i}", step_model(s), step_replica(s)) for i, s in enumerate(self.cleanup)]
        refs += [(f"expect.{i}", e.model, expectation_replica(e.expectation)) for i, e in enumerate(self.expect)]
        refs += [("load", self.load.model, None)] if self.load else []
        refs += [(f"target.models.{m}.fallback", s.fallback, None) for m, s in models.items() if s.fallback]
        for where, model, replica in refs:
            if model is not None and model not in models:
                raise ValueError(f"{where}: unknown model {model!r} (target has {sorted(models)})")
            if model is not None and replica is not None and replica >= models[model].replica_count:
                count = models[model].replica_count
                raise ValueError(f"{where}: {model} has no replica {replica} (it has {count}, from 0)")
        for model, spec in models.items():
            if spec.fallback == model:
                raise ValueError(f"target.models.{model}.fallback: a model cannot fall back to itself")
        return self

    @model_validator(mode="after")
    def _real_vllm_runs_what_vllm_has(self) -> Scenario:
        if self.real_vllm is None:
            return self
        fake_only = (OomStep, EngineDeadStep, FaultStep)
        steps = [(f"faults.{i}", s) for i, s in enumerate(self.faults)]
        steps += [(f"cleanup.{i}", s) for i, s in enumerate(self.cleanup)]
        fake = [f"{where} ({step.action})" for where, step in steps if isinstance(step, fake_only)]
        if fake:
            raise ValueError(f"real_vllm: {', '.join(fake)} need fake-vllm's /admin/faults")
        if self.container_models():
            raise ValueError("real_vllm: container models run the fake-vLLM image; use runtime: process")
        unknown = sorted(set(self.real_vllm.models) - set(self.target.models if self.target else {}))
        if unknown:
            raise ValueError(f"real_vllm.models: unknown model(s) {unknown}")
        return self

    @property
    def needs_gateway(self) -> bool:
        """The local target serves the gateway: the scenario sends requests, or sets its gateway."""
        return self.load is not None or (self.target is not None and self.target.gateway is not None)

    def container_models(self) -> list[str]:
        """The target's models that run as containers (`runtime: docker`), sorted."""
        return sorted(m for m, spec in self.target.models.items() if spec.in_container) if self.target else []

    def container_images(self) -> set[str]:
        """The images the target's container models name (the rest get the default fake-vLLM image)."""
        models = self.target.models.values() if self.target else []
        return {spec.docker.image for spec in models if spec.docker is not None and spec.docker.image is not None}

    def faults_end(self) -> float:
        return max((step_end(s) for s in self.faults), default=0.0)

    def settle_for(self) -> float:
        """Seconds watched after every timed expectation (`within`) has been met: `duration`, default 2."""
        return 2.0 if self.duration is None else self.duration

    def timed(self) -> list[TimedExpectation]:
        """The expectations with a `within`: the observation lasts until they are met or their time is up."""
        return [spec for e in self.expect if isinstance(spec := e.expectation, TimedExpectation)]


# --- loading ------------------------------------------------------------------------------------------


def _format(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key" + did_you_mean(Scenario, item["loc"])
        # Whole-scenario checks already start their message with the path they are about.
        lines.append(f"{path}: {message}" if path else message)
    return lines


def parse_scenario(data: object, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(source, ["(top): a scenario is a mapping with name, story, expect, ..."])
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(source, _format(exc)) from None


def load_scenario(path: Path) -> Scenario:
    """Read and validate one YAML scenario file; every problem is reported with its key path."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(str(path), [f"(file): {exc}"]) from None
    return parse_scenario(data, str(path))


def scenario_files(paths: list[Path]) -> list[Path]:
    """Expand directories to the *.yaml / *.yml files below them (sub-folders too, like `pytest scenarios/`),
    sorted; files are kept as given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            found.append(path)
    return found


def looks_like_scenario(data: object) -> bool:
    """A YAML document shaped like a scenario (used by the pytest plugin before it validates)."""
    return isinstance(data, dict) and "name" in data and "expect" in data
