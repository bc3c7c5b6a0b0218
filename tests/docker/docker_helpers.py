"""Helpers shared by the Docker tests: a recording line sink and a condition wait with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from supervisor.runtime.base import Stream


class Lines:
    """A LineSink that records (stream, line, monotonic time)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Stream, str, float]] = []

    def __call__(self, stream: Stream, line: str) -> None:
        self.seen.append((stream, line, time.monotonic()))

    def of(self, stream: Stream) -> list[str]:
        return [line for s, line, _ in self.seen if s is stream]


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll `predicate` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
