"""Carrying out fault steps: signals, fake-vllm's /admin/faults, net toxics, API calls, supervisor kills.

`runnable(step, ctx)` says up front whether a step can run against this target (and why not), so a scenario
is refused before anything is touched rather than half-run. `perform(step, ctx)` does it and returns a
message for the journal plus, for steps with a `for`, the coroutine that puts things back.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from chaos import procs
from chaos.netproxy import FaultProxy, Toxic
from chaos.observer import Observer
from chaos.scenario import Scenario
from chaos.steps import (
    PROCESS_ACTIONS,
    ApiStep,
    EngineDeadStep,
    FaultStep,
    HangStep,
    KillStep,
    NetStep,
    OomStep,
    SignalStep,
    Step,
    SupervisorStep,
)
from chaos.target import SupervisorProcess

Revert = Callable[[], Awaitable[str]]


class ActionError(Exception):
    """A step that could not be carried out (the supervisor refused nothing: the harness could not act)."""


@dataclass
class Context:
    client: httpx.AsyncClient  # carries the API's auth header
    api_url: str
    observer: Observer
    local: bool  # the harness started the target itself
    allow_process_actions: bool  # local, or the scenario's remote.allow_process_actions
    supervisor: SupervisorProcess | None = None
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    server_urls: dict[str, str] = field(default_factory=dict)  # fake-vllm's own URL per model (local)


def remote_allows_process_actions(scenario: Scenario, url: str) -> bool:
    """Process actions against `--supervisor URL`: only when the scenario allows them and the supervisor is on
    this host, where the pids its API reports are processes the harness can signal."""
    return scenario.remote.allow_process_actions and urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def runnable(step: Step, ctx: Context) -> str | None:
    """None when the step can run here; otherwise the reason it cannot."""
    if isinstance(step, SupervisorStep) and ctx.supervisor is None:
        return "the supervisor step needs a local target (the harness must be able to start it again)"
    if step.action in PROCESS_ACTIONS and not ctx.allow_process_actions:
        return f"{step.action}: process actions against a remote target need remote.allow_process_actions"
    if isinstance(step, NetStep) and step.target.model not in ctx.proxies:
        return "net faults need the fault proxy between supervisor and server, which only a local target has"
    if isinstance(step, FaultStep | OomStep | EngineDeadStep) and step.target.model not in ctx.server_urls:
        return f"{step.action}: fake-vllm's /admin/faults is reachable only for a local target"
    return None


async def perform(step: Step, ctx: Context) -> tuple[str, Revert | None]:
    """Carry out one step; returns (what was done, how to undo it after `for` seconds, if it has one)."""
    if isinstance(step, SignalStep | KillStep | HangStep):
        return await _signal_step(step, ctx)
    if isinstance(step, FaultStep):
        return await _post_faults(ctx, step.target.model, dict(step.set)), None
    if isinstance(step, OomStep):
        return await _post_faults(ctx, step.target.model, {"oom": "after:0"}), None
    if isinstance(step, EngineDeadStep):
        body = {"engine_dead_after": 0, "engine_dead_exit_after": step.exit_after}
        return await _post_faults(ctx, step.target.model, body), None
    if isinstance(step, NetStep):
        return _net(step, ctx)
    if isinstance(step, ApiStep):
        return await _api(step, ctx), None
    if isinstance(step, SupervisorStep):
        return await _supervisor(step, ctx), None
    return "nothing (the server fails by itself)", None


async def current_pid(ctx: Context, model: str) -> int:
    response = await ctx.client.get(f"{ctx.api_url}/api/llm/models/{model}")
    response.raise_for_status()
    pid = response.json().get("pid")
    if not isinstance(pid, int):
        raise ActionError(f"{model} has no running process to signal (pid {pid!r})")
    if not procs.is_local_pid(pid):
        raise ActionError(f"{model}'s pid {pid} is not a process on this host")
    return pid


async def _signal_step(step: SignalStep | KillStep | HangStep, ctx: Context) -> tuple[str, Revert | None]:
    pid = await current_pid(ctx, step.target.model)
    if isinstance(step, SignalStep):
        sig = signal.Signals[step.signal]
    else:
        sig = signal.SIGKILL if isinstance(step, KillStep) else signal.SIGSTOP
    try:
        done = procs.signal_process(pid, sig, group=step.target.group)
    except (ProcessLookupError, PermissionError) as exc:
        raise ActionError(f"could not signal {step.target.model} (pid {pid}): {exc}") from exc
    if not isinstance(step, HangStep) or step.duration is None:
        return f"{step.target.model}: {done}", None
    group = step.target.group

    async def resume() -> str:
        try:
            return f"{step.target.model}: " + procs.signal_process(pid, signal.SIGCONT, group=group)
        except ProcessLookupError:
            return f"{step.target.model}: pid {pid} already gone, nothing to continue"

    return f"{step.target.model}: {done}", resume


async def _post_faults(ctx: Context, model: str, body: Mapping[str, object]) -> str:
    url = f"{ctx.server_urls[model]}/admin/faults"
    try:
        async with httpx.AsyncClient(timeout=5.0) as bare:  # the supervisor's token is not the fake's business
            response = await bare.post(url, json=dict(body))
    except httpx.HTTPError as exc:
        raise ActionError(f"POST {url} failed: {exc!r}") from exc
    if response.status_code >= 400:
        raise ActionError(f"POST {url} {body} answered {response.status_code}: {response.text[:200]}")
    return f"{model}: POST /admin/faults {body}"


def _net(step: NetStep, ctx: Context) -> tuple[str, Revert | None]:
    proxy = ctx.proxies[step.target.model]
    toxic = Toxic(step.toxic, dict(step.attributes), step.stream)
    proxy.set_toxic(toxic)
    done = f"{step.target.model}: toxic {toxic.describe()} on the proxy"
    if step.duration is None:
        return done, None

    async def clear() -> str:
        proxy.set_toxic(None)
        return f"{step.target.model}: toxic {step.toxic} removed"

    return done, clear


async def _api(step: ApiStep, ctx: Context) -> str:
    url = f"{ctx.api_url}/api/llm/models/{step.target.model}/{step.operation}"
    params = {"force": "true"} if step.force else {}

    async def call() -> str:
        try:
            return str((await ctx.client.post(url, params=params)).status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    answers = await asyncio.gather(*(call() for _ in range(step.concurrent)))
    times = f" x{step.concurrent}" if step.concurrent > 1 else ""
    return (
        f"POST .../{step.target.model}/{step.operation}{times}"
        + (" force" if step.force else "")
        + f": {', '.join(answers)}"
    )


async def _supervisor(step: SupervisorStep, ctx: Context) -> str:
    supervisor = ctx.supervisor
    assert supervisor is not None  # runnable() refused this step otherwise
    old = supervisor.process.pid if supervisor.process else None
    supervisor.send(signal.Signals[step.signal])
    if not await supervisor.wait(10.0):
        raise ActionError(f"the supervisor (pid {old}) did not exit after {step.signal}")
    if step.restart_after is None:
        return f"{step.signal} to the supervisor (pid {old}); not restarted"
    await asyncio.sleep(step.restart_after)  # the scenario's stated pause while no supervisor runs
    await supervisor.start()
    ctx.observer.resync()
    new = supervisor.process.pid if supervisor.process else None
    return f"{step.signal} to the supervisor (pid {old}); started again after {step.restart_after:g}s (pid {new})"
