"""Pure restart policy: when to restart, after how long, and whether the budget allows it.

Backoff is one overflow-safe formula (exponential, capped, with optional jitter drawn from an injected RNG);
the budget counts automatic restarts inside a sliding window (systemd's StartLimitBurst/IntervalSec,
Erlang's intensity/period) or over the model's whole life when the window is None.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class RestartPolicy(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


def wants_restart(policy: RestartPolicy, *, clean: bool) -> bool:
    """Whether an unrequested end of a run should be followed by a new run.

    `clean` means the exit code is in `success_exit_codes`; an unhealthy kill or a signal is never clean.
    """
    if policy is RestartPolicy.NO:
        return False
    if policy is RestartPolicy.ON_FAILURE:
        return not clean
    return True


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float
    multiplier: float
    cap: float
    jitter: float = 0.0
    reset_after: float = 600.0

    def base_delay(self, attempt: int) -> float:
        """initial * multiplier**attempt, capped; never overflows however large `attempt` grows."""
        if self.initial <= 0 or self.cap <= 0:
            return 0.0
        if self.initial >= self.cap:
            return self.cap
        if self.multiplier <= 1:
            return self.initial
        # Compare in log space first (cap / initial itself may overflow), so the power below stays finite.
        if attempt * math.log(self.multiplier) >= math.log(self.cap) - math.log(self.initial):
            return self.cap
        try:
            return min(self.cap, self.initial * self.multiplier**attempt)
        except OverflowError:  # only at the float limits, where the log comparison rounds the other way
            return self.cap

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay `delay(attempt, ...)` can return."""
        base = self.base_delay(attempt)
        return (base * (1 - self.jitter), min(self.cap, base * (1 + self.jitter)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = self.base_delay(attempt)
        if self.jitter == 0:
            return base
        return min(self.cap, base * (1 + self.jitter * rng.uniform(-1.0, 1.0)))

    def should_reset(self, healthy_for: float | None) -> bool:
        """A run that stayed healthy this long earns a fresh backoff schedule."""
        return healthy_for is not None and healthy_for >= self.reset_after


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `max_restarts` automatic restarts within `window` seconds (None: unlimited / whole life)."""

    max_restarts: int | None
    window: float | None

    def recent(self, restart_times: Sequence[float], now: float) -> tuple[float, ...]:
        """The restart times that still count against the budget at `now`."""
        if self.window is None:
            return tuple(restart_times)
        return tuple(t for t in restart_times if now - t < self.window)

    def allows(self, restart_times: Sequence[float], now: float) -> bool:
        if self.max_restarts is None:
            return True
        return len(self.recent(restart_times, now)) < self.max_restarts
