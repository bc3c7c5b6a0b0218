"""What one model's container looks like, as plain values, and its translation into Engine API arguments.

`ContainerSpec` holds only plain values (no config objects, no client), so the translation is a pure function
that a test can check against the Engine API payload without a daemon. Labels name the model and the run, so
a supervisor started again finds the containers a previous life left behind.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from docker.types import DeviceRequest

MODEL_LABEL = "llm-supervisor.model"
RUN_LABEL = "llm-supervisor.run"
# Which supervisor (by its state directory) made a container: two supervisors on one host may both have a
# model called "qwen", and one must never remove the other's containers.
INSTANCE_LABEL = "llm-supervisor.instance"

Gpus = Literal["all"] | Sequence[int | str] | None


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything `docker run` would be told for one model, except the run number."""

    image: str
    # None keeps the image's ENTRYPOINT; the supervisor's config sets it to [command] (see from_model_config).
    entrypoint: Sequence[str] | None = None
    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # "8000/tcp" -> host port. Published on host_ip only: a vLLM server has no auth of its own.
    ports: Mapping[str, int] = field(default_factory=dict)
    host_ip: str = "127.0.0.1"
    gpus: Gpus = None
    ipc_mode: str | None = None
    shm_size: int | str | None = None
    # host path or named volume -> container path, optionally ending in ":ro" / ":rw"
    volumes: Mapping[str, str] = field(default_factory=dict)
    mem_limit: int | str | None = None
    stop_timeout: float = 30.0
    pull: bool = False
    instance: str | None = None


def device_requests(gpus: Gpus) -> list[DeviceRequest]:
    """`gpus: all` or `gpus: [0, 1]` as the device requests `docker run --gpus` sends."""
    if gpus is None:
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[str(gpu) for gpu in gpus], capabilities=[["gpu"]])]


def _port_and_protocol(port: str) -> tuple[int, str]:
    number, _, protocol = port.partition("/")
    return int(number), protocol or "tcp"


def container_name(model_id: str, run_number: int) -> str:
    """A readable, unique name: `docker ps` shows which model and run a container is."""
    # The suffix keeps a leftover of an earlier supervisor life from blocking the name of a new run. A
    # replica's name ("qwen#1") has a character Docker refuses in names; labels keep it as it is.
    readable = model_id.replace("#", "-r")
    return f"llm-supervisor-{readable}-{run_number}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class CreateArgs:
    """Arguments of the low-level `APIClient.create_container` and `create_host_config` for one run."""

    container: dict[str, Any]
    host_config: dict[str, Any]


def create_args(spec: ContainerSpec, model_id: str, run_number: int) -> CreateArgs:
    """What to tell the engine to create `spec` as run `run_number` of `model_id`."""
    container: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "name": container_name(model_id, run_number),
        "labels": {MODEL_LABEL: model_id, RUN_LABEL: str(run_number)}
        | ({INSTANCE_LABEL: spec.instance} if spec.instance else {}),
        "environment": dict(spec.env),
        # "8000/tcp" as the SDK wants it, (8000, "tcp"): a string would get a second "/tcp" appended.
        "ports": [_port_and_protocol(port) for port in spec.ports],
        # The engine's StopTimeout: a person's `docker stop` waits as long as the supervisor does.
        "stop_timeout": math.ceil(spec.stop_timeout),
        "tty": False,
        "stdin_open": False,
    }
    if spec.entrypoint is not None:
        container["entrypoint"] = list(spec.entrypoint)
    host: dict[str, Any] = {
        "port_bindings": {port: (spec.host_ip, host_port) for port, host_port in spec.ports.items()},
        "binds": [f"{source}:{target}" for source, target in spec.volumes.items()],
        # The supervisor restarts; an engine restart policy would fight it.
        "restart_policy": {"Name": "no"},
    }
    if spec.gpus is not None:
        host["device_requests"] = device_requests(spec.gpus)
    if spec.ipc_mode is not None:
        host["ipc_mode"] = spec.ipc_mode
    if spec.shm_size is not None:
        host["shm_size"] = spec.shm_size
    if spec.mem_limit is not None:
        host["mem_limit"] = spec.mem_limit
        # Without this the limit only applies to RAM and the container swaps instead of being OOM-killed.
        host["memswap_limit"] = spec.mem_limit
    return CreateArgs(container, host)
