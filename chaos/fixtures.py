"""Building blocks of the pytest fixtures `fake_vllm` and `supervised`, usable without pytest too.

`FakeServer` runs one fake-vllm on a free port in its own session; `Supervised` runs a supervisor over fake
servers described like a scenario's `target.models`. Both are context managers whose exit kills every
process they started (whole groups), and checks with psutil that none is left; `Supervised` also removes
the containers of its container models (`runtime: docker`, the `:latest` fake-vLLM image unless named).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from chaos import procs
from chaos.containers import ScenarioContainers
from chaos.scenario import ModelSpec, Scenario, Target
from chaos.target import (
    SupervisorProcess,
    build_config,
    default_supervisor_cmd,
    fake_vllm_command,
    free_port,
    plan_local,
    write_config,
)


class FakeServer:
    """`fake-vllm serve MODEL --port P FLAGS...`; `url` is its root, `pid` its process."""

    def __init__(self, *flags: str, model: str = "fake-model", workdir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="fake-vllm-"))
        self.argv = [fake_vllm_command(), "serve", model, "--port", str(self.port), *flags]
        self.process: subprocess.Popen[bytes] | None = None
        self._seen: set[procs.Key] = set()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the fake server is not started")
        return self.process.pid

    def start(self, *, wait_healthy: bool = True, within: float = 30.0) -> FakeServer:
        with (self.workdir / "fake-vllm.log").open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own console script, no shell)
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        if wait_healthy:
            self.wait_healthy(within)
        return self

    def wait_healthy(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                self._remember()
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"fake-vllm exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                time.sleep(0.05)  # polling the port until the deadline
        raise RuntimeError(f"fake-vllm on {self.url} was not healthy within {within:g}s")

    def set_faults(self, **faults: object) -> dict[str, Any]:
        """POST /admin/faults (fault names with underscores, as in docs/design/contract.md section 6)."""
        response = httpx.post(f"{self.url}/admin/faults", json=faults, timeout=5.0)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def _remember(self) -> None:
        if self.process is not None and (found := procs.describe(self.process.pid)):
            self._seen.add((self.process.pid, found[0]))
            self._seen |= {(pid, created) for pid, created, _ in found[2]}

    def stop(self) -> None:
        """SIGKILL the whole group (engine children included) and make sure nothing of it is left."""
        if self.process is None:
            return
        self._remember()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        stuck = procs.kill_leftovers(self._seen)
        if stuck:
            raise RuntimeError(f"fake-vllm processes would not die: {stuck}")

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class Supervised:
    """A supervisor (default: this project's) over fake servers, described like a scenario's target."""

    def __init__(
        self,
        models: dict[str, dict[str, Any]],
        *,
        supervisor_cmd: list[str] | None = None,
        workdir: Path | None = None,
        seed: int = 0,
    ) -> None:
        target = Target(models={m: ModelSpec.model_validate(spec) for m, spec in models.items()})
        scenario = Scenario.model_validate(
            {"name": "supervised", "story": "fixture", "target": target, "expect": [{"no_orphans": True}]}
        )
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="supervised-"))
        self.plan = plan_local(scenario, self.workdir)
        write_config(self.plan, build_config(scenario, self.plan, seed))
        self.supervisor = SupervisorProcess(
            supervisor_cmd or default_supervisor_cmd(),
            self.plan.config_path,
            self.plan.api_url,
            self.workdir / "supervisor.log",
        )

    @property
    def url(self) -> str:
        return self.plan.api_url

    @property
    def headers(self) -> dict[str, str]:
        return self.supervisor.headers

    def server_url(self, model: str) -> str:
        """The fake server's own root URL (for /admin/faults)."""
        return self.plan.server_url(model)

    def client(self) -> httpx.Client:
        """An httpx client for the management API, with its bearer token."""
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=5.0)

    def status(self, model: str) -> dict[str, Any]:
        with self.client() as client:
            response = client.get(f"/api/llm/models/{model}")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def wait_for(self, model: str, state: str, within: float = 30.0) -> dict[str, Any]:
        """Poll the model's status until it is in `state`; returns that status or raises TimeoutError."""
        deadline = time.monotonic() + within
        status = self.status(model)
        while status.get("state") != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{model} not {state} within {within:g}s (last: {status.get('state')})")
            time.sleep(0.1)  # polling the API until the deadline
            status = self.status(model)
        return status

    def start(self) -> Supervised:
        self.supervisor.start_blocking()
        return self

    def stop(self) -> None:
        """SIGTERM the supervisor, then kill anything still running on the fakes' ports, and remove the
        containers of its container models (`runtime: docker`)."""
        self.supervisor.stop_blocking(40.0)
        if self.plan.containers:
            ScenarioContainers(self.plan.run_id, self.plan.containers).remove_all()
        leftovers = {(pid, created) for _, pid, created, _ in procs.find_servers(self.plan.process_ports)}
        stuck = procs.kill_leftovers(leftovers)
        if stuck:
            raise RuntimeError(f"processes would not die: {stuck}")

    def __enter__(self) -> Supervised:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
