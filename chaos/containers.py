"""The containers of one scenario run, listed and removed through the Docker SDK.

A scenario's containers are those labelled `llm-supervisor.model=<id>` (the supervisor labels each container
with its model id: docs/design/contract.md section 7) for one of its container models *and* carrying the
run's marker in their environment (`LLM_CHAOS_RUN=<run id>`, which the harness writes into each model's
`docker.env`).
Model ids such as `m1` repeat across scenarios and across people running them at once on one Docker host;
the marker does not, so the harness never judges or removes somebody else's container.
Blocking (the SDK is synchronous): call these in a thread from async code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chaos.timeline import Container

MODEL_LABEL = "llm-supervisor.model"
RUN_ENV = "LLM_CHAOS_RUN"


class ContainerError(RuntimeError):
    """The Docker daemon could not be asked about (or made to remove) the scenario's containers."""


class ScenarioContainers:
    """Finds and removes the containers of the run `run_id` of the models `models`."""

    def __init__(self, run_id: str, models: Iterable[str]) -> None:
        self.run_id = run_id
        self.models = sorted(models)

    def _client(self) -> Any:
        import docker  # an optional extra: imported only when a container scenario runs

        try:
            return docker.from_env(timeout=30)
        except docker.errors.DockerException as exc:
            raise ContainerError(f"the Docker daemon cannot be reached: {exc}") from exc

    def _ours(self, client: Any) -> list[Any]:
        marker = f"{RUN_ENV}={self.run_id}"
        found = []
        for model in self.models:
            # all=True: an exited container the supervisor failed to remove is a leftover too.
            for container in client.containers.list(all=True, filters={"label": f"{MODEL_LABEL}={model}"}):
                if marker in (container.attrs.get("Config", {}).get("Env") or []):
                    found.append(container)
        return found

    def find(self) -> tuple[Container, ...]:
        """Every container of this run that still exists (running or not)."""
        from docker import errors

        client = self._client()
        try:
            return tuple(_describe(c) for c in self._ours(client))
        except (errors.DockerException, OSError) as exc:
            raise ContainerError(f"could not list the scenario's containers: {exc}") from exc
        finally:
            client.close()

    def remove_all(self) -> list[str]:
        """Force-remove (SIGKILL, then delete) every container of this run; the names removed."""
        from docker import errors

        client = self._client()
        removed = []
        try:
            for container in self._ours(client):
                try:
                    container.remove(force=True, v=True)
                except errors.NotFound:
                    continue  # the supervisor removed it meanwhile
                removed.append(str(container.name))
        except (errors.DockerException, OSError) as exc:
            raise ContainerError(f"could not remove the scenario's containers: {exc}") from exc
        finally:
            client.close()
        return removed


def _describe(container: Any) -> Container:
    state = container.attrs.get("State", {})
    pid = state.get("Pid")
    return Container(
        model=str(container.labels.get(MODEL_LABEL, "")),
        id=str(container.id)[:12],
        name=str(container.name),
        status=str(container.status),
        pid=pid if isinstance(pid, int) and pid > 0 else None,
    )
