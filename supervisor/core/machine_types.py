"""Values of the per-model state machine: settings, the snapshot, the events it accepts, the actions it emits.

All frozen and free of IO, so a test can build any situation by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from supervisor.core.adapt import Floors
from supervisor.core.policy import Backoff, Budget, RestartPolicy
from supervisor.core.states import Cause, EventKind, ExitStatus, State


class IllegalEvent(Exception):
    """An event arrived that the model's current state cannot accept; nothing was changed."""


class Desired(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class Teardown(StrEnum):
    """Why a live run is being stopped; decides what follows once its group is gone."""

    STOP = "stop"  # operator stop: stay stopped
    RESTART = "restart"  # operator restart: start again at once
    FAILURE = "failure"  # unhealthy or start-up timeout: restart per policy, counted against the budget
    SHUTDOWN = "shutdown"  # the supervisor is exiting: stopped, desired state untouched


LIVE = frozenset({State.STARTING, State.HEALTHY, State.UNHEALTHY})
# Restarts without budget (see Exited.retry) allowed between two runs that served, or an operator's start:
# each removes what made a run fail, and a cause that keeps coming back is left to the budget.
FREE_RETRY_LIMIT = 3


@dataclass(frozen=True, slots=True)
class Settings:
    """The part of a model's config the machine decides with."""

    restart_policy: RestartPolicy
    success_exit_codes: frozenset[int]
    backoff: Backoff
    budget: Budget
    has_probe: bool
    startup_timeout: float
    startup_probe_interval: float
    health_check_interval: float
    health_check_timeout: float
    health_failure_threshold: int
    stop_timeout: float
    startup_stop_timeout: float = 5.0  # the stop_timeout of a run still loading
    adapt: Floors | None = None  # smart recovery's floors when `adapt` is on (docs/recovery.md); None: off
    max_memory: int | None = None  # bytes of resident memory over the run's processes; None: no limit
    max_gpu_memory: int | None = None  # bytes of GPU memory held by the run's processes; None: no limit
    memory_check_interval: float = 5.0  # how often the loop samples a run's memory when it has a limit


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the machine knows about one model. All times are on the monotonic clock."""

    state: State = State.STOPPED
    desired: Desired = Desired.RUNNING
    run: int = 0  # number of the current (or last) run
    live: bool = False  # the run's main process is alive
    group_alive: bool = False  # some process of the run is still alive
    attempt: int = 0  # backoff attempt: index into the delay schedule
    restart_times: tuple[float, ...] = ()  # automatic restarts that count against the budget
    restart_count: int = 0  # automatic restarts since the operator last started the model
    spawned_at: float | None = None
    healthy_since: float | None = None
    unhealthy_since: float | None = None  # health ended here: time after it does not earn a backoff reset
    last_restart_at: float | None = None
    consecutive_failures: int = 0
    probe_in_flight: bool = False
    probe_started_at: float | None = None
    next_probe_at: float | None = None
    startup_deadline: float | None = None
    kill_at: float | None = None
    restart_at: float | None = None  # spawn once this passes and the old group is gone
    restart_reason: str | None = None
    teardown: Teardown | None = None
    run_cause: Cause | None = None  # diagnosed from this run's output
    has_cuda_oom: bool = False  # this run printed a CUDA OOM (docs/design/defects.md #11: cleared by a new run)
    failure_cause: Cause | None = None  # why the last run failed; cleared when a run becomes healthy
    last_exit: ExitStatus | None = None
    last_probe_at: float | None = None
    health_message: str | None = None
    free_retries: int = 0  # restarts without budget since a run last served or the operator started it


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Boot:
    """The supervisor starts looking after the model (first start, or after a supervisor restart)."""


@dataclass(frozen=True, slots=True)
class StartRequested:
    pass


@dataclass(frozen=True, slots=True)
class StopRequested:
    force: bool = False


@dataclass(frozen=True, slots=True)
class RestartRequested:
    # When the operator asked (monotonic). A restart asked for before the current run began is already
    # satisfied by that run: this is how fifty concurrent restarts make one new run (docs/design/defects.md #7).
    requested_at: float | None = None


@dataclass(frozen=True, slots=True)
class ShutdownRequested:
    pass


@dataclass(frozen=True, slots=True)
class Spawned:
    run: int
    pid: int | None


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    run: int
    message: str
    cause: Cause = Cause.CRASH  # e.g. port_in_use when the runtime could tell why


@dataclass(frozen=True, slots=True)
class Exited:
    run: int
    status: ExitStatus
    # Set when the owner removed what made this run fail (adapted its args, stopped our own leftover that held
    # its port): restart at once, without spending the restart budget (up to FREE_RETRY_LIMIT times).
    retry: str | None = None


@dataclass(frozen=True, slots=True)
class GroupGone:
    run: int


@dataclass(frozen=True, slots=True)
class ProbeDone:
    run: int
    ok: bool
    message: str | None
    manual: bool = False  # an operator's one-off probe: reported, never counted


@dataclass(frozen=True, slots=True)
class Diagnosed:
    run: int
    cause: Cause  # the run's primary cause so far
    finding: str  # what was just recognised, e.g. "cuda_oom"
    has_cuda_oom: bool


@dataclass(frozen=True, slots=True)
class Stalled:
    """Requests to this run made no progress: the gateway saw no output byte for progress_timeout, or an
    inference probe timed out. Seen only from requests: a hung engine keeps /health at 200."""

    run: int
    detail: str


@dataclass(frozen=True, slots=True)
class MemorySampled:
    """What the run's processes held when the loop last looked (only for a model with a memory limit)."""

    run: int
    rss: int  # bytes of resident memory, summed over the run's processes
    gpu: int | None  # bytes of GPU memory they hold; None where NVML could not say


@dataclass(frozen=True, slots=True)
class Tick:
    """Time has passed; deadlines that are due now fire."""


Event = (
    Boot
    | StartRequested
    | StopRequested
    | RestartRequested
    | ShutdownRequested
    | Spawned
    | SpawnFailed
    | Exited
    | GroupGone
    | ProbeDone
    | Diagnosed
    | Stalled
    | MemorySampled
    | Tick
)

# --- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    run: int
    reason: str | None  # None for a first start; "manual" or a Cause value for a restart


@dataclass(frozen=True, slots=True)
class Terminate:
    run: int


@dataclass(frozen=True, slots=True)
class Kill:
    run: int


@dataclass(frozen=True, slots=True)
class Probe:
    run: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Record:
    """A timeline entry; `state` is the state the model is in once this entry is true."""

    kind: EventKind
    state: State
    detail: str | None = None
    reason: str | None = None


Action = Spawn | Terminate | Kill | Probe | Record


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to an operator request."""

    accepted: bool
    message: str


@dataclass(frozen=True, slots=True)
class Step:
    snapshot: Snapshot
    actions: tuple[Action, ...] = ()
    reply: Reply | None = None


def next_deadline(snap: Snapshot) -> float | None:
    """The earliest moment a `Tick` could change something, or None when only IO can.

    Each deadline counts only while the tick could act on it: a restart that waits for the old group to go,
    or a probe already in flight, wakes nobody (otherwise the loop would spin on a deadline in the past).
    """
    candidates: list[float | None] = []
    if snap.state is State.STOPPING and snap.group_alive:
        candidates.append(snap.kill_at)
    if snap.state is State.STARTING:
        candidates.append(snap.startup_deadline)
    if snap.state is State.BACKOFF and not snap.group_alive:
        candidates.append(snap.restart_at)
    if snap.state in LIVE and snap.live and not snap.probe_in_flight:
        candidates.append(snap.next_probe_at)
    present = [t for t in candidates if t is not None]
    return min(present) if present else None
