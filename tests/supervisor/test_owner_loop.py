"""The whole per-model loop (owner + machine) on a virtual clock, with a fake runtime and fake probes.

Exact times, no sleeping: the clock only moves when the test advances it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from supervisor.config.schema import parse_config
from supervisor.core.clock import VirtualClock, settle
from supervisor.core.machine import Machine
from supervisor.core.machine_types import (
    Boot,
    Record,
    RestartRequested,
    Settings,
    ShutdownRequested,
    Snapshot,
    StartRequested,
    StopRequested,
)
from supervisor.core.policy import Backoff, Budget, RestartPolicy
from supervisor.core.states import EventKind, ExitStatus, State
from supervisor.loop.owner import ModelOwner, RunView
from supervisor.loop.status_view import CONTAINER_OOM_ADVICE, build_status
from supervisor.probe import ProbeResult
from supervisor.runtime.base import LineSink, SpawnError, Stream
from tests.supervisor.test_machine import make_settings


class FakeRun:
    def __init__(self, pid: int, sink: LineSink, ignore_sigterm: bool = False) -> None:
        self._pid = pid
        self.sink = sink
        self.ignore_sigterm = ignore_sigterm
        self.exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.signals: list[str] = []
        self.hold_group = False  # orphans that take a while to die after the group is killed

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def ident(self) -> str:
        return f"{self._pid}:0"

    async def wait_exit(self) -> ExitStatus:
        return await self.exit

    async def wait_gone(self) -> None:
        await self.gone

    def die(self, status: ExitStatus, gone: bool = True) -> None:
        if not self.exit.done():
            self.exit.set_result(status)
        if gone and not self.gone.done():
            self.gone.set_result(None)

    def terminate(self) -> None:
        self.signals.append("TERM")
        if not self.ignore_sigterm:
            self.die(ExitStatus(None, 15))

    def kill(self) -> None:
        self.signals.append("KILL")
        self.die(ExitStatus(None, 9), gone=not self.hold_group)


@dataclass
class FakeRuntime:
    clock: VirtualClock
    runs: list[FakeRun] = field(default_factory=list)
    spawn_times: list[float] = field(default_factory=list)
    fail_spawn: bool = False
    spawn_error: str = "no such command: vllm"
    ignore_sigterm: bool = False

    async def spawn(self, model_id: str, run_number: int, sink: LineSink) -> FakeRun:
        self.spawn_times.append(self.clock.now())
        if self.fail_spawn:
            raise SpawnError(self.spawn_error)
        run = FakeRun(1000 + run_number, sink, self.ignore_sigterm)
        self.runs.append(run)
        return run


def settings(**overrides: object) -> Settings:
    """The contract's defaults with an unlimited budget (these tests watch the schedule, not the limit)."""
    return make_settings(**{"budget": Budget(None, 600), **overrides})


@dataclass
class Harness:
    clock: VirtualClock
    runtime: FakeRuntime
    owner: ModelOwner
    records: list[tuple[float, Record]]
    healthy: Callable[[float], bool]

    def kinds(self) -> list[str]:
        return [r.kind.value for _, r in self.records]

    def times(self, kind: EventKind) -> list[float]:
        return [t for t, r in self.records if r.kind is kind]


