"""The soak's driver side: a management-API client that counts its errors, the seeded fault schedule, and the
injector that applies each fault to a live supervisor and its fake-vllm servers.

The schedule is drawn from the seed alone (times, kinds, models, how long a hang or a stop lasts, which way a
reload is asked for), so two runs with one seed ask for the same faults in the same order. What a fault meets
is up to the fleet at that moment: a fault aimed at a model that is not healthy then is skipped and counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx


class Kind(StrEnum):
    """The fault kinds of the chaos catalogue that the soak draws from."""

    KILL = "kill9"  # SIGKILL of the model's API-server process (its engine child is left to the supervisor)
    HANG = "hang"  # SIGSTOP of the model's process group; released after `hold` s, or never (hold 0)
    OOM = "oom"  # fake-vllm's CUDA out-of-memory: /admin/faults {"oom": "after:0"}
    ENGINE_DEAD = "engine_dead"  # /admin/faults {"engine_dead_after": 0}
    SLOW_START = "slow_start"  # restart (API) of the model whose fake-vllm starts with --startup-delay
    STOP_START = "stop_start"  # stop (API), then start again after `hold` s
    RELOAD = "reload"  # change one model's settings in the file, then SIGHUP or POST /api/reload


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault: `at` seconds after the soak's start."""

    at: float
    kind: Kind
    model: str
    hold: float = 0.0
    by_signal: bool = False  # a reload asked for with SIGHUP rather than the API


