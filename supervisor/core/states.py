"""The words of the domain: a model's states, why a run failed, what a timeline event says happened, how a
run's main process ended, and which kind of runtime runs a model. Plain values, imported by every layer."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FAILED = "failed"


class Cause(StrEnum):
    """Why a run failed; exposed as `failure_cause`."""

    CRASH = "crash"
    UNHEALTHY = "unhealthy"
    OOM = "oom"
    PORT_IN_USE = "port_in_use"
    ENGINE_DEAD = "engine_dead"
    STARTUP_TIMEOUT = "startup_timeout"
    STALLED = "stalled"  # requests made no progress while /health may still have said 200
    MEMORY_LIMIT = "memory_limit"  # the run's processes held more than max_memory or max_gpu_memory
    COMMAND_NOT_FOUND = "command_not_found"  # the configured command is not on PATH (or no such file)


class EventKind(StrEnum):
    SPAWNED = "spawned"
    EXITED = "exited"
    PROBE_FAILED = "probe_failed"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    KILLED = "killed"
    STOPPED = "stopped"
    FAILED = "failed"
    OOM_DETECTED = "oom_detected"
    DIAGNOSED = "diagnosed"
    STARTUP_TIMEOUT = "startup_timeout"
    START_REQUESTED = "start_requested"
    STOP_REQUESTED = "stop_requested"
    RESTART_REQUESTED = "restart_requested"
    ADAPTED = "adapted"  # smart recovery changed an argument of the next run (docs/recovery.md)
    MEMORY_LIMIT = "memory_limit"  # the run went over max_memory or max_gpu_memory


class RuntimeKind(StrEnum):
    """What runs a model: a local process group, or a container through the Docker Engine."""

    PROCESS = "process"
    DOCKER = "docker"


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How the main process ended: an exit code, or the number of the signal that killed it."""

    code: int | None
    signal: int | None = None
    # Set by runtimes that know more than a code, e.g. Docker's OOMKilled flag.
    oom_killed: bool = False

    def describe(self) -> str:
        if self.signal is not None:
            return f"signal {self.signal}"
        return f"exit code {self.code}"
