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

    async def forget(self, unit: str) -> None:
        """A reload stopped this replica for good: close its connection (its replacement may probe elsewhere)."""
        probe = self._probes.pop(unit, None)
        if probe is not None:
            await probe.aclose()

    async def aclose(self) -> None:
        await asyncio.gather(*(probe.aclose() for probe in self._probes.values()))
