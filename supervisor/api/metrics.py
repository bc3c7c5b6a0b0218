"""Prometheus metrics (docs/design/contract.md section 5), kept by observing the supervisor; the core never
imports this.

Counters move on timeline events and probes (the Observer seam). Gauges (`model_state`, `model_up`,
`model_healthy`, `uptime_seconds`) are read from `statuses()` at scrape time, so they are exactly the
status the API shows and cannot drift. Counters start at zero in each supervisor process: the journal keeps
the restart budget across restarts, but these are rates for Prometheus, which handles counter resets.

A private `CollectorRegistry` (not the process-global one) so two apps in one test process never collide.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from supervisor.api.facade import SupervisorFacade
from supervisor.api.metrics_usage import UsageCollector
from supervisor.core.states import Cause, EventKind, State
from supervisor.core.views import TimelineEvent

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# prometheus_client adds a `*_created` series to every counter and histogram: it doubled /metrics and no query
# or alert reads it (Prometheus sees a counter's reset in the counter itself). Process-wide, the gateway's too.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

_Series = TypeVar("_Series", Counter, Histogram)
PREFIX = "llm_supervisor"
# `spawned` reasons: an operator's restart, or the cause of the run that died.
# "exit": a run that ended with a success exit code, restarted under `always` / `unless-stopped`.
RESTART_REASONS = ("manual", "exit", *(c.value for c in Cause))
# `exited` causes; "none" is an exit that was no failure (a requested stop, a success exit code).
EXIT_CAUSES = (*(c.value for c in Cause), "none")
PROBE_RESULTS = ("success", "failure")
# Probes answer in milliseconds when healthy and run into health_check_timeout (default 5 s) when not.
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StatusGauges(Collector):
    """Gauges computed from the supervisor's statuses at each scrape (pure reads)."""

    def __init__(self, supervisor: SupervisorFacade) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            f"{PREFIX}_model_state", "1 for the model's current state, 0 for the others", labels=["model", "state"]
        )
        up = GaugeMetricFamily(f"{PREFIX}_model_up", "1 while a run of the model is alive", labels=["model"])
        healthy = GaugeMetricFamily(
            f"{PREFIX}_model_healthy", "1 while the model passes its health probes", labels=["model"]
        )
        uptime = GaugeMetricFamily(
            f"{PREFIX}_uptime_seconds", "Seconds since the current run was spawned (0 when none)", labels=["model"]
        )
        replica_up = GaugeMetricFamily(
            f"{PREFIX}_replica_up", "1 while the replica's run is alive", labels=["model", "replica"]
        )
        replica_healthy = GaugeMetricFamily(
            f"{PREFIX}_replica_healthy", "1 while the replica passes its health probes", labels=["model", "replica"]
        )
        for status in self._supervisor.statuses():
            for candidate in State:
                state.add_metric([status.id, candidate.value], 1.0 if status.state == candidate else 0.0)
            up.add_metric([status.id], 1.0 if status.is_running else 0.0)
            healthy.add_metric([status.id], 1.0 if status.is_healthy else 0.0)
            uptime.add_metric([status.id], status.uptime_seconds or 0.0)
            for replica in status.replicas:
                labels = [status.id, str(replica.index)]
                replica_up.add_metric(labels, 1.0 if replica.pid is not None else 0.0)
                replica_healthy.add_metric(labels, 1.0 if replica.is_healthy else 0.0)
        return [state, up, healthy, uptime, replica_up, replica_healthy]


class _FluidMcpGauges(Collector):
    """FluidMCP's three series (docs/fluidmcp.md), read from statuses at each scrape so its documented alerts work
    unchanged. `restarts_total` is the status's `restart_count`: automatic restarts since an operator last started
    the model, kept across supervisor restarts; an operator's start resets it, which Prometheus reads as a
    counter reset."""

    def __init__(self, supervisor: SupervisorFacade) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        restarts = CounterMetricFamily(
            "fluidmcp_server_restarts", "Automatic restarts (FluidMCP's restart_count)", labels=["server"]
        )
        status = GaugeMetricFamily("fluidmcp_server_status", "1 healthy, 0 not (FluidMCP's name)", labels=["server"])
        uptime = GaugeMetricFamily(
            "fluidmcp_server_uptime_seconds",
            "Seconds since the current run was spawned (0 when none)",
            labels=["server"],
        )
        for model in self._supervisor.statuses():
            restarts.add_metric([model.id], float(model.restart_count))
            status.add_metric([model.id], 1.0 if model.is_healthy else 0.0)
            uptime.add_metric([model.id], model.uptime_seconds or 0.0)
        return [restarts, status, uptime]


