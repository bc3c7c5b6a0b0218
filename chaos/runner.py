"""Runs one scenario: start (or attach to) the target, hold the steady state, inject the timed faults,
observe, judge, and always clean up.

Local target: proxies, config, supervisor (see `target`), and at the end SIGTERM to the supervisor, then
SIGKILL to whatever of it and of every model process seen is still alive, checked with psutil; container
models' containers are listed and force-removed through the Docker SDK (see `containers`). Remote target
(`--supervisor URL`): nothing is started or stopped; a scenario with a step this target cannot take (process
actions not allowed, no fault proxy, no fake admin URL) is *skipped* with the reasons before anything is
touched, because expectations judged after a fault that never happened would prove nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from random import Random
from urllib.parse import urlsplit

import httpx

from chaos import checks, docker_image, procs
from chaos.actions import ActionError, Context, Revert, perform, runnable
from chaos.checks import Verdict
from chaos.containers import ContainerError, ScenarioContainers
from chaos.netproxy import FaultProxy
from chaos.observer import Observer
from chaos.scenario import Scenario
from chaos.steps import step_model
from chaos.target import SupervisorProcess, build_config, default_supervisor_cmd, plan_local, write_config
from chaos.timeline import Container, FaultRecord, Observation, Sighting

Progress = Callable[[str], None]


def _quiet(_line: str) -> None:
    return None


@dataclass(frozen=True)
class RunOptions:
    supervisor_url: str | None = None  # attach to this deployment instead of starting a local target
    token: str | None = None
    supervisor_cmd: tuple[str, ...] = field(default_factory=lambda: tuple(default_supervisor_cmd()))
    seed: int = 0
    poll_interval: float = 0.1
    workdir: Path | None = None  # where each local target's config, state and logs go (default: a temp dir)
    # The image for container models that name none; None: build (or find) the fake-vLLM image on first use.
    docker_image: str | None = None


@dataclass
class ScenarioResult:
    name: str
    story: str
    source: str
    seed: int
    outcome: str  # passed | failed | skipped | error
    verdicts: list[Verdict]
    started: float
    duration: float
    message: str = ""
    observation: Observation | None = None
    workdir: str | None = None


def scenario_seed(run_seed: int, name: str) -> int:
    """Each scenario's own seed, derived from the run's, so one scenario replays alone with the run's seed."""
    return zlib.crc32(f"{run_seed}:{name}".encode())


async def run_scenario(scenario: Scenario, options: RunOptions, *, source: str = "",
                       progress: Progress = _quiet) -> ScenarioResult:
    seed = scenario_seed(options.seed, scenario.name)
    started = time.time()
    result = ScenarioResult(scenario.name, scenario.story, source, seed, "error", [], started, 0.0)
    try:
        if options.supervisor_url:
            await _run_remote(scenario, options, result, progress)
        else:
            await _run_local(scenario, options, result, progress)
    except (RuntimeError, OSError, httpx.HTTPError, ActionError) as exc:
        result.outcome, result.message = "error", f"{type(exc).__name__}: {exc}"
    result.duration = time.time() - started
    if result.outcome not in {"error", "skipped"}:
        result.outcome = "failed" if any(v.passed is False for v in result.verdicts) else "passed"
    return result


async def _run_local(scenario: Scenario, options: RunOptions, result: ScenarioResult,
                     progress: Progress) -> None:
    image = await _docker_ready(scenario, options, result, progress)
    if image is None:
        return
    base = options.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-", dir=base))
    result.workdir = str(workdir)
    plan = plan_local(scenario, workdir, docker_image=image)
    containers = ScenarioContainers(plan.run_id, plan.containers) if plan.containers else None
    proxies: dict[str, FaultProxy] = {}
    supervisor = SupervisorProcess(list(options.supervisor_cmd), plan.config_path, plan.api_url,
                                   workdir / "supervisor.log")
    observer: Observer | None = None
    try:
        for model in sorted(plan.proxied):
            proxies[model] = FaultProxy("127.0.0.1", plan.server_ports[model], rng=Random(result.seed))
            await proxies[model].start()
            plan.proxy_ports[model] = proxies[model].port
        write_config(plan, build_config(scenario, plan, result.seed))
        launched_at = time.time()
        progress(f"starting {' '.join(supervisor.cmd)} (API {plan.api_url})")
        await supervisor.start()
        async with httpx.AsyncClient(headers=supervisor.headers, timeout=5.0) as client:
            observer = Observer(client, plan.api_url, processes_visible=True)
            ctx = Context(client, plan.api_url, observer, local=True, allow_process_actions=True,
                          supervisor=supervisor, proxies=proxies,
                          server_urls={m: plan.server_url(m) for m in plan.server_ports})
            obs, verdicts = await _drive(scenario, ctx, launched_at, options, progress)
            obs = replace(obs, containers_at_end=await _list_containers(containers) or ())
            await _cleanup_steps(scenario, ctx, progress)
        grace = _stop_grace(scenario)
        progress("stopping the supervisor (SIGTERM)")
        await supervisor.stop(grace)
        if supervisor.returncode not in (0, None):
            verdicts.append(Verdict("supervisor shutdown", False, f"the supervisor exited with "
                                    f"{supervisor.returncode} on SIGTERM: {supervisor.log_tail(5)}"))
        _sight_unseen_servers(observer, plan.process_ports)
        obs = replace(obs, sightings=tuple(observer.sightings.values()),
                      alive_after_shutdown=procs.alive(set(observer.sightings)),
                      containers_after_shutdown=await _list_containers(containers))
        result.observation = obs
        result.verdicts = verdicts + checks.judge(scenario, obs)
        result.outcome = "judged"
    finally:
        with contextlib.suppress(Exception):
            await supervisor.stop(1.0)
        for proxy in proxies.values():
            await proxy.close()
        await _remove_containers(containers, result, progress)
        leftovers = {(pid, created) for _, pid, created, _ in procs.find_servers(
            {port: model for model, port in plan.process_ports.items()})}
        if observer is not None:
            await observer.stop()
            leftovers |= set(observer.sightings)
        if leftovers:
            stuck = await asyncio.to_thread(procs.kill_leftovers, leftovers)
            if stuck:
                result.message += f" processes that would not die: {stuck}"


