"""Fault settings: their names, how a value is validated, and the seeded dice that decide per-request faults.

The same names serve the command line (``--crash-after``) and ``/admin/faults`` (``crash_after``), and the
same parsers validate both, so a value accepted in one place is accepted in the other. Random faults draw
from one RNG per fault, seeded from ``--seed``, so a given sequence of probes or requests fails the same way
on every run, whatever else the server is doing.
"""

from __future__ import annotations

import math
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any


class FaultValueError(ValueError):
    """A fault value that cannot be used; ``key`` names the fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


# Signals whose default action ends the process. Stop and ignore-by-default signals are refused:
# "--exit-signal SIGCHLD" would leave the fake running and the test wondering why.
FATAL_SIGNALS = frozenset(
    s.name
    for s in signal.Signals
    if s.name
    in {
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGSYS",
    }
)


def _number(key: str, value: object) -> float:
    # bool is an int in Python; `true` for a number of seconds is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaultValueError(key, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise FaultValueError(key, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise FaultValueError(key, f"expected a finite number, got {value!r}")
    return number


def seconds(key: str, value: object) -> float:
    """A duration in seconds, >= 0."""
    number = _number(key, value)
    if number < 0:
        raise FaultValueError(key, f"must be >= 0 seconds, got {value!r}")
    return number


def probability(key: str, value: object) -> float:
    """A probability in [0, 1]."""
    number = _number(key, value)
    if not 0.0 <= number <= 1.0:
        raise FaultValueError(key, f"must be a probability between 0 and 1, got {value!r}")
    return number


def rate(key: str, value: object) -> float:
    """A rate (units per second), >= 0; 0 is off."""
    number = _number(key, value)
    if number < 0:
        raise FaultValueError(key, f"must be >= 0, got {value!r}")
    return number


def count(key: str, value: object) -> int:
    """A whole number >= 0."""
    number = _number(key, value)
    if number < 0 or number != int(number):
        raise FaultValueError(key, f"must be a whole number >= 0, got {value!r}")
    return int(number)


def exit_code(key: str, value: object) -> int:
    """A process exit status, 0..255."""
    number = count(key, value)
    if number > 255:
        raise FaultValueError(key, f"must be an exit status between 0 and 255, got {value!r}")
    return number


def exit_signal(key: str, value: object) -> str:
    """A signal name (SIGKILL, KILL or 9) whose default action ends the process; returns 'SIGKILL'."""
    text = str(value).strip().upper() if not isinstance(value, bool) else ""
    if text.isdigit():
        try:
            text = signal.Signals(int(text)).name
        except ValueError:
            text = ""
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in FATAL_SIGNALS:
        raise FaultValueError(key, f"expected a signal that ends a process, e.g. SIGKILL or SIGSEGV, got {value!r}")
    return name


def oom(key: str, value: object) -> str:
    """``startup`` or ``after:S``; returns the normalised text."""
    text = str(value).strip().lower() if isinstance(value, str) else ""
    if text == "startup":
        return text
    if text.startswith("after:"):
        return f"after:{seconds(key, text.removeprefix('after:'))}"
    raise FaultValueError(key, f"expected 'startup' or 'after:SECONDS', got {value!r}")


def flag(key: str, value: object) -> bool:
    """A JSON boolean."""
    if not isinstance(value, bool):
        raise FaultValueError(key, f"expected true or false, got {value!r}")
    return value


def seed(key: str, value: object) -> int:
    """An integer seed."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultValueError(key, f"expected an integer, got {value!r}")
    return value


@dataclass(slots=True)
class Faults:
    """Every fault, as set now. ``None`` means off."""

    crash_after: float | None = None
    crash_after_requests: int | None = None
    exit_code: int = 1
    exit_signal: str | None = None
    oom: str | None = None
    hang_after: float | None = None
    stall_after: float | None = None
    engine_dead_after: float | None = None
    engine_dead_exit_after: float | None = 5.0
    health_flap: float = 0.0
    ignore_sigterm: bool = False
    ttft: float = 0.0
    itl: float = 0.0
    error_rate: float = 0.0
    grow_memory: float = 0.0  # MB of resident memory the API server adds each second
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The faults by their public (underscore) names."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Parser per key; keys whose value may be null (off) are in NULLABLE.
PARSERS: dict[str, Callable[[str, object], object]] = {
    "crash_after": seconds,
    "crash_after_requests": count,
    "exit_code": exit_code,
    "exit_signal": exit_signal,
    "oom": oom,
    "hang_after": seconds,
    "stall_after": seconds,
    "engine_dead_after": seconds,
    "engine_dead_exit_after": seconds,
    "health_flap": probability,
    "ignore_sigterm": flag,
    "ttft": seconds,
    "itl": seconds,
    "error_rate": probability,
    "grow_memory": rate,
    "seed": seed,
}
NULLABLE = frozenset(
    {
        "crash_after",
        "crash_after_requests",
        "exit_signal",
        "oom",
        "hang_after",
        "stall_after",
        "engine_dead_after",
        "engine_dead_exit_after",
    }
)
# Shown by GET /admin/faults but fixed once the process has started.
STARTUP_ONLY = frozenset({"startup_delay", "engine_children"})


def parse_update(body: object) -> dict[str, object]:
    """Validate a POST /admin/faults body; every problem raises FaultValueError naming its key."""
    if not isinstance(body, dict):
        raise FaultValueError("body", "expected a JSON object of fault names to values")
    update: dict[str, object] = {}
    for key, value in body.items():
        if key in STARTUP_ONLY:
            raise FaultValueError(key, "can only be set at start-up, with its command-line flag")
        parser = PARSERS.get(key)
        if parser is None:
            raise FaultValueError(key, f"unknown fault; known: {', '.join(sorted(PARSERS))}")
        if value is None:
            if key not in NULLABLE:
                raise FaultValueError(key, "cannot be null")
            update[key] = None
        elif key == "oom" and value == "startup":
            raise FaultValueError(key, "'startup' only applies at start-up; use 'after:SECONDS' at runtime")
        else:
            update[key] = parser(key, value)
    return update


class Dice:
    """One seeded RNG per random fault, so each fault's sequence of outcomes is reproducible on its own."""

    def __init__(self, seed_value: int) -> None:
        self.reseed(seed_value)

    def reseed(self, seed_value: int) -> None:
        """Restart every sequence from ``seed_value``."""
        # String seeds hash with SHA-512, so the sequences do not depend on PYTHONHASHSEED.
        self._health = random.Random(f"{seed_value}:health_flap")
        self._errors = random.Random(f"{seed_value}:error_rate")

    def health_fails(self, p: float) -> bool:
        """Whether this health probe fails (probability ``p``)."""
        return p > 0 and self._health.random() < p

    def request_fails(self, p: float) -> bool:
        """Whether this inference request fails (probability ``p``)."""
        return p > 0 and self._errors.random() < p
