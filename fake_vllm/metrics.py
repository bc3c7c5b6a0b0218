"""vLLM's Prometheus metrics, counted from what the fake really served, in the text exposition format.

Written by hand rather than with prometheus_client so the server starts without importing it (tests start
this process hundreds of times); the output is the format prometheus_client itself emits (counters as
``name_total``, histograms with ``_bucket{le=..}``, ``_sum`` and ``_count``) and tests parse it with
prometheus_client's parser.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISHED_REASONS = ("stop", "length", "abort")


@dataclass(slots=True)
class Histogram:
    """Cumulative-on-output histogram with fixed upper bounds."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.observations += 1


def _number(value: float) -> str:
    return repr(float(value))


@dataclass(slots=True)
class Metrics:
    """Everything /metrics reports; the engine updates it, ``render`` formats it."""

    model_name: str
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    success: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISHED_REASONS, 0))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    stale: str | None = None

    def freeze(self) -> None:
        """From now on ``render`` repeats what it renders now, stale, whatever the engine counts later.

        vLLM's API server sets these from the stats its engine sends; an engine that stops sending leaves the
        last values in place, however many requests arrive or wait meanwhile.
        """
        self.stale = self.render()

    def render(self) -> str:
        """The Prometheus text exposition (version 0.0.4); the frozen text after ``freeze``."""
        if self.stale is not None:
            return self.stale
        labels = f'engine="0",model_name="{_escape(self.model_name)}"'
        out: list[str] = []

        def header(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")

        for name, kind, value, text in (
            ("vllm:num_requests_running", "gauge", self.running, "Number of requests in model execution batches."),
            ("vllm:num_requests_waiting", "gauge", self.waiting, "Number of requests waiting to be processed."),
            ("vllm:kv_cache_usage_perc", "gauge", self.kv_cache_usage, "KV-cache usage. 1 means 100 percent usage."),
            (
                "vllm:num_preemptions_total",
                "counter",
                self.preemptions,
                "Cumulative number of preemption from the engine.",
            ),
            ("vllm:prompt_tokens_total", "counter", self.prompt_tokens, "Number of prefill tokens processed."),
            (
                "vllm:generation_tokens_total",
                "counter",
                self.generation_tokens,
                "Number of generation tokens processed.",
            ),
        ):
            header(name, kind, text)
            out.append(f"{name}{{{labels}}} {_number(value)}\n")
        header("vllm:request_success_total", "counter", "Count of successfully processed requests.")
        for reason, value in self.success.items():
            out.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {_number(value)}\n')
        for name, histogram, text in (
            ("vllm:time_to_first_token_seconds", self.ttft, "Histogram of time to first token in seconds."),
            ("vllm:inter_token_latency_seconds", self.itl, "Histogram of inter-token latency in seconds."),
            ("vllm:e2e_request_latency_seconds", self.e2e, "Histogram of e2e request latency in seconds."),
        ):
            header(name, "histogram", text)
            cumulative = 0
            for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                out.append(f'{name}_bucket{{{labels},le="{le}"}} {_number(cumulative)}\n')
            out.append(f"{name}_count{{{labels}}} {_number(histogram.observations)}\n")
            out.append(f"{name}_sum{{{labels}}} {_number(histogram.total)}\n")
        return "".join(out)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
