"""The building blocks of the config's sections: value types that read YAML the way operators write it
(sizes like "8g", numbers given for text, ports), their checks, and the frozen base every section shares."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, ValidationInfo
from pydantic_core import core_schema

from supervisor.config.messages import show

K = TypeVar("K")
V = TypeVar("V")


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


def text_value(value: object) -> object:
    # `--port: 8001` and `CUDA_VISIBLE_DEVICES: 0` are common in YAML: numbers become their text. Booleans are
    # refused, because YAML turns yes/no/on/off into booleans and their text would surprise.
    if isinstance(value, bool):
        # pydantic turns ValueError (not TypeError) into a located validation error
        raise ValueError("must be a string: YAML read this as true/false, so quote it")  # noqa: TRY004
    return str(value) if isinstance(value, int | float) else value


def env_name(value: object) -> object:
    if isinstance(value, str) and (not value or "=" in value or "\0" in value):
        raise ValueError(f"{value!r} is not a valid environment variable name")
    return value


def byte_size(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    # Binary units however written: "8g", "8G", "8GB" and "8GiB" are all 8 * 2**30 bytes.
    match = re.fullmatch(r"(\d+)\s*([bkmgt]?)(ib|b)?", value.strip().lower()) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0 or (match[2], match[3]) == ("", "ib"):
        raise ValueError(f'must be a size like "8g" or "512m", or a number of bytes (got {show(value)})')
    return int(match[1]) * 1024 ** "bkmgt".index(match[2] or "b")


def gpu_list(value: object) -> object:
    if value is None or value == "all":
        return value
    if isinstance(value, list | tuple) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        return tuple(value)
    raise ValueError(f'must be "all", a list of GPU indices like [0, 1], or null (got {show(value)})')


def container_port(value: object) -> object:
    match = re.fullmatch(r"(\d{1,5})(/(tcp|udp|sctp))?", str(value))
    if match is None or not 1 <= int(match[1]) <= 65535:
        raise ValueError(f'container port must look like "8000/tcp" or "8000" (got {show(value)})')
    return value if match[2] else f"{match[1]}/tcp"


def host_volume(value: object) -> object:
    if isinstance(value, str) and value.startswith("~"):
        return str(Path(value).expanduser())
    if isinstance(value, str) and not value.startswith("/") and "/" in value:
        raise ValueError(f"host path {value!r} must be absolute (or ~/..., or a named volume without '/')")
    return value


def container_path(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(r"/[^:]*(:(ro|rw))?", value):
        raise ValueError(f'must be an absolute container path, optionally ending in ":ro" (got {value!r})')
    return value


Text = Annotated[str, BeforeValidator(text_value)]
NonEmpty = Annotated[str, Field(min_length=1)]
EnvName = Annotated[str, BeforeValidator(env_name)]
Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True)]
ByteSize = Annotated[int, BeforeValidator(byte_size)]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
RestartPolicyName = Literal["no", "on-failure", "always", "unless-stopped"]


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    return (base / path.expanduser()).resolve()


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
