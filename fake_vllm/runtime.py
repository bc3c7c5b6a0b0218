"""The state one running fake-vllm shares between its HTTP handlers and its lifecycle.

Handlers read it (is the engine dead? are we hung?) and count into it; the lifecycle (server.py) changes
it when fault timers fire and reacts to fault updates through the two hooks it installs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fake_vllm.engine import Engine, EngineDead
from fake_vllm.faults import Dice, Faults
from fake_vllm.metrics import Metrics
from fake_vllm.settings import Settings


class Phase(Enum):
    """Where the server is in its life, as /admin/stats reports it."""

    LOADING = "loading"
    READY = "ready"
    STALLED = "stalled"
    HUNG = "hung"
    ENGINE_DEAD = "engine_dead"
    STOPPING = "stopping"


@dataclass(slots=True)
class Stats:
    """Request counters for /admin/stats."""

    requests: dict[str, int] = field(default_factory=dict)
    responses: dict[str, int] = field(default_factory=dict)
    streams: int = 0
    inference_answered: int = 0
    injected_health_failures: int = 0
    injected_request_errors: int = 0

    def count(self, kind: str, status: int) -> None:
        """One request of ``kind`` answered with ``status``."""
        self.requests[kind] = self.requests.get(kind, 0) + 1
        key = str(status)
        self.responses[key] = self.responses.get(key, 0) + 1


class Runtime:
    """Faults as set now, the engine, the counters, and the fault state (hung, stalled, engine dead)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.faults: Faults = Faults(**settings.faults.as_dict())
        self.dice = Dice(self.faults.seed)
        self.metrics = Metrics(settings.model_name)
        self.engine = Engine(self.metrics, settings.max_num_seqs, self.checkpoint)
        self.stats = Stats()
        self.phase = Phase.LOADING
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.events: list[dict[str, Any]] = []
        self.engine_children: list[int] = []
        # Installed by the lifecycle; the defaults keep the app usable on its own in tests.
        self.on_faults_changed: Callable[[dict[str, object]], None] = lambda _update: None
        self.on_inference_answered: Callable[[], None] = lambda: None

    @property
    def is_hung(self) -> bool:
        """Whether requests are no longer answered."""
        return self.phase is Phase.HUNG

    @property
    def is_stalled(self) -> bool:
        """Whether the engine has stopped producing tokens while the API server still answers."""
        return self.phase is Phase.STALLED

    @property
    def is_engine_dead(self) -> bool:
        """Whether the engine has died (health 503, generation 500)."""
        return self.phase is Phase.ENGINE_DEAD

    def record(self, event: str, **detail: object) -> None:
        """Note a fault event with its Unix time, for /admin/stats and for tests' timing assertions."""
        self.events.append({"event": event, "at": time.time(), **detail})

    async def gate(self) -> None:
        """Before any request is handled: wait forever while hung (the connection stays open)."""
        if self.is_hung:
            await asyncio.get_running_loop().create_future()

    async def checkpoint(self) -> None:
        """Between engine steps: hang with the server, wait forever once stalled, fail once the engine is dead."""
        await self.gate()
        if self.is_stalled:
            await asyncio.get_running_loop().create_future()
        if self.is_engine_dead:
            raise EngineDead

    def apply(self, update: dict[str, object]) -> None:
        """Apply validated fault values, then let the lifecycle re-arm its timers."""
        for key, value in update.items():
            setattr(self.faults, key, value)
        if "seed" in update:
            self.dice.reseed(self.faults.seed)
        self.on_faults_changed(update)

    def faults_view(self) -> dict[str, object]:
        """GET /admin/faults: every fault by name, start-up-only ones included."""
        view: dict[str, object] = self.faults.as_dict()
        if self.settings.oom_at_startup and view["oom"] is None:
            view["oom"] = "startup"
        view["startup_delay"] = self.settings.startup_delay
        view["engine_children"] = self.settings.engine_children
        return view

    def stats_view(self) -> dict[str, object]:
        """GET /admin/stats."""
        s = self.stats
        return {
            "pid": os.getpid(),
            "state": self.phase.value,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "requests": dict(s.requests),
            "responses": dict(s.responses),
            "streams": s.streams,
            "inference_requests_answered": s.inference_answered,
            "injected": {"health_failures": s.injected_health_failures, "request_errors": s.injected_request_errors},
            "running": self.metrics.running,
            "waiting": self.metrics.waiting,
            "prompt_tokens": self.metrics.prompt_tokens,
            "generation_tokens": self.metrics.generation_tokens,
            "engine_children": list(self.engine_children),
            "events": list(self.events),
        }


__all__ = ["EngineDead", "Phase", "Runtime", "Stats"]
