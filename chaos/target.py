"""The local target: a supervisor config written from a scenario, and the supervisor process that runs it.

The harness picks a free port for each fake server (each replica), puts a fault proxy in front of the servers
that a `net` fault targets (their `base_url` names the proxy, so the supervisor's probes and its gateway's
requests both cross it), enables the gateway on a free port for a scenario that sends requests, gives the
supervisor its own state dir and API port, and
starts `<supervisor-cmd> run -c CONFIG` in a session of its own so it, and only it, can be signalled and
killed. A random bearer token in a harness-owned env var keeps other local users off the API.
A model with `runtime: docker` becomes a container of the fake-vLLM image, published on its free host port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaos.containers import RUN_ENV
from chaos.docker_image import FAKE_VLLM_IMAGE
from chaos.real_vllm import VllmServer
from chaos.scenario import ContainerSettings, ModelSpec, Scenario
from chaos.steps import NetStep

TOKEN_ENV = "LLM_CHAOS_LOCAL_TOKEN"  # noqa: S105 (the variable's name, not a secret)
CONTAINER_PORT = 8000  # where a container model's server listens inside its container, as vLLM's image does


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a race with another binder is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def default_supervisor_cmd() -> list[str]:
    """This project's `llm-supervisor`, next to the running Python (the venv) when it is there."""
    local = Path(sys.executable).parent / "llm-supervisor"
    return [str(local)] if local.exists() else ["llm-supervisor"]


def fake_vllm_command() -> str:
    local = Path(sys.executable).parent / "fake-vllm"
    return str(local) if local.exists() else (shutil.which("fake-vllm") or "fake-vllm")


Unit = tuple[str, int]  # (model, replica): one server of the target
# Where the fault proxy of a replica listens: a second loopback address (Linux routes all of 127/8 to
# loopback), on the replica's own port number. "{port}" stands for one port in both the args and the base_url
# the supervisor derives for each replica, so the proxy cannot have a port of its own: the server listens on
# 127.0.0.1:P and the supervisor, its probes and its gateway reach it through 127.0.0.2:P.
PROXY_ALIAS = "127.0.0.2"


@dataclass
class LocalPlan:
    """Everything decided before anything starts: ports, the config, where files go.

    `server_ports` are host ports, one per replica (one for a model without `replicas`); a container
    model's server listens on CONTAINER_PORT inside its container, published on that host port.
    """

    workdir: Path
    api_port: int
    server_ports: dict[str, tuple[int, ...]]
    proxied: set[str]
    gpu_dir: Path
    proxy_ports: dict[Unit, int] = field(default_factory=dict)
    containers: set[str] = field(default_factory=set)  # models that run as containers
    docker_image: str = FAKE_VLLM_IMAGE  # for container models whose scenario names no image
    replicated: set[str] = field(default_factory=set)  # models written with replicas, ports and "{port}"
    gateway_port: int | None = None  # the supervisor serves its gateway here (scenarios with `load`)

    @property
    def run_id(self) -> str:
        """Marks this run's containers (see chaos.containers): the work directory's name is unique."""
        return self.workdir.name

    @property
    def process_ports(self) -> dict[str, tuple[int, ...]]:
        """Host ports of the models that run as processes here (a container's server has its own netns)."""
        return {m: p for m, p in self.server_ports.items() if m not in self.containers}

    @property
    def config_path(self) -> Path:
        return self.workdir / "supervisor.json"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gateway_url(self) -> str | None:
        return None if self.gateway_port is None else f"http://127.0.0.1:{self.gateway_port}"

    def units(self) -> list[Unit]:
        return [(m, i) for m, ports in self.server_ports.items() for i in range(len(ports))]

    def server_url(self, model: str, replica: int = 0) -> str:
        return f"http://127.0.0.1:{self.server_ports[model][replica]}"

    def proxy_listen(self, unit: Unit) -> tuple[str, int]:
        """Where the fault proxy of a server listens: any free port, or the alias address for a replica."""
        model, replica = unit
        return (PROXY_ALIAS, self.server_ports[model][replica]) if model in self.replicated else ("127.0.0.1", 0)


def proxied_models(scenario: Scenario) -> set[str]:
    """The models a `net` fault targets: the supervisor reaches them (every replica) through fault proxies."""
    return {s.target.model for s in scenario.faults if isinstance(s, NetStep)}


def plan_local(scenario: Scenario, workdir: Path, *, docker_image: str = FAKE_VLLM_IMAGE) -> LocalPlan:
    if scenario.target is None:
        raise ValueError(f"{scenario.name}: no target to start; run it with --supervisor URL")
    models = scenario.target.models
    return LocalPlan(
        workdir=workdir,
        api_port=free_port(),
        server_ports={m: tuple(free_port() for _ in range(spec.replica_count)) for m, spec in models.items()},
        proxied=proxied_models(scenario),
        gpu_dir=workdir / "fake-gpu",
        containers=set(scenario.container_models()),
        docker_image=docker_image,
        replicated={m for m, spec in models.items() if spec.replicas is not None},
        gateway_port=free_port() if scenario.needs_gateway else None,
    )


