"""The client's view, judged: which recorded requests failed and why, counts, and latency percentiles.

Pure functions over `RequestRecord`s (no IO, no clock), shared by the `requests` expectation, the reports
and the resilience table, so a request counts as failed in exactly one way everywhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chaos.timeline import RequestRecord


def failure(record: RequestRecord) -> str | None:
    """Why the request failed, as its client would say it; None when it succeeded.

    A request fails when it timed out or its connection failed, when its status is not 200, when it carried
    an error (an error event in the stream, or an error body), or when it was not complete: a stream must end
    with `data: [DONE]` after nothing but data events, a plain answer must be a completion, and either must
    have a choice that finished (a finish_reason): a stream cut short and closed with [DONE] is not an answer.
    """
    if record.timed_out:
        return "timed out"
    if record.transport_error is not None:
        return f"connection failed ({record.transport_error})"
    if record.status != 200:
        return f"HTTP {record.status}"
    if record.error_event is not None:
        return f"error event ({record.error_event})"
    if record.stream and record.stray_lines:
        sample = f": {record.stray_sample[:60]!r}" if record.stray_sample else ""
        return f"{record.stray_lines} line(s) in the stream that were not data events{sample}"
    if not record.done:
        return "stream ended without data: [DONE]" if record.stream else "the answer was not a completion"
    if not record.finished:
        return "no choice finished (no finish_reason): the answer was cut short"
    return None


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile (p in (0, 100]): a value that was really seen; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Tally:
    """Requests sent, succeeded and failed, with the failures counted by reason."""

    sent: int
    succeeded: int
    failed: int
    reasons: tuple[tuple[str, int], ...] = ()  # most frequent first

    def describe(self) -> str:
        text = f"{self.sent} sent, {self.succeeded} succeeded, {self.failed} failed"
        if self.reasons:
            text += " (" + ", ".join(f"{reason} x{n}" for reason, n in self.reasons) + ")"
        return text


def tally(records: Iterable[RequestRecord]) -> Tally:
    outcomes = [failure(r) for r in records]
    reasons = Counter(reason for reason in outcomes if reason is not None)
    failed = sum(reasons.values())
    return Tally(len(outcomes), len(outcomes) - failed, failed, tuple(reasons.most_common()))


def failed(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if failure(r) is not None]


def latencies(records: Iterable[RequestRecord]) -> list[float]:
    return [r.latency for r in records]