class RecordingReports:
    """Keeps each timeline entry with the virtual time it was reported at; probes and output are dropped."""

    def __init__(self, clock: VirtualClock, records: list[tuple[float, Record]]) -> None:
        self.clock = clock
        self.records = records

    def record(self, model_id: str, record: Record, snapshot: Snapshot, run: RunView | None) -> None:
        self.records.append((self.clock.now(), record))

    def probed(self, model_id: str, result: ProbeResult) -> None:
        pass

    def line(self, model_id: str, stream: Stream, text: str) -> None:
        pass


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Harness]]:
    tasks: list[asyncio.Task[None]] = []

    def build(healthy: Callable[[float], bool] = lambda t: True, **overrides: object) -> Harness:
        clock = VirtualClock()
        runtime = FakeRuntime(clock)
        records: list[tuple[float, Record]] = []
        harness_ref: list[Harness] = []

        async def prober(timeout: float) -> ProbeResult:
            ok = harness_ref[0].healthy(clock.now())
            return ProbeResult(ok, None if ok else "connection refused", 200 if ok else None, 0.001, "http://x/health")

        owner = ModelOwner(
            "m",
            Machine(settings(**overrides)),
            runtime,
            clock,
            probe=prober,
            reports=RecordingReports(clock, records),
        )
        harness = Harness(clock, runtime, owner, records, healthy)
        harness_ref.append(harness)
        tasks.append(asyncio.ensure_future(owner.serve()))
        owner.post(Boot())
        return harness

    yield build
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_crash_loop_follows_the_default_schedule_exactly(make: Callable[..., Harness]) -> None:
    """A server that crashes 2 s after each start is respawned after 5, 10, 20, 40 s (the defaults)."""
    h = make()
    await settle()
    for _ in range(4):
        await h.clock.advance(2)
        h.runtime.runs[-1].die(ExitStatus(1))
        await settle()
        await h.clock.advance(h.owner.snapshot.restart_at - h.clock.now())  # type: ignore[operator]
    gaps = [b - a for a, b in zip(h.runtime.spawn_times, h.runtime.spawn_times[1:], strict=False)]
    assert gaps == [2 + 5, 2 + 10, 2 + 20, 2 + 40]


async def test_hang_is_found_after_threshold_probes_and_restarted(make: Callable[..., Harness]) -> None:
    """A server that stops answering at t=30 is unhealthy after 3 failed 10 s probes and restarted."""
    h = make(healthy=lambda t: t < 30)
    await h.clock.advance(200)
    assert h.times(EventKind.HEALTHY)[0] == 1  # first start-up probe after startup_probe_interval
    assert h.times(EventKind.PROBE_FAILED) == [31, 41, 51]
    assert h.times(EventKind.UNHEALTHY) == [51]
    assert h.runtime.runs[0].signals == ["TERM"]
    assert h.runtime.spawn_times == [0, 56]  # 5 s backoff after the terminated run is gone


async def test_slow_start_is_probed_until_healthy_and_not_killed(make: Callable[..., Harness]) -> None:
    """A model that loads for 300 s is probed every second and never killed (docs/design/defects.md #2)."""
    h = make(healthy=lambda t: t >= 300)
    await h.clock.advance(400)
    assert h.times(EventKind.HEALTHY) == [300]
    assert h.runtime.runs[0].signals == []
    assert EventKind.PROBE_FAILED not in [r.kind for _, r in h.records]


async def test_startup_timeout_stops_and_restarts(make: Callable[..., Harness]) -> None:
    """A model never healthy within startup_timeout is stopped and restarted after the backoff."""
    h = make(healthy=lambda t: False, startup_timeout=60)
    await h.clock.advance(66)
    assert h.times(EventKind.STARTUP_TIMEOUT) == [60]
    assert h.runtime.spawn_times == [0, 65]


async def test_ignored_sigterm_is_followed_by_sigkill_after_stop_timeout(make: Callable[..., Harness]) -> None:
    """Stop sends SIGTERM, then SIGKILL to the group once stop_timeout has passed."""
    h = make()
    h.runtime.ignore_sigterm = True
    await h.clock.advance(5)
    reply = await h.owner.request(StopRequested())
    assert reply.accepted
    await h.clock.advance(29.9)
    assert h.runtime.runs[0].signals == ["TERM"]
    await h.clock.advance(0.1)
    assert h.runtime.runs[0].signals == ["TERM", "KILL"]
    assert h.owner.snapshot.state is State.STOPPED
    assert h.times(EventKind.KILLED) == [35]


async def test_stop_sticks_under_always(make: Callable[..., Harness]) -> None:
    """After an operator's stop, `always` starts nothing until the next start (docs/design/defects.md #9)."""
    h = make(restart_policy=RestartPolicy.ALWAYS)
    await h.clock.advance(5)
    await h.owner.request(StopRequested(force=True))
    await h.clock.advance(1000)
    assert len(h.runtime.spawn_times) == 1
    await h.owner.request(StartRequested())
    await settle()
    assert h.runtime.spawn_times == [0, 1005]


