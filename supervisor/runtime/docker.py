"""`runtime: docker`: run a model as a container through the Docker Engine API (the `docker` package).

Spawning a run, in order, so nothing the container does is missed:
  create (labelled with the model id and run number) -> subscribe to the engine's events for its `die` ->
  attach to its output -> start -> hand both streams to a `DockerRun`.
The SDK is synchronous: these calls run in a worker thread (`asyncio.to_thread`), never on the event loop.

Errors a person can act on are `SpawnError` subclasses with the fix in the message:

    SpawnError
     +-- DockerUnavailable   the daemon cannot be reached (or the `docker` package is missing)
     +-- ImageMissing        the image is not on the host and `pull` is off (no pull is ever implied)
     +-- PortInUse           a published host port is taken

Leftovers: a supervisor started again stops and removes the containers its previous life left (found by the
journal's container id, and by label), rather than adopting them: an adopted container's output since the
crash and its start time are lost, and a fresh run is the state the supervisor knows exactly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import docker
from docker import errors as docker_errors
from requests.exceptions import ConnectionError as RequestsConnectionError

from supervisor.runtime.base import LineSink, SpawnError
from supervisor.runtime.docker_run import DockerRun, die_filter
from supervisor.runtime.docker_spec import (
    INSTANCE_LABEL,
    MODEL_LABEL,
    RUN_LABEL,
    ContainerSpec,
    CreateArgs,
    create_args,
)
from supervisor.runtime.docker_streams import AttachedOutput, close_quietly

log = logging.getLogger(__name__)

ClientFactory = Callable[[], Any]  # returns a docker.DockerClient

_PORT_TAKEN = re.compile(r"port is already allocated|address already in use", re.IGNORECASE)


class DockerUnavailable(SpawnError):
    """The Docker daemon cannot be reached."""


class ImageMissing(SpawnError):
    """The image is not present on the Docker host and pulling is off."""


class PortInUse(SpawnError):
    """A host port the container publishes is already taken."""


def default_client_factory() -> Any:
    """A client for the daemon that DOCKER_HOST names (the local socket by default)."""
    address = _daemon_address()
    if address.startswith("unix://"):
        # Try the socket ourselves first: docker-py leaks the socket of a failed connect (an fd per retry).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            probe.connect(address.removeprefix("unix://"))  # OSError: reported as DockerUnavailable
    return docker.from_env()


def _daemon_address() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def connect(client_factory: ClientFactory) -> Any:
    """A connected client, or DockerUnavailable saying where the daemon was looked for."""
    try:
        return client_factory()
    except (docker_errors.DockerException, RequestsConnectionError, OSError) as exc:
        raise DockerUnavailable(
            f"Docker daemon unreachable at {_daemon_address()}: {exc} "
            "(is dockerd running, and may this user use its socket?)"
        ) from exc


class DockerRuntime:
    """Spawns runs of one model's container spec; one client per run, closed when the run is gone."""

    def __init__(self, spec: ContainerSpec, client_factory: ClientFactory = default_client_factory) -> None:
        self.spec = spec
        self._client_factory = client_factory

    async def spawn(self, model_id: str, run_number: int, sink: LineSink) -> DockerRun:
        client = await asyncio.to_thread(connect, self._client_factory)
        starting = asyncio.ensure_future(asyncio.to_thread(self._start, client, model_id, run_number))
        try:
            container_id, pid, events, output = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The thread cannot be stopped; a container it starts after all would run with nobody watching.
            starting.add_done_callback(lambda done: _discard_started(done, client))
            raise
        except BaseException:
            client.close()
            raise
        run = DockerRun(
            client, container_id, pid=pid, events=events, output=output, sink=sink, stop_timeout=self.spec.stop_timeout
        )
        run.begin()
        return run

    def _start(self, client: Any, model_id: str, run_number: int) -> tuple[str, int | None, Any, Any]:
        try:
            container_id = self._create(client, model_id, run_number)
        except (RequestsConnectionError, docker_errors.DockerException) as exc:
            raise _spawn_error(exc, self.spec) from exc
        events = output = None
        try:
            # Subscribed and attached before start: an instant crash and its last words are still seen.
            events = client.api.events(filters=die_filter(container_id), decode=True)
            output = AttachedOutput(client.api, container_id)
            client.api.start(container_id)
            attrs = client.api.inspect_container(container_id)
        except (RequestsConnectionError, docker_errors.DockerException) as exc:
            _undo_start(client, container_id, events, output)
            raise _spawn_error(exc, self.spec) from exc
        pid = int(attrs["State"].get("Pid") or 0) or None
        log.info(
            "model %s run %d: container %s (%s) started",
            model_id,
            run_number,
            attrs["Name"].lstrip("/"),
            container_id[:12],
        )
        return container_id, pid, events, output

    def _create(self, client: Any, model_id: str, run_number: int) -> str:
        args = create_args(self.spec, model_id, run_number)
        try:
            return create_container(client, args)
        except docker_errors.ImageNotFound as exc:
            if not self.spec.pull:
                raise ImageMissing(
                    f"image {self.spec.image!r} is not on the Docker host and docker.pull is off: "
                    f"run `docker pull {self.spec.image}` (or build it), or set docker.pull: true"
                ) from exc
        log.info("pulling image %s", self.spec.image)
        try:
            client.images.pull(self.spec.image)
        except docker_errors.APIError as exc:
            raise ImageMissing(f"image {self.spec.image!r} could not be pulled: {_explain(exc)}") from exc
        return create_container(client, args)


