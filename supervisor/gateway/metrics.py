"""The gateway's request metrics, per model: updated once per request, never per chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "llm_supervisor_gateway"
# Small requests answer in milliseconds; generations take seconds to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_requests", "Requests answered, by model and HTTP status", ["model", "code"], registry=registry
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "From the request's arrival to the last byte of its answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_byte = Histogram(
            f"{PREFIX}_time_to_first_byte_seconds",
            "From the request's arrival to the first byte of its answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            f"{PREFIX}_retries",
            "Requests sent again to another replica (or held) after a failure before any byte reached the client",
            ["model", "reason"],
            registry=registry,
        )
        self.held = Histogram(
            f"{PREFIX}_held_seconds",
            "Time requests waited for a ready replica",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(f"{PREFIX}_in_flight", "Requests in flight", ["model"], registry=registry)
        self.fallbacks = Counter(
            f"{PREFIX}_fallbacks",
            "Requests a fallback model answered because the model named had no ready replica",
            ["model", "fallback"],
            registry=registry,
        )

        self._models: dict[str, ModelMetrics] = {}

    def of(self, model_id: str) -> ModelMetrics:
        """One model's series; labelled once and kept, since looking labels up costs more than counting."""
        found = self._models.get(model_id)
        if found is None:
            found = self._models[model_id] = ModelMetrics(
                self.requests, self.duration.labels(model_id), self.first_byte.labels(model_id),
                self.held.labels(model_id), self.in_flight.labels(model_id), model_id,
            )  # fmt: skip
        return found


@dataclass
class ModelMetrics:
    _requests: Counter
    duration: Histogram
    first_byte: Histogram
    held: Histogram
    in_flight: Gauge
    model_id: str
    _by_code: dict[int, Counter] = field(default_factory=dict)

    def answered(self, status: int) -> None:
        counter = self._by_code.get(status)
        if counter is None:
            counter = self._by_code[status] = self._requests.labels(self.model_id, str(status))
        counter.inc()