async def _docker_ready(scenario: Scenario, options: RunOptions, result: ScenarioResult,
                        progress: Progress) -> str | None:
    """The default image for the scenario's container models; None when it cannot run (result says why).

    Checked before anything starts, so a container scenario on a host without Docker touches nothing.
    """
    if not scenario.container_models():
        return options.docker_image or docker_image.FAKE_VLLM_IMAGE  # unused: no container model
    ready = await asyncio.to_thread(docker_image.prepare, scenario.container_images(),
                                    default_image=options.docker_image)
    if ready.problem is None and ready.image is not None:
        return ready.image
    result.outcome = "skipped" if ready.skip else "error"
    result.message = ready.problem or "no image for the container models"
    progress(result.message)
    return None


async def _list_containers(containers: ScenarioContainers | None) -> tuple[Container, ...] | None:
    """The run's containers now; None for a scenario without container models."""
    return None if containers is None else await asyncio.to_thread(containers.find)


async def _remove_containers(containers: ScenarioContainers | None, result: ScenarioResult,
                             progress: Progress) -> None:
    """Always the last word on a container scenario: whatever container of the run is left goes."""
    if containers is None:
        return
    try:
        removed = await asyncio.to_thread(containers.remove_all)
    except ContainerError as exc:
        result.message += f" {exc}"
        return
    if removed:
        progress(f"removed containers left behind: {', '.join(removed)}")


async def _run_remote(scenario: Scenario, options: RunOptions, result: ScenarioResult,
                      progress: Progress) -> None:
    url = (options.supervisor_url or "").rstrip("/")
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
    local_host = urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
    allow = scenario.remote.allow_process_actions and local_host
    async with httpx.AsyncClient(headers=headers, timeout=5.0) as client:
        observer = Observer(client, url, processes_visible=allow)
        ctx = Context(client, url, observer, local=False, allow_process_actions=allow)
        reasons = [f"faults.{i}: {why}" for i, s in enumerate(scenario.faults) if (why := runnable(s, ctx))]
        for model in [] if reasons else _models(scenario):  # a refused scenario touches nothing, not even GETs
            if (await client.get(f"{url}/api/llm/models/{model}")).status_code == 404:
                reasons.append(f"model {model!r} is not served by {url}")
        if reasons:
            result.outcome, result.message = "skipped", "not runnable here: " + "; ".join(reasons)
            progress(result.message)
            return
        try:
            obs, verdicts = await _drive(scenario, ctx, time.time(), options, progress)
            await _cleanup_steps(scenario, ctx, progress)
        finally:
            await observer.stop()
    result.observation = obs
    result.verdicts = verdicts + checks.judge(scenario, obs)
    result.outcome = "judged"


async def _drive(scenario: Scenario, ctx: Context, launched_at: float, options: RunOptions,
                 progress: Progress) -> tuple[Observation, list[Verdict]]:
    """Steady state, then the faults on schedule, then the observation window."""
    observer = ctx.observer
    observer.start(options.poll_interval)
    steady_at = await _await_steady(scenario, observer, launched_at, options.poll_interval)
    records: list[FaultRecord] = []
    verdicts: list[Verdict] = []
    faults_end = None
    if steady_at is None:
        progress("steady state did not hold; no fault injected")
    else:
        progress(f"steady state held at +{steady_at - launched_at:.2f}s")
        records, verdicts = await _inject(scenario, ctx, steady_at, progress)
        faults_end = max([steady_at] + [r.ended or r.started for r in records])
        await _watch(scenario, observer, launched_at=launched_at, steady_at=steady_at, faults_end=faults_end,
                     interval=options.poll_interval, progress=progress)
    ended_at = time.time()
    await observer.stop()
    await observer.poll()  # one last look at the end state
    alive = procs.alive(set(observer.sightings)) if observer.processes_visible else frozenset()
    obs = observer.observation(launched_at, steady_at=steady_at, faults_end=faults_end, ended_at=ended_at,
                               faults=tuple(records), alive_at_end=alive)
    return obs, verdicts


