"""Carrying out fault steps: signals, fake-vllm's /admin/faults, net toxics, API calls, supervisor kills.

`action(step)` is the one place that tells the step types apart: it binds a step to what it needs of the
target and to the code that carries it out. From that, `runnable(step, ctx)` says up front whether a step
can run against this target (and why not), so a scenario is refused before anything is touched rather than
half-run; `perform(step, ctx)` does it and returns a message for the journal plus, for steps with a `for`,
the coroutine that puts things back.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, assert_never
from urllib.parse import urlsplit

import httpx

from chaos import procs
from chaos.netproxy import FaultProxy, Toxic
from chaos.observer import Observer
from chaos.scenario import Scenario
from chaos.steps import (
    ApiStep,
    EngineDeadStep,
    ExecStep,
    FaultStep,
    HangStep,
    HttpStep,
    KillStep,
    ModelRef,
    NetStep,
    NoneStep,
    OomStep,
    ProcessRef,
    SignalStep,
    Step,
    SupervisorStep,
    step_model,
)
from chaos.target import SupervisorProcess, Unit

Revert = Callable[[], Awaitable[str]]


class ActionError(Exception):
    """A step that could not be carried out (the supervisor refused nothing: the harness could not act)."""


@dataclass(frozen=True, slots=True)
class Reach:
    """What of a target the harness can touch besides the management API, which every target has."""

    processes: bool = False  # the models' pids are processes on this host that the harness may signal
    own_supervisor: bool = False  # the harness started the supervisor, so it can start it again
    proxied: frozenset[str] = frozenset()  # models behind the harness's TCP fault proxy
    admin: frozenset[str] = frozenset()  # models whose fake-vllm /admin/faults the harness can reach
    local: bool = False  # the harness started the target on this host (commands may be run here)


@dataclass(frozen=True)
class Context:
    client: httpx.AsyncClient  # carries the API's auth header
    api_url: str
    observer: Observer
    local: bool  # the harness started the target itself
    allow_process_actions: bool  # local, or the scenario's remote.allow_process_actions
    supervisor: SupervisorProcess | None = None
    proxies: dict[Unit, FaultProxy] = field(default_factory=dict)  # per (model, replica)
    server_urls: dict[Unit, str] = field(default_factory=dict)  # fake-vllm's own URL per (model, replica), local
    gateway_url: str | None = None  # the OpenAI-compatible gateway the scenario's `load` goes through
    gateway_headers: dict[str, str] = field(default_factory=dict)  # its API key, when it wants one

    @property
    def reach(self) -> Reach:
        return Reach(
            processes=self.allow_process_actions,
            own_supervisor=self.supervisor is not None,
            proxied=frozenset(model for model, _ in self.proxies),
            admin=frozenset(model for model, _ in self.server_urls),
            local=self.local,
        )


def remote_allows_process_actions(scenario: Scenario, url: str) -> bool:
    """Process actions against `--supervisor URL`: only when the scenario allows them and the supervisor is on
    this host, where the pids its API reports are processes the harness can signal."""
    return scenario.remote.allow_process_actions and urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


# --- one dispatch over the step types -----------------------------------------------------------------

# What a step needs of the target beyond the management API ("anywhere": nothing more).
Need = Literal["anywhere", "processes", "own_supervisor", "fault_proxy", "admin_faults", "local"]
Performer = Callable[[Context], Awaitable[tuple[str, Revert | None]]]


@dataclass(frozen=True, slots=True)
class Action:
    """A step bound to what it needs of the target and to the code that carries it out."""

    needs: Need
    run: Performer


def action(step: Step) -> Action:
    """The one dispatch from a step to what it needs and how it is done: runnable() and perform() start here."""
    match step:
        case NoneStep():
            return Action("anywhere", _nothing)
        case SignalStep():
            return Action("processes", partial(_signal, step.target, signal.Signals[step.signal]))
        case KillStep():
            return Action("processes", partial(_signal, step.target, signal.SIGKILL))
        case HangStep():
            return Action("processes", partial(_hang, step))
        case OomStep():
            return Action("admin_faults", partial(_post_faults, step.target, {"oom": "after:0"}))
        case EngineDeadStep():
            body = {"engine_dead_after": 0, "engine_dead_exit_after": step.exit_after}
            return Action("admin_faults", partial(_post_faults, step.target, body))
        case FaultStep():
            return Action("admin_faults", partial(_post_faults, step.target, dict(step.set)))
        case NetStep():
            return Action("fault_proxy", partial(_net, step))
        case ApiStep():
            return Action("anywhere", partial(_api, step))
        case SupervisorStep():
            return Action("own_supervisor", partial(_supervisor, step))
        case HttpStep():
            return Action("anywhere", partial(_http, step))
        case ExecStep():
            return Action("local", partial(_exec, step))
        case _:
            assert_never(step)


def refusal(step: Step, reach: Reach) -> str | None:
    """None when the step can run with this reach; otherwise the reason it cannot."""
    needs = action(step).needs
    match needs:
        case "anywhere":
            return None
        case "processes":
            if reach.processes:
                return None
            return f"process actions need remote.allow_process_actions and a supervisor on this host ({step.action})"
        case "own_supervisor":
            if reach.own_supervisor:
                return None
            return "the supervisor step needs a local target (the harness must be able to start it again)"
        case "fault_proxy":
            if step_model(step) in reach.proxied:
                return None
            return "net faults need the fault proxy between supervisor and server, which only a local target has"
        case "admin_faults":
            if step_model(step) in reach.admin:
                return None
            return f"fake-vllm's /admin/faults is reachable only for a local target ({step.action})"
        case "local":
            if reach.local:
                return None
            return "exec runs a command on this host: local targets only"
        case _:
            assert_never(needs)


def runnable(step: Step, ctx: Context) -> str | None:
    """None when the step can run here; otherwise the reason it cannot."""
    return refusal(step, ctx.reach)


async def perform(step: Step, ctx: Context) -> tuple[str, Revert | None]:
    """Carry out one step; returns (what was done, how to undo it after `for` seconds, if it has one)."""
    return await action(step).run(ctx)


# --- the performers -----------------------------------------------------------------------------------


async def _nothing(ctx: Context) -> tuple[str, Revert | None]:
    return "nothing (the server fails by itself)", None


async def current_pid(ctx: Context, model: str, replica: int | None = None) -> int:
    """The model's `pid` (its lead replica's), or one replica's from the status's `replicas` list."""
    response = await ctx.client.get(f"{ctx.api_url}/api/llm/models/{model}")
    response.raise_for_status()
    status = response.json()
    who = model if replica is None else f"{model} replica {replica}"
    if replica is None:
        pid = status.get("pid")
    else:
        listed = status.get("replicas") or []
        if replica >= len(listed):
            raise ActionError(f"{model} lists {len(listed)} replicas in its status; there is no replica {replica}")
        pid = listed[replica].get("pid")
    if not isinstance(pid, int):
        raise ActionError(f"{who} has no running process to signal (pid {pid!r})")
    if not procs.is_local_pid(pid):
        raise ActionError(f"{who}'s pid {pid} is not a process on this host")
    return pid


async def _signal(target: ProcessRef, sig: signal.Signals, ctx: Context) -> tuple[str, Revert | None]:
    _, done = await _send(target, sig, ctx)
    return done, None


async def _hang(step: HangStep, ctx: Context) -> tuple[str, Revert | None]:
    """SIGSTOP now; SIGCONT to the same pid when the `for` is over."""
    pid, done = await _send(step.target, signal.SIGSTOP, ctx)
    if step.duration is None:
        return done, None
    who, group = _who(step.target.model, step.target.replica), step.target.whole_group

    async def resume() -> str:
        try:
            return f"{who}: " + procs.signal_process(pid, signal.SIGCONT, group=group)
        except ProcessLookupError:
            return f"{who}: pid {pid} already gone, nothing to continue"

    return done, resume


async def _send(target: ProcessRef, sig: signal.Signals, ctx: Context) -> tuple[int, str]:
    """Signal the model's current process, its group, or the process of its group named by `process`;
    returns the pid and what was done."""
    pid = await current_pid(ctx, target.model, target.replica)
    who = _who(target.model, target.replica)
    if target.process is not None:
        named = procs.find_in_group(pid, target.process)
        if named is None:
            members = ", ".join(procs.group_names(pid)) or "none"
            raise ActionError(f"{who} has no process named {target.process!r} in its group (found: {members})")
        who, pid = f"{who}'s {target.process}", named
    try:
        done = procs.signal_process(pid, sig, group=target.whole_group)
    except (ProcessLookupError, PermissionError) as exc:
        raise ActionError(f"could not signal {who} (pid {pid}): {exc}") from exc
    return pid, f"{who}: {done}"


def _who(model: str, replica: int | None) -> str:
    return model if replica is None else f"{model} replica {replica}"


def _unit(target: ModelRef) -> Unit:
    """The server a fault on the server itself goes to: the named replica, else replica 0."""
    return target.model, target.replica or 0


async def _post_faults(target: ModelRef, body: Mapping[str, object], ctx: Context) -> tuple[str, Revert | None]:
    unit = _unit(target)
    if unit not in ctx.server_urls:
        raise ActionError(f"{_who(*unit)} has no server of the harness's to send faults to")
    url = f"{ctx.server_urls[unit]}/admin/faults"
    try:
        async with httpx.AsyncClient(timeout=5.0) as bare:  # the supervisor's token is not the fake's business
            response = await bare.post(url, json=dict(body))
    except httpx.HTTPError as exc:
        raise ActionError(f"POST {url} failed: {exc!r}") from exc
    if response.status_code >= 400:
        raise ActionError(f"POST {url} {body} answered {response.status_code}: {response.text[:200]}")
    return f"{_who(target.model, target.replica)}: POST /admin/faults {body}", None


async def _net(step: NetStep, ctx: Context) -> tuple[str, Revert | None]:
    unit = _unit(step.target)
    if unit not in ctx.proxies:
        raise ActionError(f"{_who(*unit)} has no fault proxy in front of it")
    proxy = ctx.proxies[unit]
    who = _who(step.target.model, step.target.replica)
    toxic = Toxic(step.toxic, dict(step.attributes), step.stream)
    proxy.set_toxic(toxic)
    done = f"{who}: toxic {toxic.describe()} on the proxy"
    if step.duration is None:
        return done, None

    async def clear() -> str:
        proxy.set_toxic(None)
        return f"{who}: toxic {step.toxic} removed"

    return done, clear


async def _api(step: ApiStep, ctx: Context) -> tuple[str, Revert | None]:
    url = f"{ctx.api_url}/api/llm/models/{step.target.model}/{step.operation}"
    params = {"force": "true"} if step.force else {}
    if step.rolling:
        params["rolling"] = "true"
    if step.target.replica is not None:
        params["replica"] = str(step.target.replica)

    async def call() -> str:
        try:
            return str((await ctx.client.post(url, params=params)).status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    answers = await asyncio.gather(*(call() for _ in range(step.concurrent)))
    times = f" x{step.concurrent}" if step.concurrent > 1 else ""
    query = "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
    return f"POST .../{step.target.model}/{step.operation}{query}{times}: {', '.join(answers)}", None


async def _supervisor(step: SupervisorStep, ctx: Context) -> tuple[str, Revert | None]:
    supervisor = ctx.supervisor
    assert supervisor is not None  # refusal() refused this step otherwise
    old = supervisor.process.pid if supervisor.process else None
    supervisor.send(signal.Signals[step.signal])
    if not await supervisor.wait(10.0):
        raise ActionError(f"the supervisor (pid {old}) did not exit after {step.signal}")
    if step.restart_after is None:
        return f"{step.signal} to the supervisor (pid {old}); not restarted", None
    await asyncio.sleep(step.restart_after)  # the scenario's stated pause while no supervisor runs
    await supervisor.start()
    ctx.observer.resync()
    new = supervisor.process.pid if supervisor.process else None
    again = f"started again after {step.restart_after:g}s (pid {new})"
    return f"{step.signal} to the supervisor (pid {old}); {again}", None


async def _http(step: HttpStep, ctx: Context) -> tuple[str, Revert | None]:
    url = step.url.replace("{api}", ctx.api_url)
    try:
        if step.url.startswith("{api}"):
            response = await ctx.client.request(  # the API's client: it carries the API's token
                step.method, url, headers=step.headers, json=step.json_body, timeout=step.timeout
            )
        else:
            async with httpx.AsyncClient() as client:  # anywhere else: never send the API's token along
                response = await client.request(
                    step.method, url, headers=step.headers, json=step.json_body, timeout=step.timeout
                )
    except httpx.HTTPError as exc:
        raise ActionError(f"{step.method} {url}: {type(exc).__name__}: {exc}") from exc
    done = f"{step.method} {url}: {response.status_code}"
    if step.expect_status is not None and response.status_code != step.expect_status:
        raise ActionError(f"{done}, expected {step.expect_status}: {response.text[:200]}")
    return done, None


async def _exec(step: ExecStep, ctx: Context) -> tuple[str, Revert | None]:
    argv = [arg.replace("{api}", ctx.api_url) for arg in step.command]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        raise ActionError(f"cannot run {argv[0]!r}: {exc}") from exc
    try:
        output, _ = await asyncio.wait_for(process.communicate(), step.timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ActionError(f"{' '.join(argv)}: still running after {step.timeout:g} s; killed") from None
    tail = output.decode(errors="replace").strip()[-300:]
    done = f"{' '.join(argv)}: exit {process.returncode}" + (f": {tail}" if tail else "")
    if step.expect_exit is not None and process.returncode != step.expect_exit:
        raise ActionError(f"{done} (expected exit {step.expect_exit})")
    return done, None
