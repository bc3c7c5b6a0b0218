"""Memory limits in the machine: a sample over max_memory or max_gpu_memory ends the run with cause memory_limit."""

from __future__ import annotations

from supervisor.core.machine_types import Exited, GroupGone, MemorySampled, Teardown, Terminate
from supervisor.core.policy import Budget, RestartPolicy
from supervisor.core.states import Cause, EventKind, ExitStatus, State
from supervisor.core.steps import mib
from tests.supervisor.test_machine import driver

GIB = 1 << 30


def test_a_sample_over_max_memory_tears_the_run_down_and_restarts_it_with_cause_memory_limit() -> None:
    """Over the limit: a memory_limit entry naming both figures, SIGTERM, then backoff with reason memory_limit."""
    d = driver(max_memory=8 * GIB)
    d.boot()
    d.healthy()
    step = d.feed(MemorySampled(1, rss=9 * GIB, gpu=None), d.now + 1)
    assert d.snap.state is State.STOPPING
    assert (d.snap.teardown, d.snap.failure_cause) == (Teardown.FAILURE, Cause.MEMORY_LIMIT)
    entry = d.records(EventKind.MEMORY_LIMIT)[-1]
    assert entry.detail == "resident memory 9216.0 MiB over max_memory 8192.0 MiB"
    assert (entry.reason, entry.state) == ("memory_limit", State.HEALTHY)
    assert Terminate(1) in step.actions
    assert d.snap.kill_at == d.now + 30
    exited = d.feed(Exited(1, ExitStatus(None, 15)), d.now + 1)
    assert exited.actions[0].reason == "memory_limit"  # type: ignore[union-attr]
    d.feed(GroupGone(1), d.now)
    assert d.snap.state is State.BACKOFF
    assert (d.snap.restart_reason, d.snap.restart_count, d.snap.failure_cause) == (
        "memory_limit",
        1,
        Cause.MEMORY_LIMIT,
    )
    assert d.snap.restart_at == d.now + 5


def test_gpu_memory_over_its_limit_counts_and_an_unknown_gpu_figure_does_not() -> None:
    """max_gpu_memory is judged on the GPU figure; None (NVML could not say) is never over it."""
    d = driver(max_gpu_memory=40 * GIB)
    d.boot()
    d.healthy()
    assert d.feed(MemorySampled(1, rss=100 * GIB, gpu=None)).actions == ()  # no max_memory: RSS is not judged
    assert d.snap.state is State.HEALTHY
    d.feed(MemorySampled(1, rss=0, gpu=41 * GIB))
    assert d.snap.failure_cause is Cause.MEMORY_LIMIT
    detail = d.records(EventKind.MEMORY_LIMIT)[-1].detail
    assert detail == "GPU memory 41984.0 MiB over max_gpu_memory 40960.0 MiB"


def test_a_sample_within_the_limits_or_of_another_run_changes_nothing() -> None:
    """At or under the limits, or a sample of an earlier run, or of a run being stopped: no action, same snapshot."""
    d = driver(max_memory=8 * GIB, max_gpu_memory=40 * GIB)
    d.boot()
    d.healthy()
    healthy = d.snap
    assert d.feed(MemorySampled(1, rss=8 * GIB, gpu=40 * GIB)).actions == ()
    assert d.feed(MemorySampled(0, rss=99 * GIB, gpu=None)).actions == ()
    assert d.snap == healthy
    d.feed(MemorySampled(1, rss=9 * GIB, gpu=None))
    stopping = d.snap
    assert d.feed(MemorySampled(1, rss=99 * GIB, gpu=None)).actions == ()  # already stopping
    assert d.snap == stopping


def test_a_loading_run_over_the_limit_is_stopped_too_and_under_no_it_stays_stopped() -> None:
    """A run still starting is judged as well; under restart_policy no the run ends and is not restarted."""
    d = driver(max_memory=GIB, restart_policy=RestartPolicy.NO, budget=Budget(3, None))
    d.boot()  # spawned, still loading
    d.feed(MemorySampled(1, rss=2 * GIB, gpu=None), d.now + 1)
    assert d.snap.state is State.STOPPING
    assert d.snap.kill_at == d.now + 5  # a loading run gets startup_stop_timeout
    d.feed(Exited(1, ExitStatus(None, 15)), d.now + 1)
    d.feed(GroupGone(1), d.now)
    assert d.snap.state is State.STOPPED
    assert d.snap.failure_cause is Cause.MEMORY_LIMIT


def test_sizes_read_in_mebibytes() -> None:
    assert mib(512 << 20) == "512.0 MiB"