async def test_many_concurrent_restarts_make_one_new_run(make: Callable[..., Harness]) -> None:
    """Fifty restart requests sent at once end with exactly one new run (docs/design/defects.md #7)."""
    h = make()
    await h.clock.advance(5)
    replies = await asyncio.gather(*(h.owner.request(RestartRequested()) for _ in range(50)))
    await settle()
    assert all(r.accepted for r in replies)
    assert len(h.runtime.spawn_times) == 2


async def test_spawn_failure_is_counted_until_the_budget_is_spent(make: Callable[..., Harness]) -> None:
    """A command that cannot start is retried on the schedule and ends failed (docs/design/defects.md #3)."""
    h = make(budget=Budget(2, None))
    h.runtime.fail_spawn = True
    await h.clock.advance(100)
    assert h.runtime.spawn_times == [0, 5, 15]
    assert h.owner.snapshot.state is State.FAILED


async def test_restart_waits_for_the_old_group(make: Callable[..., Harness]) -> None:
    """Orphans alive after the leader's exit: the next run waits until they are gone (docs/design/defects.md #5)."""
    h = make(backoff=Backoff(0, 2, 300, 0, 600))
    await h.clock.advance(2)
    run = h.runtime.runs[0]
    run.hold_group = True
    run.die(ExitStatus(1), gone=False)
    await h.clock.advance(3)
    assert h.runtime.spawn_times == [0]  # the kill was sent, but the group is not gone yet
    assert run.signals == ["KILL"]
    run.gone.set_result(None)
    await settle()
    assert h.runtime.spawn_times == [0, 5]


async def test_output_finding_sets_cuda_oom_for_this_run_only(make: Callable[..., Harness]) -> None:
    """A CUDA OOM line marks the run; the next run starts with the flag cleared (docs/design/defects.md #11)."""
    h = make()
    await h.clock.advance(1)
    h.runtime.runs[0].sink(Stream.STDERR, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
    await settle()
    assert h.owner.snapshot.has_cuda_oom
    assert EventKind.OOM_DETECTED in [r.kind for _, r in h.records]
    h.runtime.runs[0].die(ExitStatus(1))
    await settle()
    assert h.owner.snapshot.failure_cause == "oom"
    # Before a restart after an OOM the GPU is checked (docs/recovery.md), reading NVML in a thread: the old
    # run is over once that is done (here at once: no driver).
    async with asyncio.timeout(10):
        while h.owner.snapshot.group_alive:
            await asyncio.sleep(0.01)
    await h.clock.advance(5)
    assert len(h.runtime.spawn_times) == 2
    assert not h.owner.snapshot.has_cuda_oom


async def test_shutdown_settles_with_nothing_running(make: Callable[..., Harness]) -> None:
    """A supervisor shutdown stops the run and leaves the desired state untouched."""
    h = make()
    await h.clock.advance(3)
    h.owner.post(ShutdownRequested())
    await asyncio.wait_for(h.owner.wait_settled(), 1)
    assert h.owner.snapshot.state is State.STOPPED
    assert h.owner.snapshot.desired.value == "running"


async def test_spawn_failure_names_a_port_already_taken(make: Callable[..., Harness]) -> None:
    """A runtime that cannot bind the model's port reports cause port_in_use, not a bare crash."""
    h = make(budget=Budget(0, None))
    h.runtime.fail_spawn = True
    h.runtime.spawn_error = "port 8001 is taken: OSError: [Errno 98] Address already in use"
    await settle()
    exited = [r for _, r in h.records if r.kind is EventKind.EXITED]
    assert exited[0].reason == "port_in_use"
    assert h.owner.snapshot.failure_cause == "port_in_use"
    assert h.owner.snapshot.state is State.FAILED


async def test_container_oom_kill_gets_host_memory_advice(make: Callable[..., Harness]) -> None:
    """An exit flagged OOMKilled (no CUDA message) is cause oom with advice about the memory limit, not the GPU."""
    h = make()
    await h.clock.advance(1)
    h.runtime.runs[0].die(ExitStatus(137, 9, oom_killed=True))
    await settle()
    cfg = parse_config({"llmModels": {"m": {"command": "vllm"}}}, "t").models["m"]
    status = build_status("m", cfg, h.owner, h.clock, 0.0)
    assert status.failure_cause == "oom"
    assert status.failure_advice == CONTAINER_OOM_ADVICE
