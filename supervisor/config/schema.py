"""Supervisor configuration (docs/design/contract.md sections 2 and 7), parsed once at the boundary into frozen
typed objects.

`load_config(path)` reads YAML (.yaml/.yml) or JSON (.json); `parse_config(data, source)` checks data that is
already loaded. Both return a `Config` or raise `ConfigError` holding every problem found, each naming its key
path (`llmModels.qwen.restart_polcy: unknown key (did you mean restart_policy?)`), so an operator fixes a file
in one pass. A FluidMCP file (`{"llmModels": {...}}`) loads unchanged; FluidMCP's other top-level sections
(`FLUIDMCP_SECTIONS`) are accepted and ignored. Relative paths resolve against the config file's directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from supervisor.config.fields import (
    ByteSize,
    Count,
    EnvName,
    FrozenMap,
    NonEmpty,
    Port,
    RestartPolicyName,
    Seconds,
    Section,
    Text,
    container_path,
    container_port,
    gpu_list,
    host_volume,
    resolve_path,
)
from supervisor.config.files import DocumentError, load_json, load_yaml
from supervisor.config.messages import describe, show, step, suggest
from supervisor.core.states import RuntimeKind

PORT_PLACEHOLDER = "{port}"
MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# FluidMCP's own sections (MCP servers, its cloud models, its GitHub token): a FluidMCP file carries them next
# to llmModels, and refusing them would break "loads unchanged". Anything else at the top is a typo.
FLUIDMCP_SECTIONS = frozenset({"mcpServers", "replicateModels", "github_token"})
TOP_LEVEL_KEYS = ("supervisor", "llmModels")


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every problem found as 'key.path: what is wrong'."""

    def __init__(self, problems: list[str], source: str = "<config>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source}: {len(self.problems)} problem(s)")

    def __str__(self) -> str:
        count = len(self.problems)
        listing = "\n".join(f"  {problem}" for problem in self.problems)
        return f"{self.source}: {count} problem{'s' if count != 1 else ''}:\n{listing}"


class ApiSettings(Section):
    host: NonEmpty = "127.0.0.1"
    port: Annotated[Count, Field(ge=0, le=65535)] = 8099  # 0: any free port (tests)


class GatewaySettings(Section):
    """The OpenAI-compatible front door; without this section there is no gateway."""

    host: NonEmpty = "127.0.0.1"
    port: Annotated[Count, Field(ge=0, le=65535)] = 8000  # 0: any free port (tests)
    api_key_env: EnvName | None = None  # the variable holding the key clients must send as Bearer
    hold_timeout: Annotated[Seconds, Field(gt=0)] = 120.0
    max_attempts: Annotated[Count, Field(ge=1)] = 3
    drain_timeout: Annotated[Seconds, Field(ge=0)] = 60.0


class SupervisorSettings(Section):
    api: ApiSettings = ApiSettings()
    gateway: GatewaySettings | None = None
    state_dir: Path = Field(Path(".llm-supervisor"), validate_default=True)
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "LLM_SUPERVISOR_TOKEN"  # noqa: S105 (a variable's name, not a secret)
    log_max_bytes: Annotated[Count, Field(ge=1024)] = 10 * 1024 * 1024
    log_backups: Annotated[Count, Field(ge=0)] = 5
    journal_max_events: Annotated[Count, Field(ge=100)] = 10_000  # newest events the journal keeps per model

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)


class Endpoints(Section):
    base_url: str | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", value):
            raise ValueError(f"must be an http(s) URL like http://127.0.0.1:8001/v1 (got {value!r})")
        return value


class DockerSettings(Section):
    image: NonEmpty
    ports: FrozenMap[Annotated[str, BeforeValidator(container_port)], Port] = FrozenMap()
    gpus: Annotated[Literal["all"] | tuple[int, ...] | None, BeforeValidator(gpu_list)] = None
    ipc_mode: NonEmpty | None = None
    shm_size: ByteSize | None = None
    volumes: FrozenMap[
        Annotated[str, BeforeValidator(host_volume)], Annotated[str, BeforeValidator(container_path)]
    ] = FrozenMap()
    env: FrozenMap[EnvName, Text] = FrozenMap()
    pull: Annotated[bool, Field(strict=True)] = False
    mem_limit: ByteSize | None = None


class InferenceProbe(Section):
    """A one-token completion as a liveness probe: it sees an engine that hangs while /health says 200."""

    interval: Annotated[Seconds, Field(gt=0)] = 30.0
    timeout: Annotated[Seconds, Field(gt=0)] = 10.0


