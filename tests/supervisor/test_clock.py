"""The clocks: the real one keeps monotonic and Unix time apart; the virtual one moves only when told."""

from __future__ import annotations

import asyncio
import time

import pytest

from supervisor.core.clock import Clock, RealClock, VirtualClock, settle

# Generous for a loaded 2-core machine: a sleep may end late, never early.
LATE_TOLERANCE = 1.0


async def test_real_clock_now_is_monotonic_and_wall_is_unix_time() -> None:
    """now() follows time.monotonic (deadlines), wall() follows time.time (timestamps people read)."""
    clock = RealClock()
    before_mono, before_wall = time.monotonic(), time.time()
    now, wall = clock.now(), clock.wall()
    assert before_mono <= now <= time.monotonic()
    assert before_wall - 1 <= wall <= time.time() + 1


async def test_real_clock_sleeps_until_the_deadline() -> None:
    """sleep_until returns once the monotonic deadline has passed, not before."""
    clock = RealClock()
    deadline = clock.now() + 0.05
    await clock.sleep_until(deadline)
    assert deadline <= clock.now() < deadline + LATE_TOLERANCE


async def test_real_clock_past_deadline_returns_at_once() -> None:
    """A deadline already passed does not sleep at all."""
    clock = RealClock()
    started = time.monotonic()
    await clock.sleep_until(clock.now() - 10)
    assert time.monotonic() - started < LATE_TOLERANCE


def test_both_clocks_satisfy_the_protocol() -> None:
    """The loop can be handed either clock."""
    clocks: list[Clock] = [RealClock(), VirtualClock()]
    assert all(isinstance(c.now(), float) for c in clocks)


def test_virtual_clock_starts_where_told_and_wall_follows_now() -> None:
    """wall() is epoch + now(), so event timestamps line up with monotonic deadlines."""
    clock = VirtualClock(start=5.0, epoch=1000.0)
    assert clock.now() == 5.0
    assert clock.wall() == 1005.0
    assert clock.next_deadline() is None


async def test_virtual_clock_wakes_sleepers_in_order_at_their_deadlines() -> None:
    """advance() wakes each sleeper at exactly its own deadline, earliest first, and stops at the target."""
    clock = VirtualClock()
    woken: list[tuple[str, float]] = []

    async def sleeper(name: str, deadline: float) -> None:
        await clock.sleep_until(deadline)
        woken.append((name, clock.now()))

    tasks = [asyncio.ensure_future(sleeper(n, t)) for n, t in (("c", 30.0), ("a", 5.0), ("b", 10.0), ("d", 99.0))]
    await settle()
    assert clock.next_deadline() == 5.0
    await clock.advance(30)
    assert woken == [("a", 5.0), ("b", 10.0), ("c", 30.0)]
    assert clock.now() == 30
    assert clock.next_deadline() == 99.0
    await clock.advance(68.999)
    assert len(woken) == 3  # not a moment early
    await clock.advance(0.001)
    assert woken[-1] == ("d", pytest.approx(99.0))
    await asyncio.gather(*tasks)


async def test_virtual_clock_wakes_chained_sleeps_within_one_advance() -> None:
    """A task that sleeps again after waking is woken again inside the same advance, at its own deadline."""
    clock = VirtualClock()
    ticks: list[float] = []

    async def every_five() -> None:
        while True:
            await clock.sleep_until(clock.now() + 5)
            ticks.append(clock.now())

    task = asyncio.ensure_future(every_five())
    await settle()
    await clock.advance(23)
    assert ticks == [5, 10, 15, 20]
    assert clock.now() == 23
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_virtual_clock_past_deadline_does_not_wait() -> None:
    """Sleeping until a deadline already reached returns without anyone advancing the clock."""
    clock = VirtualClock(start=10)
    await asyncio.wait_for(clock.sleep_until(10), timeout=5)
    await asyncio.wait_for(clock.sleep_until(3), timeout=5)
    assert clock.now() == 10


async def test_virtual_clock_forgets_cancelled_sleepers() -> None:
    """A cancelled sleep no longer counts as the next deadline."""
    clock = VirtualClock()
    early = asyncio.ensure_future(clock.sleep_until(5))
    late = asyncio.ensure_future(clock.sleep_until(50))
    await settle()
    early.cancel()
    await settle()
    assert clock.next_deadline() == 50
    await clock.advance(50)
    assert late.done()


async def test_advance_without_sleepers_just_moves_time() -> None:
    """With nobody asleep, advance() moves now() by exactly the amount asked."""
    clock = VirtualClock()
    await clock.advance(2.5)
    await clock.advance(0)
    assert clock.now() == 2.5
    assert clock.wall() == 1_700_000_002.5


async def test_cancelled_sleeper_sharing_a_deadline_does_not_disturb_the_others() -> None:
    """Among sleepers due at the same moment, a cancelled one is skipped and the rest still wake."""
    clock = VirtualClock()
    first = asyncio.ensure_future(clock.sleep_until(5))
    second = asyncio.ensure_future(clock.sleep_until(5))
    third = asyncio.ensure_future(clock.sleep_until(5))
    await settle()
    second.cancel()
    await clock.advance(5)
    assert first.done()
    assert not first.cancelled()
    assert third.done()
    assert not third.cancelled()
    assert second.cancelled()


async def test_virtual_clock_refuses_to_go_backwards() -> None:
    """advance(-5) is refused with an error that says why, and neither time nor any sleeper moves."""
    clock = VirtualClock(start=10.0)
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep_until(8.0 + 5.0)
        woke.append(clock.now())

    task = asyncio.ensure_future(sleeper())
    await settle()
    with pytest.raises(ValueError, match="cannot go backwards"):
        await clock.advance(-5)
    assert clock.now() == 10.0
    assert woke == []
    await clock.advance(3)
    await task
    assert woke == [13.0]


async def test_real_clock_calls_back_at_the_deadline_never_before() -> None:
    """call_at runs the callback on the loop once now() passed the deadline; a cancelled one never runs."""
    clock = RealClock()
    called: list[float] = []
    done = asyncio.Event()
    deadline = clock.now() + 0.05
    clock.call_at(deadline, lambda: (called.append(clock.now()), done.set()))
    cancelled = clock.call_at(deadline, lambda: called.append(-1.0))
    cancelled.cancel()
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0)
    assert len(called) == 1
    assert deadline <= called[0] < deadline + LATE_TOLERANCE


async def test_virtual_clock_calls_back_when_advanced_past_the_deadline() -> None:
    """Callbacks run in deadline order as advance() passes them; a past deadline runs at once; cancel stops one."""
    clock = VirtualClock()
    order: list[tuple[str, float]] = []
    clock.call_at(3, lambda: order.append(("three", clock.now())))
    clock.call_at(1, lambda: order.append(("one", clock.now())))
    dropped = clock.call_at(2, lambda: order.append(("two", clock.now())))
    dropped.cancel()
    await clock.advance(0.5)
    assert order == []
    await clock.advance(5)
    assert order == [("one", 1.0), ("three", 3.0)]
    clock.call_at(1, lambda: order.append(("late", clock.now())))
    await settle()
    assert order[-1] == ("late", 5.5)
