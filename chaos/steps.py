"""Fault steps of a scenario: what the harness does to the target, and when (`at`, seconds after the steady state).

A tagged union on `action`. Process actions (`signal`, `kill`, `hang`, `supervisor`) need the processes on
this host; `fault`, `oom` and `engine_dead` talk to fake-vllm's `/admin/faults`; `net` sets a toxic on the
TCP fault proxy the harness placed between the supervisor and the server; `api` calls the management API.
"""

from __future__ import annotations

import signal as _signal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
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


class ProcessRef(Strict):
    model: ModelId
    group: bool = True  # the whole process group (the server and its engine children) or the main pid only


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
    action: Literal["api"]
    target: ModelRef
    operation: Literal["start", "stop", "restart"]
    force: bool = False
    concurrent: Annotated[int, Field(ge=1, le=10)] = 1


class SupervisorStep(_Step):
    """Signal the supervisor itself (local target only) and start it again on the same config and state."""

    action: Literal["supervisor"]
    signal: str = "SIGKILL"
    restart_after: Seconds | None = 0.5

    _check_signal = field_validator("signal")(signal_name)


Step = Annotated[
    NoneStep
    | SignalStep
    | KillStep
    | HangStep
    | OomStep
    | EngineDeadStep
    | FaultStep
    | NetStep
    | ApiStep
    | SupervisorStep,
    Field(discriminator="action"),
]
PROCESS_ACTIONS = frozenset({"signal", "kill", "hang", "supervisor"})


def step_model(step: Step) -> str | None:
    target = getattr(step, "target", None)
    return target.model if target is not None else None


def step_end(step: Step) -> float:
    """Seconds after the steady state at which the step's effect is over (its `for`, when it has one)."""
    duration = getattr(step, "duration", None)
    return step.at + (duration or 0.0)
