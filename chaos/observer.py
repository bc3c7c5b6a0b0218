"""Watches a supervisor from outside: polls its API (statuses, each model's events) and the processes.

Only GETs are sent, and GETs never change a supervisor's state, so watching cannot change what is watched.
Events come with the supervisor's own Unix times; statuses get the harness's receipt time. Processes are
sighted through the `pid` the API reports (plus its descendants, which is how vLLM's engine children are
found before a kill of their parent orphans them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

from chaos import procs
from chaos.timeline import Event, FaultRecord, Observation, Overlap, RequestRecord, Sighting, Snapshot


class Observer:
    def __init__(self, client: httpx.AsyncClient, base_url: str, *, processes_visible: bool) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.processes_visible = processes_visible
        self.events: dict[tuple[str, int, float, str], Event] = {}
        self.snapshots: list[Snapshot] = []
        self.sightings: dict[tuple[int, float], Sighting] = {}
        self.overlaps: list[Overlap] = []
        self.errors: list[str] = []
        self._since: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    # --- polling ------------------------------------------------------------------------------------

    async def poll(self) -> None:
        """One round: every model's status, new events, and the processes of each model's current run."""
        now = time.time()
        try:
            response = await self.client.get(f"{self.base_url}/api/llm/models")
            response.raise_for_status()
            models = response.json().get("models", [])
        except (httpx.HTTPError, ValueError) as exc:
            self._error(f"status poll failed: {exc!r}")
            return
        for status in models:
            model = str(status.get("id"))
            fields = {k: v for k, v in status.items() if _is_scalar(v)}
            listed = [r for r in status.get("replicas") or [] if isinstance(r, dict)]
            replicas = tuple({k: v for k, v in r.items() if _is_scalar(v)} for r in listed)
            self.snapshots.append(Snapshot(now, model, fields, replicas))
            await self._poll_events(model)
            if self.processes_visible:
                # Every replica's run (a model of one replica lists itself); `pid` alone names only the lead.
                pids = [r.get("pid") for r in replicas] if replicas else [status.get("pid")]
                for index, pid in enumerate(pids):
                    if isinstance(pid, int):
                        self._sight(model, pid, now, index)
        if self.processes_visible:
            self._check_overlaps(now)

    async def _poll_events(self, model: str) -> None:
        since = self._since.get(model, 0)
        try:
            response = await self.client.get(f"{self.base_url}/api/llm/models/{model}/events", params={"since": since})
            response.raise_for_status()
            items: list[dict[str, Any]] = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self._error(f"events poll for {model} failed: {exc!r}")
            return
        for item in items:
            event = Event(
                model=model,
                seq=int(item["seq"]),
                time=float(item["time"]),
                kind=str(item["kind"]),
                state=str(item["state"]),
                detail=_text(item.get("detail")),
                reason=_text(item.get("reason")),
                replica=int(item.get("replica") or 0),
            )
            self.events.setdefault((model, event.seq, event.time, event.kind), event)
            self._since[model] = max(self._since.get(model, 0), event.seq)

    def resync(self) -> None:
        """After the supervisor itself restarted, read every timeline from the start again (deduplicated)."""
        self._since.clear()

    def _sight(self, model: str, pid: int, now: float, replica: int = 0) -> None:
        found = procs.describe(pid)
        if found is None:
            return
        created, name, children = found
        for child_pid, child_created, child_name in [(pid, created, name), *children]:
            key = (child_pid, child_created)
            if key not in self.sightings:
                self.sightings[key] = Sighting(model, child_pid, child_created, pid, child_name, now, replica)

    def _check_overlaps(self, now: float) -> None:
        """Two runs of one replica alive at once (replicas of a model run side by side, as they should)."""
        runs: dict[tuple[str, int], set[int]] = {}
        for sighting in self.sightings.values():
            if procs.is_alive(sighting.key):
                runs.setdefault((sighting.model, sighting.replica), set()).add(sighting.run_pid)
        for (model, replica), run_pids in runs.items():
            if len(run_pids) > 1:
                self.overlaps.append(Overlap(now, model, tuple(sorted(run_pids)), replica))

    def _error(self, message: str) -> None:
        if len(self.errors) < 50:  # a supervisor that is down for a while would otherwise flood the journal
            self.errors.append(f"{time.time():.2f} {message}")

    # --- background loop ----------------------------------------------------------------------------

    def start(self, interval: float) -> None:
        self._task = asyncio.create_task(self._loop(interval))

    async def _loop(self, interval: float) -> None:
        while True:
            started = time.monotonic()
            await self.poll()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def observation(
        self,
        launched_at: float,
        *,
        steady_at: float | None = None,
        faults_end: float | None = None,
        ended_at: float | None = None,
        faults: tuple[FaultRecord, ...] = (),
        alive_at_end: frozenset[procs.Key] = frozenset(),
        requests: tuple[RequestRecord, ...] = (),
    ) -> Observation:
        """Everything seen so far, with the runner's marks (the times are Unix times)."""
        return Observation(
            launched_at=launched_at,
            steady_at=steady_at,
            faults_end=faults_end,
            ended_at=time.time() if ended_at is None else ended_at,
            faults=faults,
            alive_at_end=alive_at_end,
            events=tuple(sorted(self.events.values(), key=lambda e: (e.time, e.seq))),
            snapshots=tuple(self.snapshots),
            sightings=tuple(self.sightings.values()),
            overlaps=tuple(self.overlaps),
            processes_visible=self.processes_visible,
            notes=tuple(self.errors),
            requests=requests,
        )


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _text(value: object) -> str | None:
    return None if value is None else str(value)
