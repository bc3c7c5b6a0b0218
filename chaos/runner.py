"""Runs one scenario: start (or attach to) the target, let `drive` hold the steady state, inject the timed
faults and observe, then judge, and always clean up.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from random import Random

import httpx

from chaos import checks, docker_image, procs
from chaos.actions import ActionError, Context, remote_allows_process_actions, runnable
from chaos.checks import Verdict
from chaos.containers import ContainerError, ScenarioContainers
from chaos.drive import Progress, cleanup_steps, drive
from chaos.netproxy import FaultProxy
from chaos.observer import Observer
from chaos.real_vllm import VllmServer, for_real_vllm, not_on_real_vllm
from chaos.scenario import Scenario
from chaos.steps import step_model
from chaos.target import SupervisorProcess, Unit, build_config, default_supervisor_cmd, plan_local, write_config
from chaos.timeline import Container, Observation, Sighting


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
    gateway_url: str | None = None  # the remote deployment's gateway, for scenarios with `load`
    gateway_key: str | None = None  # the key that gateway wants, if any
    vllm: VllmServer | None = None  # run the local target's models on real vLLM (scenarios with real_vllm)


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


async def run_scenario(
    scenario: Scenario, options: RunOptions, *, source: str = "", progress: Progress = _quiet
) -> ScenarioResult:
    seed = scenario_seed(options.seed, scenario.name)
    started = time.time()
    result = ScenarioResult(scenario.name, scenario.story, source, seed, "error", [], started, 0.0)
    try:
        if options.supervisor_url:
            await _run_remote(scenario, options, result, progress)
        elif options.vllm is not None and (why := not_on_real_vllm(scenario)) is not None:
            result.outcome, result.message = "skipped", f"not run on real vLLM: {why}"
            progress(result.message)
        else:
            await _run_local(for_real_vllm(scenario) if options.vllm else scenario, options, result, progress)
    except (RuntimeError, OSError, httpx.HTTPError, ActionError) as exc:
        result.outcome, result.message = "error", f"{type(exc).__name__}: {exc}"
    result.duration = time.time() - started
    return result


def _record_judgement(result: ScenarioResult, scenario: Scenario, obs: Observation, verdicts: list[Verdict]) -> None:
    """The run's own verdicts (faults not carried out, a bad shutdown) and the scenario's; they decide the
    outcome. Until this is called the outcome stays "error": the run ended without being judged."""
    result.observation = obs
    result.verdicts = verdicts + checks.judge(scenario, obs)
    result.outcome = "failed" if any(v.passed is False for v in result.verdicts) else "passed"


async def _run_local(scenario: Scenario, options: RunOptions, result: ScenarioResult, progress: Progress) -> None:
    image = await _docker_ready(scenario, options, result, progress)
    if image is None:
        return
    base = options.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-", dir=base))
    result.workdir = str(workdir)
    plan = plan_local(scenario, workdir, docker_image=image)
    containers = ScenarioContainers(plan.run_id, plan.containers) if plan.containers else None
    proxies: dict[Unit, FaultProxy] = {}
    supervisor = SupervisorProcess(
        list(options.supervisor_cmd), plan.config_path, plan.api_url, workdir / "supervisor.log"
    )
    observer: Observer | None = None
    try:
        for unit in [u for u in plan.units() if u[0] in plan.proxied]:
            host, port = plan.proxy_listen(unit)
            upstream = plan.server_ports[unit[0]][unit[1]]
            proxies[unit] = FaultProxy(
                "127.0.0.1", upstream, listen_host=host, listen_port=port, rng=Random(result.seed)
            )
            await proxies[unit].start()
            plan.proxy_ports[unit] = proxies[unit].port
        write_config(plan, build_config(scenario, plan, result.seed, options.vllm))
        launched_at = time.time()
        progress(f"starting {' '.join(supervisor.cmd)} (API {plan.api_url})")
        await supervisor.start()
        async with httpx.AsyncClient(headers=supervisor.headers, timeout=5.0) as client:
            observer = Observer(client, plan.api_url, processes_visible=True)
            ctx = Context(
                client,
                plan.api_url,
                observer,
                local=True,
                allow_process_actions=True,
                supervisor=supervisor,
                proxies=proxies,
                server_urls={unit: plan.server_url(*unit) for unit in plan.units()},
                gateway_url=plan.gateway_url,
            )
            obs, verdicts = await drive(scenario, ctx, launched_at, options.poll_interval, progress)
            obs = replace(obs, containers_at_end=await _list_containers(containers) or ())
            await cleanup_steps(scenario, ctx, progress)
        grace = _stop_grace(scenario)
        progress("stopping the supervisor (SIGTERM)")
        await supervisor.stop(grace)
        if supervisor.returncode not in (0, None):
            verdicts.append(
                Verdict(
                    "supervisor shutdown",
                    False,
                    f"the supervisor exited with {supervisor.returncode} on SIGTERM: {supervisor.log_tail(5)}",
                )
            )
        _sight_unseen_servers(observer, plan.process_ports)
        obs = replace(
            obs,
            sightings=tuple(observer.sightings.values()),
            alive_after_shutdown=procs.alive(set(observer.sightings)),
            containers_after_shutdown=await _list_containers(containers),
        )
        _record_judgement(result, scenario, obs, verdicts)
    finally:
        with contextlib.suppress(Exception):
            await supervisor.stop(1.0)
        for proxy in proxies.values():
            await proxy.close()
        await _remove_containers(containers, result, progress)
        leftovers = {(pid, created) for _, pid, created, _ in procs.find_servers(plan.process_ports)}
        if observer is not None:
            await observer.stop()
            leftovers |= set(observer.sightings)
        if leftovers:
            stuck = await asyncio.to_thread(procs.kill_leftovers, leftovers)
            if stuck:
                result.message += f" processes that would not die: {stuck}"


async def _docker_ready(
    scenario: Scenario, options: RunOptions, result: ScenarioResult, progress: Progress
) -> str | None:
    """The default image for the scenario's container models; None when it cannot run (result says why).

    Checked before anything starts, so a container scenario on a host without Docker touches nothing.
    """
    if not scenario.container_models():
        return options.docker_image or docker_image.FAKE_VLLM_IMAGE  # unused: no container model
    ready = await asyncio.to_thread(
        docker_image.prepare, scenario.container_images(), default_image=options.docker_image
    )
    if ready.problem is None and ready.image is not None:
        return ready.image
    result.outcome = "skipped" if ready.skip else "error"
    result.message = ready.problem or "no image for the container models"
    progress(result.message)
    return None


async def _list_containers(containers: ScenarioContainers | None) -> tuple[Container, ...] | None:
    """The run's containers now; None for a scenario without container models."""
    return None if containers is None else await asyncio.to_thread(containers.find)