def schedule(
    seed: int, models: list[str], slow_model: str, seconds: float, every: float, kinds: list[Kind] | None = None
) -> list[Fault]:
    """Faults (of `kinds`, default all) from `every`/2 s on, one every `every` s on average, until `seconds`;
    a function of its arguments."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    at = every * rng.uniform(0.5, 1.0)
    kinds = kinds or list(Kind)
    while at < seconds:
        kind = rng.choice(kinds)
        model = slow_model if kind is Kind.SLOW_START else rng.choice(models)
        hold = 0.0
        if kind is Kind.HANG:
            # Half the hangs end before the probes can notice; the others wait for the supervisor's kill.
            hold = rng.uniform(0.5, 2.0) if rng.random() < 0.5 else 0.0
        elif kind is Kind.STOP_START:
            hold = rng.uniform(2.0, 8.0)
        faults.append(Fault(round(at, 3), kind, model, round(hold, 3), by_signal=rng.random() < 0.5))
        at += every * rng.uniform(0.5, 1.5)
    return faults


class Api:
    """The management API with its token; counts every answer by status and every transport error."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 10.0) -> None:
        self.client = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.transport_errors = 0
        self.problems: list[str] = []  # the first few 5xx and transport errors, for the report

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        self.requests += 1
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.transport_errors += 1
            self._note(f"{method} {path}: {type(exc).__name__}: {exc}")
            return None
        self.statuses[response.status_code] += 1
        if response.status_code >= 500:
            self._note(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    def json(self, path: str) -> Any:
        response = self.call("GET", path)
        return response.json() if response is not None and response.status_code == 200 else None

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def _note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What a fault leaves to do later: release a hang (SIGCONT) or start a stopped model."""

    at: float
    kind: Kind
    model: str
    pid: int = 0


class Injector:
    """Applies faults and their follow-ups; counts what was applied and what was skipped, by kind."""

    def __init__(
        self,
        api: Api,
        server_urls: dict[str, str],
        config: dict[str, Any],
        config_path: Path,
        supervisor_pid: int,
    ) -> None:
        self.api = api
        self.server_urls = server_urls
        self.config = config
        self.config_path = config_path
        self.supervisor_pid = supervisor_pid
        self.applied: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.reload_surprises: list[str] = []  # a reload answer that did not restart just the changed model
        self.follow_ups: list[FollowUp] = []
        self._actions: dict[Kind, Callable[[Fault, Any, float], bool]] = {
            Kind.KILL: self._kill9,
            Kind.HANG: self._hang,
            Kind.OOM: self._oom,
            Kind.ENGINE_DEAD: self._engine_dead,
            Kind.SLOW_START: self._slow_start,
            Kind.STOP_START: self._stop_start,
            Kind.RELOAD: self._reload,
        }

    def apply(self, fault: Fault, now: float) -> None:
        status = self.api.json(f"/api/llm/models/{fault.model}")
        pid = status.get("pid") if isinstance(status, dict) else None
        healthy = isinstance(status, dict) and status.get("state") == "healthy" and isinstance(pid, int)
        if fault.kind is not Kind.RELOAD and not healthy:
            self.skipped[fault.kind] += 1  # not running or already recovering: nothing to hit
            return
        done = self._actions[fault.kind](fault, pid, now)
        (self.applied if done else self.skipped)[fault.kind] += 1

    def due(self, now: float) -> None:
        """Run the follow-ups whose time has come."""
        ready = [f for f in self.follow_ups if f.at <= now]
        self.follow_ups = [f for f in self.follow_ups if f.at > now]
        for follow in ready:
            self._follow(follow)

    def finish(self) -> None:
        """Run every pending follow-up now (the soak is over: release hangs, start stopped models)."""
        pending, self.follow_ups = self.follow_ups, []
        for follow in pending:
            self._follow(follow)

    def _follow(self, follow: FollowUp) -> None:
        if follow.kind is Kind.HANG:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(follow.pid, signal.SIGCONT)  # the group may be gone: the supervisor killed it
        else:
            self.api.call("POST", f"/api/llm/models/{follow.model}/start")

    def _kill9(self, fault: Fault, pid: int, now: float) -> bool:
        return _signal(pid, signal.SIGKILL, group=False)

    def _hang(self, fault: Fault, pid: int, now: float) -> bool:
        if not _signal(pid, signal.SIGSTOP, group=True):
            return False
        if fault.hold:
            self.follow_ups.append(FollowUp(now + fault.hold, Kind.HANG, fault.model, pid))
        return True

    def _admin(self, model: str, body: dict[str, object]) -> bool:
        try:
            response = httpx.post(f"{self.server_urls[model]}/admin/faults", json=body, timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _oom(self, fault: Fault, pid: int, now: float) -> bool:
        return self._admin(fault.model, {"oom": "after:0"})

    def _engine_dead(self, fault: Fault, pid: int, now: float) -> bool:
        return self._admin(fault.model, {"engine_dead_after": 0})

    def _slow_start(self, fault: Fault, pid: int, now: float) -> bool:
        response = self.api.call("POST", f"/api/llm/models/{fault.model}/restart")
        return response is not None and response.status_code == 200

    def _stop_start(self, fault: Fault, pid: int, now: float) -> bool:
        response = self.api.call("POST", f"/api/llm/models/{fault.model}/stop")
        if response is None or response.status_code != 200:
            return False
        self.follow_ups.append(FollowUp(now + fault.hold, Kind.STOP_START, fault.model))
        return True

    def _reload(self, fault: Fault, pid: int | None, now: float) -> bool:
        # A settings change the reload must apply by restarting that model alone: its probe interval.
        entry = self.config["llmModels"][fault.model]
        entry["health_check_interval"] = 1.5 if entry["health_check_interval"] == 1.0 else 1.0
        self.config_path.write_text(json.dumps(self.config, indent=2), encoding="utf-8")
        if fault.by_signal:
            return _signal(self.supervisor_pid, signal.SIGHUP, group=False)
        response = self.api.call("POST", "/api/reload")
        if response is None or response.status_code != 200:
            return False
        plan = response.json()
        if plan.get("restarted") != [fault.model] or plan.get("added") or plan.get("removed"):
            self.reload_surprises.append(f"changed {fault.model}, answer {plan}")
        return True


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> bool:
    try:
        if group:
            os.killpg(pid, sig)  # the supervisor starts each run in a session of its own: pgid == pid
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
