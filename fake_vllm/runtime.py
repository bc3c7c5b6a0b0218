"""The state one running fake-vllm API server shares between its HTTP handlers and its lifecycle.

Handlers read it (is the engine dead? are we hung?) and count into it; the lifecycle (server.py) changes
it when fault timers fire and reacts to fault updates through the hooks it installs. Requests go to the
engine client (``client``): EngineCore in its own process, or the engine in this process with
``--engine-children 0``. As in vLLM's API server, the token and latency metrics are counted here from the
steps the engine sends, and the gauges are the engine's last reported scheduler stats.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from fake_vllm.engine import Engine, EngineDead, GenerationRequest, Step
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


class EngineClient(Protocol):
    """What the API server needs from its engine, wherever the engine runs."""

    pids: list[int]

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        """The steps of one request; EngineDead if the engine dies."""
        ...

    def stall(self) -> None:
        """Stop stepping for good."""

    def set_ignore_sigterm(self, ignore: bool) -> None:
        """Whether SIGTERM stops the engine's processes."""

    def kill(self) -> None:
        """Kill the engine (an injected engine death)."""

    def stop(self, grace: float = 5.0) -> None:
        """Stop the engine and wait for it (blocking)."""

    async def stop_async(self, grace: float = 5.0) -> None:
        """Stop the engine and wait for it."""


class LocalEngine:
    """The engine inside the API server process (``--engine-children 0``): no EngineCore process."""

    def __init__(self, settings: Settings, on_stats: Callable[[int, int, float], None]) -> None:
        self.pids: list[int] = []
        self.engine = Engine(settings.max_num_seqs, settings.kv_cache_tokens, lambda: on_stats(*self.engine.stats()))
        self.on_death: Callable[[], None] = lambda: None

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        """The engine's own steps."""
        return self.engine.generate(request)

    def stall(self) -> None:
        """Stop stepping for good."""
        self.engine.stall()

    def set_ignore_sigterm(self, ignore: bool) -> None:
        """Nothing to tell: the server's own signal handler decides."""

    def kill(self) -> None:
        """Requests in flight fail at their next step, new ones at once."""
        self.engine.die()
        self.on_death()

    def stop(self, grace: float = 5.0) -> None:
        """Nothing to stop."""

    async def stop_async(self, grace: float = 5.0) -> None:
        """Nothing to stop."""


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
    """Faults as set now, the engine client, the counters, and the fault state (hung, stalled, engine dead)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.faults: Faults = Faults(**settings.faults.as_dict())
        self.dice = Dice(self.faults.seed)
        self.metrics = Metrics(settings.model_name)
        self.client: EngineClient | None = None
        self.stats = Stats()
        self.phase = Phase.LOADING
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.events: list[dict[str, Any]] = []
        self.engine_pids: list[int] = []
        self.in_flight = 0
        self.engine_waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        # Installed by the lifecycle; the defaults keep the app usable on its own in tests.
        self.on_faults_changed: Callable[[dict[str, object]], None] = lambda _update: None
        self.on_inference_answered: Callable[[], None] = lambda: None
        self.on_engine_error: Callable[[], None] = lambda: None

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

    def on_engine_stats(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        """The engine's scheduler stats, as vLLM's EngineCore reports them with its outputs."""
        self.engine_waiting = waiting
        self.metrics.running = running
        self.metrics.waiting = waiting
        self.metrics.kv_cache_usage = kv_cache_usage

    async def gate(self) -> None:
        """Before any request is handled: wait forever while hung (the connection stays open)."""
        if self.is_hung:
            await asyncio.get_running_loop().create_future()

    async def checkpoint(self) -> None:
        """Between relayed steps: hang with the server, wait forever once stalled, fail once the engine is dead."""
        await self.gate()
        if self.is_stalled:
            await asyncio.get_running_loop().create_future()
        if self.is_engine_dead:
            raise EngineDead

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        """Relay one request's steps from the engine, counting tokens and latencies into the metrics."""
        if self.client is None or self.is_engine_dead:
            raise EngineDead
        metrics = self.metrics
        started = last = time.monotonic()
        reasons: list[str] = []
        first = True
        finished = False
        self.in_flight += 1
        steps = self.client.generate(request)
        try:
            async for step in steps:
                if self.phase is not Phase.READY:
                    await self.checkpoint()
                now = time.monotonic()
                if first:
                    first = False
                    metrics.prompt_tokens += request.prompt_tokens
                    self.prompt_tokens += request.prompt_tokens
                    metrics.ttft.observe(now - started)
                else:
                    metrics.itl.observe(now - last)
                last = now
                metrics.generation_tokens += len(step.tokens)
                self.generation_tokens += len(step.tokens)
                reasons += [reason for _, _, reason in step.tokens if reason is not None]
                finished = step.last
                yield step
            for reason in reasons:
                metrics.success[reason] += 1
            metrics.e2e.observe(time.monotonic() - started)
        finally:
            if not finished:
                metrics.success["abort"] += 1
            self.in_flight -= 1
            await steps.aclose()

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
        view["engine_children"] = self.settings.engine_processes
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
            "running": max(0, self.in_flight - self.engine_waiting),
            "waiting": self.engine_waiting,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "engine_children": list(self.engine_pids),
            "events": list(self.events),
        }


__all__ = ["EngineClient", "EngineDead", "LocalEngine", "Phase", "Runtime", "Stats"]
