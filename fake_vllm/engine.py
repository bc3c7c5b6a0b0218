"""The fake engine: deterministic text, token counting, scheduling and timing, counted into the metrics.

Text is a function of (--seed, the request's seed, the prompt, the choice index): the same request to a
server started with the same seed returns the same words, and nothing else moves it. Requests beyond
``--max-num-seqs`` wait for a slot, so ``vllm:num_requests_waiting`` is real. ``checkpoint`` is the
server's hook between steps: it blocks forever while the server hangs or the engine stalls and raises
EngineDead once the engine is dead, so faults reach requests already in flight.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from fake_vllm.metrics import Metrics

KV_CACHE_TOKENS = 49152
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
class Step:
    """One engine step: the tokens it produced, as (choice index, text, finish reason or None)."""

    tokens: tuple[tuple[int, str, str | None], ...]


class Engine:
    """Admission, timing and accounting of generation requests."""

    def __init__(self, metrics: Metrics, max_num_seqs: int, checkpoint: Callable[[], Awaitable[None]]) -> None:
        self.metrics = metrics
        self._slots = asyncio.Semaphore(max_num_seqs)
        self._checkpoint = checkpoint
        self._kv_tokens = 0

    def _set_kv(self, delta: int) -> None:
        self._kv_tokens += delta
        self.metrics.kv_cache_usage = min(1.0, self._kv_tokens / KV_CACHE_TOKENS)

    async def generate(
        self, prompt_tokens: int, sequences: list[Sequence], ttft: float, itl: float
    ) -> AsyncGenerator[Step, None]:
        """Yield the steps of one request; metrics count it as running, then as a success or an abort."""
        metrics = self.metrics
        metrics.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            metrics.waiting -= 1
        metrics.running += 1
        held = 0
        finished = False
        started = time.monotonic()
        try:
            # The prompt's KV blocks are allocated when the request is scheduled, before prefill ends.
            held = prompt_tokens
            self._set_kv(prompt_tokens)
            if ttft > 0:
                await asyncio.sleep(ttft)
            await self._checkpoint()
            metrics.prompt_tokens += prompt_tokens
            last = started
            for step in range(max(len(s.tokens) for s in sequences)):
                if step > 0 and itl > 0:
                    await asyncio.sleep(itl)
                await self._checkpoint()
                now = time.monotonic()
                (metrics.ttft if step == 0 else metrics.itl).observe(now - last)
                last = now
                produced = tuple(
                    (s.index, s.tokens[step], s.finish_reason if step == len(s.tokens) - 1 else None)
                    for s in sequences
                    if step < len(s.tokens)
                )
                metrics.generation_tokens += len(produced)
                held += len(produced)
                self._set_kv(len(produced))
                yield Step(produced)
            finished = True
            for s in sequences:
                metrics.success[s.finish_reason] += 1
            metrics.e2e.observe(time.monotonic() - started)
        finally:
            if not finished:
                metrics.success["abort"] += 1
            self._set_kv(-held)
            metrics.running -= 1
            self._slots.release()
