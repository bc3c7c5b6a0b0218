"""Fault steps of a scenario: what the harness does to the target, and when (`at`, seconds after the steady state).

A tagged union on `action`. Process actions (`signal`, `kill`, `hang`, `supervisor`) need the processes on
this host; `fault`, `oom` and `engine_dead` talk to fake-vllm's `/admin/faults`; `net` sets a toxic on the
TCP fault proxy the harness placed between the supervisor and the server; `api` calls the management API;
`http` calls any URL and `exec` runs a command (local targets only), for faults the harness has no step for.
"""

from __future__ import annotations

import signal as _signal
from typing import Annotated, Literal, assert_never

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
ReplicaIndex = Annotated[int, Field(ge=0, le=63)]
Seconds = Annotated[float, Field(ge=0)]
Scalar = str | int | float | bool | None


class Strict(BaseModel):
    """Frozen, and unknown keys are an error (reported with their path)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def signal_name(value: str) -> str:
    name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
    if name not in _signal.Signals.__members__:
        raise ValueError(f"unknown signal {value!r} (e.g. SIGKILL, SIGTERM, SIGSTOP, SIGCONT)")
    return name


# --- the steps --------------------------------------------------------------------------------------


class ModelRef(Strict):
    model: ModelId
    # One replica of a model with `replicas`. Left out: replica 0 for faults on the server (its only one for
    # a model of one replica); the whole model for `api`.
    replica: ReplicaIndex | None = None


class ProcessRef(Strict):
    model: ModelId
    # The whole process group (the server and its engine children) or the main pid only. Left out: the group,
    # unless `process` names one process of it.
    group: bool | None = None
    replica: ReplicaIndex | None = None  # left out: the model's `pid` (its lead replica's)
    # One process of the model's group by name, alone: "VLLM::EngineCore" is how vLLM's engine dies or hangs
    # while its API server lives on.
    process: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @model_validator(mode="after")
    def _one_process_or_group(self) -> ProcessRef:
        if self.process is not None and self.group:
            raise ValueError("process names one process of the group: leave group out (or false)")
        return self

    @property
    def whole_group(self) -> bool:
        return self.process is None if self.group is None else self.group


class _Step(Strict):
    at: Seconds = 0.0
    note: str | None = None


class NoneStep(_Step):
    action: Literal["none"]


class SignalStep(_Step):
    action: Literal["signal"]
    target: ProcessRef
    signal: str

    _check_signal = field_validator("signal")(signal_name)


class KillStep(_Step):
    action: Literal["kill"]
    target: ProcessRef


class HangStep(_Step):
    """SIGSTOP, and SIGCONT after `for` seconds when given: the port stays open and nothing answers."""

    action: Literal["hang"]
    target: ProcessRef
    duration: Seconds | None = Field(default=None, alias="for")


class OomStep(_Step):
    action: Literal["oom"]
    target: ModelRef


class EngineDeadStep(_Step):
    action: Literal["engine_dead"]
    target: ModelRef
    exit_after: Seconds = 0.5


class FaultStep(_Step):
    action: Literal["fault"]
    target: ModelRef
    set: dict[str, Scalar] = Field(min_length=1)


# Toxiproxy's toxics and their attributes (milliseconds, KB/s).
TOXIC_ATTRIBUTES: dict[str, tuple[set[str], set[str]]] = {
    "latency": ({"latency"}, {"jitter"}),
    "reset_peer": (set(), {"timeout"}),
    "blackhole": (set(), set()),
    "timeout": (set(), {"timeout"}),
    "bandwidth": ({"rate"}, set()),
}


class NetStep(_Step):
    action: Literal["net"]
    target: ModelRef
    toxic: Literal["latency", "reset_peer", "blackhole", "timeout", "bandwidth"]
    attributes: dict[str, Annotated[int, Field(ge=0)]] = {}
    stream: Literal["downstream", "upstream", "both"] = "downstream"
    duration: Seconds | None = Field(default=None, alias="for")

    @model_validator(mode="after")
    def _attributes_fit_toxic(self) -> NetStep:
        required, optional = TOXIC_ATTRIBUTES[self.toxic]
        given = set(self.attributes)
        if missing := required - given:
            raise ValueError(f"toxic {self.toxic} needs attributes {sorted(missing)}")
        if unknown := given - required - optional:
            raise ValueError(f"toxic {self.toxic} has no attributes {sorted(unknown)}")
        return self


class ApiStep(_Step):
    """A management API call; `restart` may name one replica (`?replica=N`) or be `rolling` (`?rolling=true`)."""

    action: Literal["api"]
    target: ModelRef
    operation: Literal["start", "stop", "restart"]
    force: bool = False
    concurrent: Annotated[int, Field(ge=1, le=10)] = 1
    rolling: bool = False

    @model_validator(mode="after")
    def _restart_options(self) -> ApiStep:
        if self.operation != "restart" and (self.rolling or self.target.replica is not None):
            raise ValueError("rolling and target.replica go with operation: restart only")
        if self.rolling and self.target.replica is not None:
            raise ValueError("a rolling restart restarts every replica: leave target.replica out")
        return self


class SupervisorStep(_Step):
    """Signal the supervisor itself (local target only) and start it again on the same config and state."""

    action: Literal["supervisor"]
    signal: str = "SIGKILL"
    restart_after: Seconds | None = 0.5

    _check_signal = field_validator("signal")(signal_name)


class HttpStep(_Step):
    """Call any URL, as Chaos Toolkit's HTTP provider does: a fault the harness has no step for (a staging
    load balancer's admin API, a feature flag). `{api}` in the URL is the supervisor's API URL. A status other
    than `expect_status` (when given) fails the step."""

    action: Literal["http"]
    url: Annotated[str, Field(pattern=r"^(https?://|\{api\})")]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = {}
    json_body: dict[str, Scalar | list[Scalar] | dict[str, Scalar]] | None = Field(default=None, alias="json")
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    expect_status: Annotated[int, Field(ge=100, le=599)] | None = None


class ExecStep(_Step):
    """Run a command on this host (local targets only), with no shell: `command` is the argv. `{api}` in an
    argument is the supervisor's API URL. An exit status other than `expect_exit` (null: any) fails the step."""

    action: Literal["exec"]
    command: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    expect_exit: Annotated[int, Field(ge=0, le=255)] | None = 0