def create_container(client: Any, args: CreateArgs) -> str:
    """POST /containers/create with `args`; the new container's id."""
    host_config = client.api.create_host_config(**args.host_config)
    return str(client.api.create_container(**args.container, host_config=host_config)["Id"])


def _spawn_error(exc: Exception, spec: ContainerSpec) -> SpawnError:
    if isinstance(exc, RequestsConnectionError):
        return DockerUnavailable(f"Docker daemon unreachable at {_daemon_address()}: {exc}")
    text = _explain(exc)
    if _PORT_TAKEN.search(text):
        ports = ", ".join(f"{spec.host_ip}:{port}" for port in spec.ports.values())
        return PortInUse(f"host port already in use (address already in use) among {ports}: {text}")
    return SpawnError(f"the Docker engine refused to run {spec.image!r}: {text}")


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def _discard_started(done: asyncio.Future[tuple[str, int | None, Any, Any]], client: Any) -> None:
    """Remove the container of a spawn that was cancelled while its thread was starting it."""
    if done.cancelled() or done.exception() is not None:
        client.close()
        return
    container_id, _, events, output = done.result()

    def discard() -> None:
        _undo_start(client, container_id, events, output)
        client.close()

    threading.Thread(target=discard, name=f"docker-discard-{container_id[:12]}", daemon=True).start()


def _undo_start(client: Any, container_id: str, events: Any, output: AttachedOutput | None) -> None:
    """Close the streams of a start that will not become a run, and remove its container (best effort)."""
    for stream in (events, output):
        close_quietly(stream)
    try:
        client.api.remove_container(container_id, v=True, force=True)
    except Exception:  # best effort: the failure that brought us here is the one to report
        log.warning("could not remove container %s after a failed start", container_id[:12], exc_info=True)


# --- leftovers of an earlier supervisor life ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelledContainer:
    """A container carrying a model's label, as `find_labelled` reports it."""

    id: str
    name: str
    model_id: str
    run_number: int | None
    status: str  # the engine's: created | running | exited | dead | ...


def find_labelled(
    model_id: str, client_factory: ClientFactory = default_client_factory, *, instance: str | None = None
) -> list[LabelledContainer]:
    """Every container (running or not) labelled with `model_id` (and made by supervisor `instance`, when
    given). Blocking: call it in a thread."""
    labels = [f"{MODEL_LABEL}={model_id}"] + ([f"{INSTANCE_LABEL}={instance}"] if instance else [])
    client = connect(client_factory)
    try:
        found = client.containers.list(all=True, filters={"label": labels})
        return [_labelled(container) for container in found]
    finally:
        client.close()


def _labelled(container: Any) -> LabelledContainer:
    labels = container.labels
    run = labels.get(RUN_LABEL, "")
    return LabelledContainer(
        container.id, container.name, labels.get(MODEL_LABEL, ""), int(run) if run.isdigit() else None, container.status
    )


def stop_and_remove(
    container_ids: Iterable[str], stop_timeout: float, client_factory: ClientFactory = default_client_factory
) -> list[str]:
    """`docker stop` (then kill after stop_timeout) and remove each container; the ids that were still running."""
    client = connect(client_factory)
    was_running: list[str] = []
    try:
        for container_id in container_ids:
            try:
                if client.api.inspect_container(container_id)["State"].get("Running"):
                    was_running.append(container_id)
                    client.api.stop(container_id, timeout=max(0, round(stop_timeout)))
                client.api.remove_container(container_id, v=True, force=True)
            except docker_errors.NotFound:
                continue  # removed meanwhile: nothing left to do
        return was_running
    finally:
        client.close()


async def remove_leftovers(
    model_id: str,
    stop_timeout: float,
    also: Iterable[str] = (),
    client_factory: ClientFactory = default_client_factory,
    *,
    instance: str | None = None,
) -> list[str]:
    """Stop and remove every container labelled with `model_id` (and the ids in `also`); the ids that were
    still running. Call it before the model's first spawn only: it would remove a live run of this supervisor.
    """
    found = await asyncio.to_thread(partial(find_labelled, model_id, client_factory, instance=instance))
    ids = [container.id for container in found]
    # A recorded container whose labels were changed by hand is still ours to clean up.
    ids += [extra for extra in also if not any(cid.startswith(extra) for cid in ids)]
    if not ids:
        return []
    log.warning(
        "model %s: removing %d container(s) left by an earlier supervisor: %s",
        model_id,
        len(ids),
        ", ".join(cid[:12] for cid in ids),
    )
    return await asyncio.to_thread(stop_and_remove, ids, stop_timeout, client_factory)


async def remove_leftover_container(
    model_id: str,
    ident: str | None,
    stop_timeout: float,
    client_factory: ClientFactory = default_client_factory,
    *,
    instance: str | None = None,
) -> bool:
    """The journal's recorded run `ident` (a container id), if any, and every other container of this
    supervisor labelled with the model: stop and remove them. True if one of them was still running."""
    also = [ident] if ident else []
    return bool(await remove_leftovers(model_id, stop_timeout, also, client_factory, instance=instance))
