"""Where time comes from. The decision core never reads a clock; the loop asks one of these.

`RealClock` is the production clock. `VirtualClock` lets tests jump time and assert exact delays without
sleeping (in the manner of trio's MockClock): sleepers wake in deadline order as `advance` passes them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> object:
        """Do not call the callback (no effect once it ran)."""


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds: every deadline is expressed on this scale."""

    def wall(self) -> float:
        """Unix time, for timestamps people and other tools read."""

    async def sleep_until(self, deadline: float) -> None:
        """Return once `now() >= deadline`."""

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` from the event loop once `now() >= deadline`; no task is made for the wait."""


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        # The event loop's own clock is time.monotonic, the scale of `now()`.
        return asyncio.get_running_loop().call_at(deadline, callback)


class VirtualClock:
    """A clock that only moves when a test says so.

    `wall()` is `epoch + now()`, so Unix timestamps in events stay consistent with monotonic deadlines.
    """

    def __init__(self, start: float = 0.0, epoch: float = 1_700_000_000.0) -> None:
        self._now = start
        self._epoch = epoch
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._epoch + self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        await future

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        """Like a sleeper: called when `advance` passes `deadline` (at once, on the loop, if it has passed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda done: None if done.cancelled() else callback())
        if deadline <= self._now:
            future.set_result(None)
        else:
            heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        return future

    def next_deadline(self) -> float | None:
        """The earliest deadline anyone sleeps on, or None."""
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline and letting woken tasks run.

        Monotonic time never goes backwards, so a negative step is a test's mistake, refused before anything moves.
        """
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go backwards (advance({seconds}))")
        target = self._now + seconds
        await settle()
        while (deadline := self.next_deadline()) is not None and deadline <= target:
            self._now = max(self._now, deadline)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
            await settle()
        self._now = target
        await settle()

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)


async def settle(rounds: int = 50) -> None:
    """Yield to the event loop enough times for tasks that only await each other to reach their next wait."""
    for _ in range(rounds):
        await asyncio.sleep(0)
