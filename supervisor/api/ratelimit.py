"""A rolling-window limit on operator actions per model (docs/design/contract.md section 4: 10 a minute).

A script stuck in a loop calling `restart` must not keep a GPU server in permanent start-up. The window
rolls: the 11th action inside any 60 s is refused until the oldest of the ten leaves the window.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class ActionRateLimiter:
    """`check(key)` records an action and returns None, or returns the seconds to wait when over the limit."""

    def __init__(self, limit: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def check(self, key: str) -> float | None:
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        return None

    @staticmethod
    def retry_after_header(wait: float) -> str:
        """Retry-After is whole seconds; round up so a client that obeys it is never refused again."""
        return str(max(1, math.ceil(wait)))
