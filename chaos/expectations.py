"""What a scenario expects: the steady state before the faults, and what the supervisor must do about them.

In the file each expectation is a one-key mapping (`- restarts: {model: m1, count: 1}`), so `ExpectItem`
has one optional field per kind. Code never reads those fields by name: it asks `item.expectation` for the
one that is set, typed as the `Expectation` union, and `match`es on it, so mypy proves every kind is handled.
"""

from __future__ import annotations

from typing import Annotated, Literal, assert_never

from pydantic import Field, model_validator

from chaos.steps import ModelId, ReplicaIndex, Scalar, Seconds, Strict


class Healthy(Strict):
    model: ModelId
    within: Annotated[float, Field(gt=0)]
    since: Literal["start", "faults"] = "faults"
    replica: ReplicaIndex | None = None  # this replica; left out: the model (healthy while any replica is)


class SteadyItem(Strict):
    healthy: Healthy


class Restarts(Strict):
    model: ModelId
    replica: ReplicaIndex | None = None  # this replica's restarts; left out: every replica's
    count: Annotated[int, Field(ge=0)] | None = None
    min: Annotated[int, Field(ge=0)] | None = None
    max: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Restarts:
        if self.count is None and self.min is None and self.max is None:
            raise ValueError("give count, or min and/or max")
        if self.count is not None and (self.min is not None or self.max is not None):
            raise ValueError("give count, or min/max, not both")
        return self


class StateIs(Strict):
    model: ModelId
    is_: Literal["stopped", "starting", "healthy", "unhealthy", "backoff", "stopping", "failed"] = Field(alias="is")
    within: Annotated[float, Field(gt=0)]
    stays: bool = False  # once reached, never left until the end of the observation
    replica: ReplicaIndex | None = None  # this replica; left out: the model's state (its most alive replica's)


class BackoffDelays(Strict):
    model: ModelId
    delays: list[Seconds] = Field(min_length=1)
    tolerance: Seconds = 0.3


class FailureCause(Strict):
    model: ModelId
    is_: Literal["crash", "unhealthy", "oom", "port_in_use", "engine_dead", "startup_timeout", "stalled"] = Field(
        alias="is"
    )
    advice_contains: str | None = None


class ApiFields(Strict):
    model: ModelId
    fields: dict[str, Scalar] = Field(min_length=1)


class EventsSeen(Strict):
    model: ModelId
    include: list[str] = []  # these kinds appear, in this order (other events may come between)
    exclude: list[str] = []  # these kinds never appear after the steady state
    replica: ReplicaIndex | None = None  # only this replica's events; left out: every replica's


class Gap(Strict):
    model: ModelId
    from_: str = Field(alias="from")
    to: str
    seconds: Seconds
    tolerance: Seconds = 0.3


class Requests(Strict):
    """The client's view: the scenario's `load` requests that named this model, as the gateway answered them.

    A request fails when it timed out, its status was not 200, it carried an error event, or its stream did
    not end with `data: [DONE]` after only data events (chaos.traffic.failure). `window: after_fault` judges
    only the requests sent after the first fault took effect (those in flight at that moment are left out);
    `stream` only the streamed or the plain ones (a plain answer is always retryable: no byte of it went out
    before it was whole).
    """

    model: ModelId
    failed_max: Annotated[int, Field(ge=0)] | None = None
    p99_max: Annotated[float, Field(gt=0)] | None = None  # seconds, over every request judged, failed or not
    fallback_min: Annotated[int, Field(ge=0)] | None = None  # answered by the model's fallback at least this often
    sent_min: Annotated[int, Field(ge=1)] = 1  # fewer sent means the load did not run: nothing was proven
    window: Literal["all", "after_fault"] = "all"
    stream: bool | None = None  # only the streamed (true) or plain (false) requests; left out: both

    @model_validator(mode="after")
    def _some_bound(self) -> Requests:
        if self.failed_max is None and self.p99_max is None and self.fallback_min is None:
            raise ValueError("give failed_max, p99_max and/or fallback_min")
        return self


class NoOrphans(Strict):
    """`no_orphans: true`: no process or container of the scenario outlives its run. It has no settings; the
    type exists so that this expectation is a member of the union like every other."""


Expectation = (
    Healthy | Restarts | StateIs | BackoffDelays | FailureCause | NoOrphans | ApiFields | EventsSeen | Gap | Requests
)
TimedExpectation = Healthy | StateIs  # those with a `within`: the observation waits for them


class ExpectItem(Strict):
    """One expectation; exactly one key is set."""

    healthy_within: Healthy | None = None
    restarts: Restarts | None = None
    state: StateIs | None = None
    backoff_delays: BackoffDelays | None = None
    failure_cause: FailureCause | None = None
    no_orphans: Literal[True] | None = None
    api: ApiFields | None = None
    events: EventsSeen | None = None
    gap: Gap | None = None
    requests: Requests | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ExpectItem:
        if len(self.model_fields_set) != 1:
            raise ValueError(f"one expectation per item, got {sorted(self.model_fields_set) or 'none'}")
        return self

    @property
    def kind(self) -> str:
        """The key the file used (`restarts`, `no_orphans`, ...): the name verdicts and plans show."""
        return next(iter(self.model_fields_set))

    @property
    def expectation(self) -> Expectation:
        """The one expectation set, as its own type."""
        if self.no_orphans:
            return NoOrphans()
        settings: tuple[Expectation | None, ...] = (
            self.healthy_within,
            self.restarts,
            self.state,
            self.backoff_delays,
            self.failure_cause,
            self.api,
            self.events,
            self.gap,
            self.requests,
        )
        # _exactly_one guarantees one; the tests check every field is listed here.
        return next(spec for spec in settings if spec is not None)

    @property
    def model(self) -> str | None:
        """The model the expectation is about; None for those about the whole scenario."""
        return expectation_model(self.expectation)


def expectation_model(spec: Expectation) -> str | None:
    match spec:
        case Healthy() | Restarts() | StateIs() | BackoffDelays() | FailureCause() | ApiFields() | EventsSeen() | Gap():
            return spec.model
        case Requests():
            return spec.model
        case NoOrphans():
            return None
        case _:
            assert_never(spec)


def expectation_replica(spec: Expectation) -> int | None:
    """The replica an expectation is about; None for the model as a whole (or no model)."""
    match spec:
        case Healthy() | Restarts() | StateIs() | EventsSeen():
            return spec.replica
        case BackoffDelays() | FailureCause() | ApiFields() | Gap() | Requests() | NoOrphans():
            return None
        case _:
            assert_never(spec)