class Metrics:
    """Observer + registry. Create it before `Fleet.start()` so no event goes uncounted."""

    def __init__(self, supervisor: SupervisorFacade) -> None:
        self._supervisor = supervisor
        self.registry = CollectorRegistry()
        self.registry.register(_StatusGauges(supervisor))
        self.registry.register(_FluidMcpGauges(supervisor))
        self.registry.register(UsageCollector(supervisor))  # memory and CPU per model
        ProcessCollector(registry=self.registry)  # the supervisor's own: process_resident_memory_bytes, fds, CPU
        self._restarts = Counter(
            f"{PREFIX}_restarts",
            "Runs spawned to replace an earlier one, by reason (manual or the failure cause)",
            ["model", "reason"],
            registry=self.registry,
        )
        self._exits = Counter(
            f"{PREFIX}_exits",
            "Runs that ended, by failure cause ('none' for requested stops and success exit codes)",
            ["model", "cause"],
            registry=self.registry,
        )
        self._checks = Counter(
            f"{PREFIX}_health_checks", "Health probes, by result", ["model", "result"], registry=self.registry
        )
        self._durations = Histogram(
            f"{PREFIX}_health_check_duration_seconds",
            "Time a health probe took, successful or not",
            ["model"],
            buckets=PROBE_BUCKETS,
            registry=self.registry,
        )
        self._ooms = Counter(
            f"{PREFIX}_oom", "CUDA out-of-memory errors detected in a model's output", ["model"], registry=self.registry
        )
        # Each model's labelled series, so a model removed by a reload takes its series with it.
        self._series: dict[str, set[tuple[Counter | Histogram, tuple[str, ...]]]] = {}
        supervisor.add_observer(self)

    def _child(self, metric: _Series, model_id: str, *labels: str) -> _Series:
        self._series[model_id].add((metric, (model_id, *labels)))
        return metric.labels(model_id, *labels)

    def _ensure(self, model_id: str) -> None:
        # Every series exists from the start at 0, so rate() and absent-alerts work before the first failure.
        if model_id in self._series:
            return
        self._series[model_id] = set()
        for reason in RESTART_REASONS:
            self._child(self._restarts, model_id, reason)
        for cause in EXIT_CAUSES:
            self._child(self._exits, model_id, cause)
        for result in PROBE_RESULTS:
            self._child(self._checks, model_id, result)
        self._child(self._durations, model_id)
        self._child(self._ooms, model_id)

    def _forget(self, model_id: str) -> None:
        for metric, labels in self._series.pop(model_id):
            metric.remove(*labels)

    def on_event(self, event: TimelineEvent) -> None:
        """Count restarts, exits and OOMs from the timeline."""
        self._ensure(event.model_id)
        if event.kind == EventKind.SPAWNED and event.reason is not None:
            self._child(self._restarts, event.model_id, event.reason).inc()
        elif event.kind == EventKind.EXITED:
            self._child(self._exits, event.model_id, event.reason or "none").inc()
        elif event.kind == EventKind.OOM_DETECTED:
            self._child(self._ooms, event.model_id).inc()

    def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
        """Count one probe and record how long it took."""
        self._ensure(model_id)  # records both series, so a probe (the hot path) only looks its labels up
        self._checks.labels(model_id, "success" if ok else "failure").inc()
        self._durations.labels(model_id).observe(duration)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (call from the event loop: reads statuses). A model
        no longer configured (removed by a reload) loses its series here, after its last events were counted."""
        configured = set(self._supervisor.model_ids())
        for model_id in configured:
            self._ensure(model_id)
        for model_id in self._series.keys() - configured:
            self._forget(model_id)
        return generate_latest(self.registry)
