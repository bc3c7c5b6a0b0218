"""The models' memory and CPU time in /metrics: `llm_supervisor_model_memory_bytes{model,kind}` (kind `rss` or
`gpu`) and `llm_supervisor_model_cpu_seconds_total{model}`, summed over the processes of each model's runs.

/metrics is rendered on the event loop, so nothing is measured here: each scrape reads the figures of the
latest measurement and asks for a new one in a worker thread (supervisor.loop.resources.UsageCache). The
figures are thus at most one scrape old, and a model shows them from the second scrape after it started.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.api.facade import SupervisorFacade
from supervisor.loop.resources import UsageCache

PREFIX = "llm_supervisor"


class UsageCollector(Collector):
    def __init__(self, supervisor: SupervisorFacade) -> None:
        self._supervisor = supervisor
        self._cache = UsageCache(supervisor.models)

    def collect(self) -> Iterable[Metric]:
        memory = GaugeMetricFamily(
            f"{PREFIX}_model_memory_bytes",
            "Memory the processes of the model's runs hold: rss (resident, summed) or gpu (NVML; absent without it)",
            labels=["model", "kind"],
        )
        cpu = CounterMetricFamily(
            f"{PREFIX}_model_cpu_seconds",
            "CPU time (user + system) of the processes of the model's current runs; resets when a run ends",
            labels=["model"],
        )
        usage, gpu_error = self._cache.latest()
        for model_id in self._supervisor.model_ids():
            measured = usage.get(model_id)
            memory.add_metric([model_id, "rss"], measured.rss if measured else 0)
            if gpu_error is None:
                memory.add_metric([model_id, "gpu"], (measured.gpu or 0) if measured else 0)
            cpu.add_metric([model_id], measured.cpu_seconds if measured else 0.0)
        return [memory, cpu]
