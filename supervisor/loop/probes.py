"""One health probe per replica with an endpoint, each keeping its own connection; they share one TLS
context. A manual health check uses the same probe as the schedule."""

from __future__ import annotations

import asyncio

from supervisor.probe import HttpProbe


class ProbeClients:
    def __init__(self) -> None:
        self._probes: dict[str, HttpProbe] = {}

    def prober(self, unit: str, root: str) -> HttpProbe:
        if unit not in self._probes:
            self._probes[unit] = HttpProbe(root)
        return self._probes[unit]

    async def aclose(self) -> None:
        await asyncio.gather(*(probe.aclose() for probe in self._probes.values()))
