"""The fake engine: deterministic text, token counting, scheduling and timing.

It runs where vLLM's does: in the ``VLLM::EngineCore`` process (engine_core.py), or inside the API server
with ``--engine-children 0``. Text is a function of (--seed, the request's seed, the prompt, the choice
index): the same request to a server started with the same seed returns the same words, and nothing else
moves it. Requests beyond ``--max-num-seqs`` wait for a slot, so ``vllm:num_requests_waiting`` is real. The
engine keeps the scheduler's gauges (running, waiting, KV-cache usage) and reports every change through
``on_stats``, as vLLM's EngineCore sends its scheduler stats to the API server; the API server counts the
rest (tokens, latencies) from the steps it receives.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORDS = (
    "the",
    "model",
    "answers",
    "every",
    "request",
    "with",
    "words",
    "chosen",
    "from",
    "a",
    "small",
    "vocabulary",
    "so",
    "that",
    "tests",
    "can",
    "read",
    "them",
    "supervisor",
    "keeps",
    "servers",
    "alive",
    "and",
    "restarts",
    "when",
    "they",
    "crash",
    "hang",
    "or",
    "run",
    "out",
    "of",
    "memory",
    "while",
    "clients",
    "wait",
    "for",
    "tokens",
    "to",
    "stream",
    "back",
    "one",
    "by",
    "over",
    "server",
    "sent",
    "events",
    "until",
    "final",
    "done",
    "marker",
    "arrives",
    "usage",
    "block",
    "counts",
    "prompt",
    "completion",
    "billing",
    "dashboards",
    "alerts",
)


class EngineDead(Exception):
    """The engine died; requests fail with EngineDeadError's message."""


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: words and punctuation marks, at least one token."""
    return max(1, len(_TOKEN.findall(text)))


@dataclass(frozen=True, slots=True)
class Sequence:
    """One planned output: its tokens (text pieces) and why it ends."""

    index: int
    tokens: tuple[str, ...]
    finish_reason: str


def plan(
    seed: int,
    request_seed: int | None,
    prompt_key: str,
    index: int,
    max_tokens: int | None,
    *,
    ignore_eos: bool = False,
) -> Sequence:
    """The output for one choice: a natural length of 8..64 words, cut at ``max_tokens`` ("length")."""
    rng = random.Random(f"{seed}|{request_seed}|{index}|{prompt_key}")
    natural = rng.randint(8, 64)
    if max_tokens is not None and (ignore_eos or max_tokens < natural):
        length, reason = max_tokens, "length"
    else:
        length, reason = natural, "stop"
    words = [rng.choice(_WORDS) for _ in range(length)]
    return Sequence(index, tuple(w if i == 0 else f" {w}" for i, w in enumerate(words)), reason)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What the engine needs to generate one request: it plans the text itself (plain data, sent as JSON)."""

    prompt_tokens: int
    prompt_keys: tuple[str, ...]
    n: int
    seed: int
    request_seed: int | None
    max_tokens: int | None
    ignore_eos: bool
    ttft: float
    itl: float

    @property
    def choices(self) -> int:
        """Outputs in all: n for each prompt."""
        return len(self.prompt_keys) * self.n

    def plan(self) -> list[Sequence]:
        """The outputs, one per (prompt, choice)."""
        return [
            plan(self.seed, self.request_seed, key, p * self.n + i, self.max_tokens, ignore_eos=self.ignore_eos)
            for p, key in enumerate(self.prompt_keys)
            for i in range(self.n)
        ]

    def to_json(self) -> list[Any]:
        """The fields in order, for the pipe to EngineCore."""
        return [
            self.prompt_tokens,
            list(self.prompt_keys),
            self.n,
            self.seed,
            self.request_seed,
            self.max_tokens,
            self.ignore_eos,
            self.ttft,
            self.itl,
        ]

    @classmethod
    def from_json(cls, data: list[Any]) -> GenerationRequest:
        """The inverse of to_json."""
        tokens, keys, n, seed, request_seed, max_tokens, ignore_eos, ttft, itl = data
        return cls(tokens, tuple(keys), n, seed, request_seed, max_tokens, ignore_eos, ttft, itl)


Token = tuple[int, str, str | None]


@dataclass(frozen=True, slots=True)
class Step:
    """One engine step of one request: the tokens it produced, as (choice index, text, finish reason or None)."""

    tokens: tuple[Token, ...]
    last: bool = False


class Engine:
    """Admission, timing and KV-cache accounting of generation requests; the scheduler's gauges."""

    def __init__(self, max_num_seqs: int, kv_cache_tokens: int, on_stats: Callable[[], None] = lambda: None) -> None:
        self._slots = asyncio.Semaphore(max_num_seqs)
        self._capacity = max(1, kv_cache_tokens)
        self._on_stats = on_stats
        self._stalled: asyncio.Future[None] | None = None
        self._dead = False
        self.running = 0
        self.waiting = 0
        self.kv_tokens = 0

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV cache held by running requests, 0..1."""
        return min(1.0, self.kv_tokens / self._capacity)

    def stats(self) -> tuple[int, int, float]:
        """(running, waiting, KV-cache usage), as the scheduler reports them."""
        return self.running, self.waiting, self.kv_cache_usage

    def stall(self) -> None:
        """Stop stepping for good: every request waits at its next step, forever."""
        if self._stalled is None:
            self._stalled = asyncio.get_running_loop().create_future()

    def die(self) -> None:
        """The engine is dead: every request fails at its next step."""
        self._dead = True

    async def _checkpoint(self) -> None:
        if self._stalled is not None:
            await self._stalled
        if self._dead:
            raise EngineDead

    def _changed(self) -> None:
        if self._stalled is None:
            self._on_stats()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        """Yield the steps of one request, counted as waiting, then running, until it ends or is aborted."""
        sequences = request.plan()
        await self._checkpoint()
        self.waiting += 1
        self._changed()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        # The prompt's KV blocks are allocated when the request is scheduled, before prefill ends.
        held = request.prompt_tokens
        self.kv_tokens += held
        self._changed()
        try:
            if request.ttft > 0:
                await asyncio.sleep(request.ttft)
            steps = max(len(s.tokens) for s in sequences)
            for step in range(steps):
                if step > 0 and request.itl > 0:
                    await asyncio.sleep(request.itl)
                await self._checkpoint()
                produced = tuple(
                    (s.index, s.tokens[step], s.finish_reason if step == len(s.tokens) - 1 else None)
                    for s in sequences
                    if step < len(s.tokens)
                )
                held += len(produced)
                self.kv_tokens += len(produced)
                self._changed()
                yield Step(produced, last=step == steps - 1)
        finally:
            self.kv_tokens -= held
            self.running -= 1
            self._slots.release()
            self._changed()
