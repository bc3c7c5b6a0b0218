"""How recoveries and restarts are counted from a timeline (GET /api/status), and how measured usage is
attributed and summed (GET /api/diagnostics, /metrics)."""

from __future__ import annotations

from supervisor.core.states import EventKind, State
from supervisor.core.views import TimelineEvent
from supervisor.loop.heal import Recoveries, count_recoveries, restarts_total
from supervisor.loop.resources import FleetUsage, LiveRun, ModelUsage
from supervisor.runtime.gpu import Gpu, GpuProcess, GpuReading
from supervisor.runtime.usage import Usage


def timeline(*entries: tuple[str, EventKind, str | None, int]) -> list[TimelineEvent]:
    return [
        TimelineEvent(seq, 0.0, model, kind, State.STARTING, None, reason, replica)
        for seq, (model, kind, reason, replica) in enumerate(entries, 1)
    ]


def test_an_attempt_is_the_spawn_after_a_failure_and_succeeds_when_healthy_comes_first() -> None:
    """crash, restart, crash before healthy (attempt failed), restart, healthy (attempt succeeded)."""
    events = timeline(
        ("m", EventKind.SPAWNED, None, 0),
        ("m", EventKind.HEALTHY, None, 0),  # a first start is no recovery
        ("m", EventKind.EXITED, "crash", 0),
        ("m", EventKind.SPAWNED, "crash", 0),
        ("m", EventKind.EXITED, "oom", 0),
        ("m", EventKind.SPAWNED, "oom", 0),
        ("m", EventKind.HEALTHY, None, 0),
        ("m", EventKind.HEALTHY, None, 0),  # healthy again (after unhealthy) is not a second success
    )
    assert count_recoveries(events) == Recoveries(2, 1)
    assert count_recoveries(events).success_rate == 0.5
    assert restarts_total(events) == 2


def test_replicas_and_requested_stops_are_told_apart() -> None:
    """A failure of replica 1 is recovered by replica 1's spawn only; an exit without a cause is no failure."""
    events = timeline(
        ("m", EventKind.EXITED, "crash", 1),
        ("m", EventKind.SPAWNED, "manual", 0),  # another replica: not replica 1's recovery
        ("m", EventKind.HEALTHY, None, 0),
        ("m", EventKind.EXITED, None, 0),  # a requested stop
        ("m", EventKind.SPAWNED, None, 0),
        ("m", EventKind.SPAWNED, None, 1),  # an operator's start after the failure is an attempt too
        ("m", EventKind.HEALTHY, None, 1),
    )
    assert count_recoveries(events) == Recoveries(1, 1)
    assert Recoveries(0, 0).success_rate is None


def test_fleet_usage_names_owners_and_sums_replicas() -> None:
    """A GPU process belongs to the run whose processes include it (model/replica for several replicas), else
    foreign; a model's figures sum its replicas; GPU figures are None when NVML gave none."""
    gpu = Gpu(0, "H200", 80, 50, (GpuProcess(11, 5), GpuProcess(21, 7), GpuProcess(99, 1)))
    runs = (
        (LiveRun("m", "m/0", 10), Usage((10, 11), 100, 1.5)),
        (LiveRun("m", "m/1", 20), Usage((20, 21), 200, 2.5)),
        (LiveRun("solo", "solo", 30), Usage((30,), 50, 0.5)),
    )
    usage = FleetUsage(runs, GpuReading((gpu,)))
    assert [usage.owner_of(pid) for pid in (11, 21, 30, 99)] == ["m/0", "m/1", "solo", "foreign"]
    assert usage.by_model() == {"m": ModelUsage(300, 12, 4.0), "solo": ModelUsage(50, 0, 0.5)}
    blind = FleetUsage(runs, GpuReading((), "NVML: Driver Not Loaded"))
    assert blind.by_model()["m"] == ModelUsage(300, None, 4.0)
