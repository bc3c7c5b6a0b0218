"""A rolling-window limit on operator actions per model (docs/design/contract.md sections 4 and 10: 10 a minute).

A script stuck in a loop calling `restart` must not keep a GPU server in permanent start-up. The window
rolls: the 11th action inside any 60 s is refused until the oldest of the ten leaves the window. Only what
starts a run is limited: `stop` never is (an emergency `stop --force` must always get through), and an
action that was refused or had nothing to do (a `start` of a running model) is given back with `refund`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class ActionRateLimiter:
    """`check(key)` records an action and returns None, or returns the seconds to wait when over the limit;
    `refund(key)` takes back the action `check` just recorded, when it was refused or did nothing."""

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

    def refund(self, key: str) -> None:
        hits = self._hits.get(key)
        if hits:
            hits.pop()

    @staticmethod
    def retry_after_header(wait: float) -> str:
        """Retry-After is whole seconds; round up so a client that obeys it is never refused again."""
        return str(max(1, math.ceil(wait)))