async def _watch(scenario: Scenario, observer: Observer, *, launched_at: float, steady_at: float,
                 faults_end: float, interval: float, progress: Progress) -> None:
    """Observe until every expectation holds (then `duration` more), or until the last `within` runs out.

    Without timed expectations the watch is `duration` after the faults. Stopping early keeps the
    catalogue quick; the `duration` that follows is what catches a restart that comes too late.
    """
    settle = scenario.settle_for()
    obs = observer.observation(launched_at, steady_at=steady_at, faults_end=faults_end)
    hard = max([faults_end + settle] + [checks.deadline(item, obs) for item in scenario.timed()])
    if scenario.observe_at_most is not None:
        hard = faults_end + scenario.observe_at_most
    progress(f"observing until the expectations hold (at most {hard - time.time():.1f}s), then {settle:g}s")
    while time.time() < hard:
        obs = observer.observation(launched_at, steady_at=steady_at, faults_end=faults_end)
        if all(checks.judge_expectation(item, obs).passed for item in scenario.expect):
            await _sleep_until(min(hard, time.time() + settle))
            return
        await asyncio.sleep(interval)


async def _await_steady(scenario: Scenario, observer: Observer, launched_at: float,
                        interval: float) -> float | None:
    deadline = launched_at + max((s.healthy.within for s in scenario.steady_state), default=0.0)
    while True:
        obs = observer.observation(launched_at)
        if all(checks.judge_steady(item, obs).passed for item in scenario.steady_state):
            return time.time()
        if time.time() > deadline:
            return None
        await asyncio.sleep(interval)


async def _inject(scenario: Scenario, ctx: Context, steady_at: float,
                  progress: Progress) -> tuple[list[FaultRecord], list[Verdict]]:
    records: list[FaultRecord] = []
    verdicts: list[Verdict] = []
    reverts: list[asyncio.Task[None]] = []
    order = sorted(range(len(scenario.faults)), key=lambda i: scenario.faults[i].at)
    for index in order:
        step = scenario.faults[index]
        await _sleep_until(steady_at + step.at)
        began = time.time()
        try:
            message, revert = await perform(step, ctx)
        except (ActionError, httpx.HTTPError, OSError) as exc:
            progress(f"fault {index} ({step.action}) could not be carried out: {exc}")
            records.append(FaultRecord(index, step.action, step_model(step), step.note or step.action, began,
                                       None, "error", str(exc)))
            verdicts.append(Verdict(f"fault {index} ({step.action})", False, f"not carried out: {exc}"))
            continue
        progress(f"+{began - steady_at:.2f}s fault {index}: {message}")
        records.append(FaultRecord(index, step.action, step_model(step), step.note or step.action, began,
                                   None, "done", message))
        if revert is not None:
            until = steady_at + step.at + (getattr(step, "duration", None) or 0.0)
            reverts.append(asyncio.create_task(_revert_at(until, revert, records, len(records) - 1, progress)))
    await asyncio.gather(*reverts)
    return records, verdicts


async def _revert_at(when: float, revert: Revert, records: list[FaultRecord], position: int,
                     progress: Progress) -> None:
    await _sleep_until(when)
    try:
        message = await revert()
    except (OSError, httpx.HTTPError) as exc:
        message = f"revert failed: {exc}"
    progress(f"reverted: {message}")
    record = records[position]
    records[position] = replace(record, ended=time.time(), message=f"{record.message}; {message}")


async def _cleanup_steps(scenario: Scenario, ctx: Context, progress: Progress) -> None:
    for step in scenario.cleanup:
        try:
            message, revert = await perform(step, ctx)
            if revert is not None:
                message += "; " + await revert()
            progress(f"cleanup: {message}")
        except (ActionError, httpx.HTTPError, OSError) as exc:
            progress(f"cleanup step {step.action} failed: {exc}")


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _stop_grace(scenario: Scenario) -> float:
    """How long the supervisor may take to stop every model: the longest stop_timeout plus slack."""
    timeouts = [m.stop_timeout for m in scenario.target.models.values()] if scenario.target else []
    return max([t for t in timeouts if t is not None] + [30.0 if None in timeouts or not timeouts else 0.0]) + 10


def _sight_unseen_servers(observer: Observer, server_ports: dict[str, int]) -> None:
    """Add servers still running on our ports that the polls never caught (so orphans cannot hide)."""
    ports = {port: model for model, port in server_ports.items()}
    for model, pid, created, name in procs.find_servers(ports):
        if (pid, created) not in observer.sightings:
            observer.sightings[(pid, created)] = Sighting(model, pid, created, pid, name, time.time())


def _models(scenario: Scenario) -> list[str]:
    if scenario.target is not None:
        return sorted(scenario.target.models)
    names = {s.healthy.model for s in scenario.steady_state}
    names |= {m for e in scenario.expect for m in e.models()}
    names |= {m for s in scenario.faults if (m := step_model(s))}
    return sorted(names)
