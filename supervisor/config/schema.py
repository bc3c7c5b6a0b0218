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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from supervisor.config.files import DocumentError, load_json, load_yaml
from supervisor.config.messages import describe, show, step, suggest
from supervisor.core.states import RuntimeKind

MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# FluidMCP's own sections (MCP servers, its cloud models, its GitHub token): a FluidMCP file carries them next
# to llmModels, and refusing them would break "loads unchanged". Anything else at the top is a typo.
FLUIDMCP_SECTIONS = frozenset({"mcpServers", "replicateModels", "github_token"})
TOP_LEVEL_KEYS = ("supervisor", "llmModels")

K = TypeVar("K")
V = TypeVar("V")


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


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping, so a frozen ModelConfig can be hashed and shared without copying."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data or {})

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        key_type, value_type = get_args(source) or (Any, Any)
        as_dict = core_schema.dict_schema(handler.generate_schema(key_type), handler.generate_schema(value_type))
        return core_schema.no_info_after_validator_function(
            cls, as_dict, serialization=core_schema.plain_serializer_function_ser_schema(dict)
        )


def _text(value: object) -> object:
    # `--port: 8001` and `CUDA_VISIBLE_DEVICES: 0` are common in YAML: numbers become their text. Booleans are
    # refused, because YAML turns yes/no/on/off into booleans and their text would surprise.
    if isinstance(value, bool):
        # pydantic turns ValueError (not TypeError) into a located validation error
        raise ValueError("must be a string: YAML read this as true/false, so quote it")  # noqa: TRY004
    return str(value) if isinstance(value, int | float) else value


def _env_name(value: object) -> object:
    if isinstance(value, str) and (not value or "=" in value or "\0" in value):
        raise ValueError(f"{value!r} is not a valid environment variable name")
    return value


def _byte_size(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"(\d+)\s*([bkmgt]?)b?", value.strip().lower()) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0:
        raise ValueError(f'must be a size like "8g" or "512m", or a number of bytes (got {show(value)})')
    return int(match[1]) * 1024 ** "bkmgt".index(match[2] or "b")


def _gpus(value: object) -> object:
    if value is None or value == "all":
        return value
    if isinstance(value, list | tuple) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        return tuple(value)
    raise ValueError(f'must be "all", a list of GPU indices like [0, 1], or null (got {show(value)})')


def _container_port(value: object) -> object:
    match = re.fullmatch(r"(\d{1,5})(/(tcp|udp|sctp))?", str(value))
    if match is None or not 1 <= int(match[1]) <= 65535:
        raise ValueError(f'container port must look like "8000/tcp" or "8000" (got {show(value)})')
    return value if match[2] else f"{match[1]}/tcp"


def _host_volume(value: object) -> object:
    if isinstance(value, str) and value.startswith("~"):
        return str(Path(value).expanduser())
    if isinstance(value, str) and not value.startswith("/") and "/" in value:
        raise ValueError(f"host path {value!r} must be absolute (or ~/..., or a named volume without '/')")
    return value


def _container_path(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(r"/[^:]*(:(ro|rw))?", value):
        raise ValueError(f'must be an absolute container path, optionally ending in ":ro" (got {value!r})')
    return value


Text = Annotated[str, BeforeValidator(_text)]
NonEmpty = Annotated[str, Field(min_length=1)]
EnvName = Annotated[str, BeforeValidator(_env_name)]
Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True)]
ByteSize = Annotated[int, BeforeValidator(_byte_size)]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
RestartPolicyName = Literal["no", "on-failure", "always", "unless-stopped"]


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    return (base / path.expanduser()).resolve()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiSettings(_Section):
    host: NonEmpty = "127.0.0.1"
    port: Annotated[Count, Field(ge=0, le=65535)] = 8099  # 0: any free port (tests)


class SupervisorSettings(_Section):
    api: ApiSettings = ApiSettings()
    state_dir: Path = Field(Path(".llm-supervisor"), validate_default=True)
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "LLM_SUPERVISOR_TOKEN"  # noqa: S105 (a variable's name, not a secret)
    log_max_bytes: Annotated[Count, Field(ge=1024)] = 10 * 1024 * 1024
    log_backups: Annotated[Count, Field(ge=0)] = 5

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)


class Endpoints(_Section):
    base_url: str | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", value):
            raise ValueError(f"must be an http(s) URL like http://127.0.0.1:8001/v1 (got {value!r})")
        return value


class DockerSettings(_Section):
    image: NonEmpty
    ports: FrozenMap[Annotated[str, BeforeValidator(_container_port)], Port] = FrozenMap()
    gpus: Annotated[Literal["all"] | tuple[int, ...] | None, BeforeValidator(_gpus)] = None
    ipc_mode: NonEmpty | None = None
    shm_size: ByteSize | None = None
    volumes: FrozenMap[
        Annotated[str, BeforeValidator(_host_volume)], Annotated[str, BeforeValidator(_container_path)]
    ] = FrozenMap()
    env: FrozenMap[EnvName, Text] = FrozenMap()
    pull: Annotated[bool, Field(strict=True)] = False
    mem_limit: ByteSize | None = None


class ModelConfig(_Section):
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
    success_exit_codes: tuple[Annotated[Count, Field(ge=0, le=255)], ...] = ()

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
        return None if value is None else _resolve(value, info)

    @property
    def probe_root_url(self) -> str | None:
        """The server root that probes go to: base_url without a trailing /v1 (docs/design/defects.md #1)."""
        if self.endpoints.base_url is None:
            return None
        root = self.endpoints.base_url.rstrip("/")
        return root.removesuffix("/v1")


class Config(_Section):
    supervisor: SupervisorSettings
    models: dict[str, ModelConfig]

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
        root = model.probe_root_url
        if root is not None and root in owners:
            problems.append(
                f"llmModels.{model_id}.endpoints.base_url: the same server as llmModels."
                f"{owners[root]} ({root}); each model needs its own port"
            )
        elif root is not None:
            owners[root] = model_id
    return problems