# The members, plain: what `match` narrows and what the tests enumerate. `Step` adds the tag for pydantic.
AnyStep = (
    NoneStep
    | SignalStep
    | KillStep
    | HangStep
    | OomStep
    | EngineDeadStep
    | FaultStep
    | NetStep
    | ApiStep
    | SupervisorStep
    | HttpStep
    | ExecStep
)
Step = Annotated[AnyStep, Field(discriminator="action")]


def step_model(step: Step) -> str | None:
    """The model a step acts on; None for steps that act on no one model."""
    match step:
        case SignalStep() | KillStep() | HangStep():  # a process of the model
            return step.target.model
        case OomStep() | EngineDeadStep() | FaultStep() | NetStep() | ApiStep():  # the model itself
            return step.target.model
        case NoneStep() | SupervisorStep() | HttpStep() | ExecStep():
            return None
        case _:
            assert_never(step)


def step_replica(step: Step) -> int | None:
    """The replica a step names, if any."""
    match step:
        case SignalStep() | KillStep() | HangStep() | OomStep() | EngineDeadStep() | FaultStep() | NetStep():
            return step.target.replica
        case ApiStep():
            return step.target.replica
        case NoneStep() | SupervisorStep() | HttpStep() | ExecStep():
            return None
        case _:
            assert_never(step)


def step_end(step: Step) -> float:
    """Seconds after the steady state at which the step's effect is over (its `for`, when it has one)."""
    match step:
        case HangStep() | NetStep():
            return step.at + (step.duration or 0.0)
        case NoneStep() | SignalStep() | KillStep() | OomStep() | EngineDeadStep() | FaultStep() | ApiStep():
            return step.at
        case SupervisorStep() | HttpStep() | ExecStep():
            return step.at  # restart_after and a command's run are inside the step, not effects that outlast it
        case _:
            assert_never(step)
