"""Health probes of model servers: `HttpProbe` (one per model) and the `ProbeResult` it returns."""

from supervisor.probe.client import HttpProbe, shared_tls_context
from supervisor.probe.result import FALLBACK_PATH, HEALTH_PATH, ProbeResult, server_root

__all__ = ["FALLBACK_PATH", "HEALTH_PATH", "HttpProbe", "ProbeResult", "server_root", "shared_tls_context"]