class ModelConfig(Section):
    """One model's settings. Field order matters: validators of later fields read `runtime`."""

    type: Literal["vllm"] | None = None  # FluidMCP marks its vLLM models so; other FluidMCP types are not ours
    command: NonEmpty
    args: tuple[Text, ...] = ()
    env: FrozenMap[EnvName, Text] = FrozenMap()
    runtime: RuntimeKind = RuntimeKind.PROCESS
    docker: DockerSettings | None = Field(None, validate_default=True)
    cwd: Path | None = None
    endpoints: Endpoints = Endpoints()
    restart_policy: RestartPolicyName = "on-failure"
    max_restarts: Annotated[Count, Field(ge=0)] | None = 3
    restart_window: Annotated[Seconds, Field(gt=0)] | None = 600.0
    restart_delay: Annotated[Seconds, Field(ge=0)] = 5.0
    backoff_multiplier: Annotated[Seconds, Field(ge=1)] = 2.0
    backoff_max: Annotated[Seconds, Field(ge=0)] = 300.0
    backoff_jitter: Annotated[Seconds, Field(ge=0, lt=1)] = 0.0
    backoff_reset_after: Annotated[Seconds, Field(gt=0)] = 600.0
    health_check_interval: Annotated[Seconds, Field(gt=0)] = 10.0
    health_check_timeout: Annotated[Seconds, Field(gt=0)] = 5.0
    health_failure_threshold: Annotated[Count, Field(ge=1)] = 3
    startup_timeout: Annotated[Seconds, Field(gt=0)] = 900.0
    startup_probe_interval: Annotated[Seconds, Field(gt=0)] = 1.0
    stop_timeout: Annotated[Seconds, Field(ge=0)] = 30.0
    startup_stop_timeout: Annotated[Seconds, Field(ge=0)] = 5.0  # a loading server has nothing to drain
    success_exit_codes: tuple[Annotated[Count, Field(ge=0, le=255)], ...] = ()
    replicas: Annotated[Count, Field(ge=1)] = 1
    ports: tuple[Port, ...] = ()  # one per replica; "{port}" in args and endpoints.base_url becomes it
    fallback: NonEmpty | None = None  # a model id that serves this model's requests while it has no ready replica
    progress_timeout: Annotated[Seconds, Field(gt=0)] | None = None
    inference_probe: InferenceProbe | None = None
    # Memory limits (like PM2's max_memory_restart, over the whole process tree); over one: restart, memory_limit.
    max_memory: ByteSize | None = None  # resident memory summed over the run's processes
    max_gpu_memory: ByteSize | None = None  # GPU memory of the run's processes, through NVML
    memory_check_interval: Annotated[Seconds, Field(gt=0)] = 5.0
    # Smart recovery (docs/recovery.md): after a failure vLLM explains, the next run gets arguments that fit.
    adapt: Annotated[bool, Field(strict=True)] = False
    adapt_min_max_model_len: Annotated[Count, Field(ge=1)] = 1024
    adapt_min_gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.5

    @model_validator(mode="after")
    def _replica_ports(self) -> ModelConfig:
        uses_port = any(PORT_PLACEHOLDER in a for a in self.args) or PORT_PLACEHOLDER in (self.endpoints.base_url or "")
        if self.ports and len(self.ports) != self.replicas:
            raise ValueError(f"ports: give one port per replica ({self.replicas}), got {len(self.ports)}")
        if len(set(self.ports)) != len(self.ports):
            raise ValueError("ports: each replica needs its own port")
        if uses_port and not self.ports:
            raise ValueError('"{port}" appears in args or endpoints.base_url: list the replicas\' ports in ports')
        if self.replicas > 1 and not uses_port:
            raise ValueError('replicas > 1 need "{port}" in args and endpoints.base_url, and one port each in ports')
        return self

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data: object) -> object:
        # shutdown_timeout is FluidMCP's name for stop_timeout. When both are given the alias stays behind and
        # is reported as a key given twice (see _message), instead of one silently winning.
        if isinstance(data, Mapping) and "shutdown_timeout" in data and "stop_timeout" not in data:
            data = dict(data)
            data["stop_timeout"] = data.pop("shutdown_timeout")
        return data

    @field_validator("docker")
    @classmethod
    def _docker_matches_runtime(cls, value: DockerSettings | None, info: ValidationInfo) -> DockerSettings | None:
        runtime = info.data.get("runtime")
        if runtime is RuntimeKind.DOCKER and value is None:
            raise ValueError("runtime: docker needs a docker: block with at least an image")
        if runtime is RuntimeKind.PROCESS and value is not None:
            raise ValueError("a docker: block needs runtime: docker")
        return value

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("runtime") is RuntimeKind.DOCKER:
            raise ValueError("cwd applies to runtime: process only")
        return None if value is None else resolve_path(value, info)

    def replica(self, index: int) -> ModelConfig:
        """The settings of one replica: its port put where "{port}" stands. A model without ports is its
        own single replica."""
        if not self.ports:
            return self
        port = str(self.ports[index])
        base_url = self.endpoints.base_url
        return self.model_copy(
            update={
                "args": tuple(a.replace(PORT_PLACEHOLDER, port) for a in self.args),
                "endpoints": Endpoints(base_url=None if base_url is None else base_url.replace(PORT_PLACEHOLDER, port)),
                "replicas": 1,
                "ports": (self.ports[index],),
            }
        )

    @property
    def probe_root_url(self) -> str | None:
        """The server root that probes go to: base_url without a trailing /v1 (docs/design/defects.md #1)."""
        if self.endpoints.base_url is None:
            return None
        root = self.endpoints.base_url.rstrip("/")
        return root.removesuffix("/v1")