def build_config(scenario: Scenario, plan: LocalPlan, seed: int, vllm: VllmServer | None = None) -> dict[str, Any]:
    """The supervisor's config (JSON, docs/design/contract.md section 2) for the scenario's target: fake-vllm
    servers, or real `vllm serve` ones with `vllm` (the scenario as chaos.real_vllm.for_real_vllm made it)."""
    assert scenario.target is not None
    models: dict[str, Any] = {}
    for index, (model, spec) in enumerate(scenario.target.models.items()):
        flags = [f.replace("{gpu_dir}", str(plan.gpu_dir)) for f in spec.fake_vllm]
        if "--seed" not in flags:
            flags += ["--seed", str((seed + index) % 2**31)]

        def serve(port: str, model: str = model, flags: list[str] = flags) -> list[str]:
            if vllm is None:
                return ["serve", model, "--port", port, *flags]
            return vllm.args(port, scenario.real_vllm.args if scenario.real_vllm else [])

        entry: dict[str, Any] = {"command": fake_vllm_command() if vllm is None else vllm.command}
        if model in plan.replicated:
            # The supervisor puts each replica's port where "{port}" stands, in the args and the base_url.
            host = PROXY_ALIAS if model in plan.proxied else "127.0.0.1"
            entry["args"] = serve("{port}")
            entry["endpoints"] = {"base_url": f"http://{host}:{{port}}/v1"}
            entry["replicas"] = spec.replica_count
            entry["ports"] = list(plan.server_ports[model])
        else:
            port = plan.proxy_ports.get((model, 0), plan.server_ports[model][0])
            entry["args"] = serve(str(plan.server_ports[model][0]))
            entry["endpoints"] = {"base_url": f"http://127.0.0.1:{port}/v1"}
        if spec.in_container:
            entry.update(_container_entry(model, spec, plan, flags))
        if spec.env:
            entry["env"] = dict(spec.env)
        entry.update(spec.supervisor_keys())
        models[model] = entry
    supervisor: dict[str, Any] = {
        "api": {"host": "127.0.0.1", "port": plan.api_port},
        "state_dir": str(plan.workdir / "state"),
        "token_env": TOKEN_ENV,
    }
    if plan.gateway_port is not None:
        settings = scenario.target.gateway.model_dump(exclude_none=True) if scenario.target.gateway else {}
        supervisor["gateway"] = {"host": "127.0.0.1", "port": plan.gateway_port, **settings}
    return {"supervisor": supervisor, "llmModels": models}


def _container_entry(model: str, spec: ModelSpec, plan: LocalPlan, flags: list[str]) -> dict[str, Any]:
    """The keys that make a model a container of the fake-vLLM image (docs/design/contract.md section 7).

    The image's launcher is `fake-vllm`; it listens on all of the container's interfaces (its own network
    namespace) and the engine publishes that port on 127.0.0.1 only. The run marker in the container's
    environment is how the harness tells its containers from anybody else's with the same model id.
    """
    settings = spec.docker or ContainerSettings()
    docker: dict[str, Any] = {
        "image": settings.image or plan.docker_image,
        "ports": {f"{CONTAINER_PORT}/tcp": plan.server_ports[model][0]},
        "env": {RUN_ENV: plan.run_id},
    }
    if settings.mem_limit is not None:
        docker["mem_limit"] = settings.mem_limit
    return {
        "command": "fake-vllm",
        "args": ["serve", model, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT), *flags],  # noqa: S104 (inside the container's own netns)
        "runtime": "docker",
        "docker": docker,
    }


class SupervisorProcess:
    """`<cmd> run -c CONFIG` in its own session; started, signalled, restarted and stopped by the harness.

    Blocking methods do the work (so pytest fixtures can use them without an event loop); the async ones
    run them in a thread, so the runner's polls and proxies keep going meanwhile.
    """

    def __init__(self, cmd: list[str], config_path: Path, api_url: str, log_path: Path) -> None:
        self.cmd = [*cmd, "run", "-c", str(config_path)]
        self.api_url = api_url
        self.log_path = log_path
        self.token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start_blocking(self, within: float = 45.0) -> None:
        """Start it and wait until `GET /health` answers; raises RuntimeError with the log's tail if not."""
        env = {**os.environ, TOKEN_ENV: self.token}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (argv from the operator's --supervisor-cmd, no shell)
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.log_path.parent,
                start_new_session=True,
            )
        deadline = time.monotonic() + within
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the supervisor exited with {self.process.returncode}: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                time.sleep(0.1)  # polling /health until the deadline; nothing to await on in a thread
        self.kill_group()
        raise RuntimeError(f"the supervisor did not answer /health within {within:g}s: {self.log_tail()}")

    async def start(self, within: float = 45.0) -> None:
        await asyncio.to_thread(self.start_blocking, within)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def send(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def wait_blocking(self, within: float) -> bool:
        """Wait for the current process to exit; True if it did."""
        if self.process is None:
            return True
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            return False
        return True

    async def wait(self, within: float) -> bool:
        return await asyncio.to_thread(self.wait_blocking, within)

    def kill_group(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.wait_blocking(5.0)

    def stop_blocking(self, grace: float) -> None:
        """SIGTERM (the supervisor stops its models), then SIGKILL to its whole group after `grace` s."""
        if self.process is None:
            return
        self.send(signal.SIGTERM)
        if not self.wait_blocking(grace):
            self.kill_group()

    async def stop(self, grace: float) -> None:
        await asyncio.to_thread(self.stop_blocking, grace)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])


def write_config(plan: LocalPlan, config: dict[str, Any]) -> None:
    plan.workdir.mkdir(parents=True, exist_ok=True)
    plan.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