async def _remove_containers(containers: ScenarioContainers | None, result: ScenarioResult, progress: Progress) -> None:
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


async def _run_remote(scenario: Scenario, options: RunOptions, result: ScenarioResult, progress: Progress) -> None:
    url = (options.supervisor_url or "").rstrip("/")
    headers = _bearer(options.token)
    allow = remote_allows_process_actions(scenario, url)
    async with httpx.AsyncClient(headers=headers, timeout=5.0) as client:
        observer = Observer(client, url, processes_visible=allow)
        ctx = Context(
            client,
            url,
            observer,
            local=False,
            allow_process_actions=allow,
            gateway_url=options.gateway_url,
            gateway_headers=_bearer(options.gateway_key),
        )
        reasons = [f"faults.{i}: {why}" for i, s in enumerate(scenario.faults) if (why := runnable(s, ctx))]
        if scenario.load is not None and not options.gateway_url:
            reasons.append("load: the scenario sends requests through the gateway; give its URL with --gateway URL")
        for model in [] if reasons else _models(scenario):  # a refused scenario touches nothing, not even GETs
            if (await client.get(f"{url}/api/llm/models/{model}")).status_code == 404:
                reasons.append(f"model {model!r} is not served by {url}")
        if reasons:
            result.outcome, result.message = "skipped", "not runnable here: " + "; ".join(reasons)
            progress(result.message)
            return
        try:
            obs, verdicts = await drive(scenario, ctx, time.time(), options.poll_interval, progress)
        finally:
            # A deployment is not ours to throw away: what the scenario stopped is started again, even when
            # the run broke off.
            await cleanup_steps(scenario, ctx, progress)
            await observer.stop()
    _record_judgement(result, scenario, obs, verdicts)


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _stop_grace(scenario: Scenario) -> float:
    """How long the supervisor may take to stop every model: the longest stop_timeout plus slack."""
    timeouts = [m.stop_timeout for m in scenario.target.models.values()] if scenario.target else []
    # A model that sets none gets the supervisor's default stop_timeout, 30 s (docs/design/contract.md section 2).
    return max((30.0 if t is None else t for t in timeouts), default=30.0) + 10


def _sight_unseen_servers(observer: Observer, server_ports: dict[str, tuple[int, ...]]) -> None:
    """Add servers still running on our ports that the polls never caught (so orphans cannot hide)."""
    for model, pid, created, name in procs.find_servers(server_ports):
        if (pid, created) not in observer.sightings:
            observer.sightings[(pid, created)] = Sighting(model, pid, created, pid, name, time.time())


def _models(scenario: Scenario) -> list[str]:
    if scenario.target is not None:
        return sorted(scenario.target.models)
    names = {s.healthy.model for s in scenario.steady_state}
    names |= {m for e in scenario.expect if (m := e.model)}
    names |= {m for s in scenario.faults if (m := step_model(s))}
    names |= {scenario.load.model} if scenario.load else set()
    return sorted(names)
