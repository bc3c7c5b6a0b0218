"""The inference probe: a one-token completion as a liveness probe, for each replica that asks for one.

vLLM's `/health` answers 200 while a hung engine makes no progress, and its `/metrics` goes stale with it,
so only a request shows the hang. With no traffic at all nothing else would; this probe is that traffic.
Only a timeout counts, as a `Stalled` event for the machine: a refused or failing server is the health
probe's business, and an exit the watcher's.
"""

from __future__ import annotations

import logging

import httpx

from supervisor.config.schema import InferenceProbe
from supervisor.core.clock import Clock
from supervisor.core.machine_types import Stalled
from supervisor.core.states import State
from supervisor.loop.owner import ModelOwner

log = logging.getLogger(__name__)


class InferenceProber:
    def __init__(self, owner: ModelOwner, root: str, settings: InferenceProbe, clock: Clock) -> None:
        self._owner = owner
        self._root = root
        self._settings = settings
        self._clock = clock

    async def run(self) -> None:
        """Probe every `interval` while the replica serves; ends only by cancellation."""
        async with httpx.AsyncClient(base_url=self._root, trust_env=False) as client:
            while True:
                await self._clock.sleep_until(self._clock.now() + self._settings.interval)
                snap = self._owner.snapshot
                if snap.state is State.HEALTHY and snap.live and await self._times_out(client):
                    detail = f"inference probe: no token within {self._settings.timeout:g}s"
                    log.warning("%s: %s", self._owner.model_id, detail)
                    self._owner.post(Stalled(snap.run, detail))

    async def _times_out(self, client: httpx.AsyncClient) -> bool:
        timeout = self._settings.timeout
        try:
            listed = await client.get("/v1/models", timeout=timeout)
            name = listed.json()["data"][0]["id"]
            body = {"model": name, "prompt": "ping", "max_tokens": 1}
            await client.post("/v1/completions", json=body, timeout=timeout)
        except httpx.TimeoutException:
            return True
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.debug("%s: inference probe failed without timing out: %s", self._owner.model_id, exc)
        return False