class Config(Section):
    supervisor: SupervisorSettings
    models: dict[str, ModelConfig]
    _path: Path | None = PrivateAttr(None)  # the file it was read from, for a reload to read again

    @property
    def path(self) -> Path | None:
        """The file `load_config` read this config from; None for data parsed in memory."""
        return self._path

    def to_data(self) -> dict[str, Any]:
        """JSON-ready data that `parse_config` turns back into an equal Config (e.g. to write a test config)."""
        return {
            "supervisor": self.supervisor.model_dump(mode="json"),
            "llmModels": {mid: m.model_dump(mode="json", exclude_defaults=True) for mid, m in self.models.items()},
        }


def load_config(path: str | Path) -> Config:
    """Read and check a config file; raise ConfigError naming every problem (syntax errors with their line)."""
    path = Path(path)
    source, suffix = str(path), path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError([f"unsupported file type {suffix or '(none)'!r}: use .yaml, .yml or .json"], source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], source) from None
    try:
        data, duplicates = load_json(text) if suffix == ".json" else load_yaml(text)
    except DocumentError as exc:
        raise ConfigError([str(exc)], source) from None
    try:
        config = parse_config(data, source, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(duplicates + exc.problems, source) from None
    if duplicates:
        raise ConfigError(duplicates, source)
    config._path = path.resolve()  # set once, here, by the one function that reads files
    return config


def parse_config(data: object, source: str = "<config>", *, base_dir: str | Path | None = None) -> Config:
    """Check loaded data; relative paths resolve against base_dir (default: the current directory)."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"(top level): must be a mapping with an llmModels section (got {show(data)})"], source)
    problems = [
        f"{key}: unknown key{suggest(key, TOP_LEVEL_KEYS)}"
        for key in data
        if key not in TOP_LEVEL_KEYS and key not in FLUIDMCP_SECTIONS
    ]
    context = {"base_dir": Path(base_dir) if base_dir is not None else Path.cwd()}
    raw_settings = data.get("supervisor")  # an empty `supervisor:` section reads as null
    settings = _validate(
        SupervisorSettings, {} if raw_settings is None else raw_settings, "supervisor", context, problems
    )
    raw_models = data.get("llmModels")
    models: dict[str, ModelConfig] = {}
    if not isinstance(raw_models, Mapping):
        problems.append(
            "llmModels: required: a mapping of model id -> model settings"
            + ("" if raw_models is None else f" (got {show(raw_models)})")
        )
        raw_models = {}
    for model_id, raw in raw_models.items():
        path = "llmModels" + step(model_id)
        if not (isinstance(model_id, str) and MODEL_ID_PATTERN.fullmatch(model_id)):
            problems.append(f"{path}: a model id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        model = _validate(ModelConfig, raw, path, context, problems)
        if model is not None:
            models[str(model_id)] = model
    problems += _shared_servers(models)
    problems += _fallbacks(models)
    if problems or settings is None:
        raise ConfigError(problems, source)
    return Config(supervisor=settings, models=models)


_M = TypeVar("_M", bound=BaseModel)


def _validate(cls: type[_M], raw: object, path: str, context: dict[str, Any], problems: list[str]) -> _M | None:
    try:
        return cls.model_validate(raw, context=context)
    except ValidationError as exc:
        aliases = ["shutdown_timeout"] if cls is ModelConfig else []
        problems.extend(describe(cls, path, error, aliases) for error in exc.errors(include_url=False))
        return None


def _shared_servers(models: Mapping[str, ModelConfig]) -> list[str]:
    # Two models probing one server: a copied block with the port left unchanged. One of them would fail with
    # "address in use" while the other's probes answered for both.
    owners: dict[str, str] = {}
    problems = []
    for model_id, model in models.items():
        for index in range(model.replicas):
            root = model.replica(index).probe_root_url
            if root is not None and root in owners:
                problems.append(
                    f"llmModels.{model_id}.endpoints.base_url: the same server as llmModels."
                    f"{owners[root]} ({root}); each model needs its own port"
                )
            elif root is not None:
                owners[root] = model_id
    return problems


def _fallbacks(models: Mapping[str, ModelConfig]) -> list[str]:
    problems = []
    for model_id, model in models.items():
        if model.fallback == model_id:
            problems.append(f"llmModels.{model_id}.fallback: a model cannot fall back to itself")
        elif model.fallback is not None and model.fallback not in models:
            known = suggest(model.fallback, list(models))
            problems.append(f"llmModels.{model_id}.fallback: no model {model.fallback!r} is configured{known}")
    return problems
