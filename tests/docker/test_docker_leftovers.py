"""Containers left by an earlier supervisor life are found by their labels and stopped and removed."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.runtime.docker import (
    create_container,
    find_labelled,
    remove_leftover_container,
    remove_leftovers,
)
from supervisor.runtime.docker_spec import ContainerSpec, create_args

pytestmark = pytest.mark.docker


def leave_container(
    client: Any, image: str, model_id: str, run_number: int, *, start: bool, instance: str | None = None
) -> str:
    """Create (and start) a container exactly as a supervisor run would, with nobody watching it."""
    spec = ContainerSpec(
        image=image, entrypoint=["python3", "-c"], command=["import time; time.sleep(600)"], instance=instance
    )
    container_id = create_container(client, create_args(spec, model_id, run_number))
    if start:
        client.api.start(container_id)
    return container_id


def test_find_labelled_lists_running_and_stopped_containers_of_the_model_only(
    docker_client: Any, fake_image: str, model_id: str
) -> None:
    """Every container of the model is found, whatever its state, with its run number; other models' are not."""
    running = leave_container(docker_client, fake_image, model_id, 2, start=True)
    created = leave_container(docker_client, fake_image, model_id, 3, start=False)
    other = leave_container(docker_client, fake_image, f"{model_id}-other", 1, start=False)
    try:
        found = {c.id: (c.model_id, c.run_number, c.status) for c in find_labelled(model_id)}
        assert found == {running: (model_id, 2, "running"), created: (model_id, 3, "created")}
    finally:
        for container_id in (running, created, other):
            docker_client.api.remove_container(container_id, force=True)


async def test_remove_leftovers_stops_and_removes_every_labelled_container(
    docker_client: Any, fake_image: str, model_id: str
) -> None:
    """remove_leftovers removes the model's containers and reports those that were still running."""
    running = leave_container(docker_client, fake_image, model_id, 1, start=True)
    leave_container(docker_client, fake_image, model_id, 2, start=False)
    was_running = await remove_leftovers(model_id, stop_timeout=1)
    assert was_running == [running]
    assert find_labelled(model_id) == []


async def test_journal_ident_is_removed_and_reported(docker_client: Any, fake_image: str, model_id: str) -> None:
    """The journal's container id is stopped and removed; True because it was still running."""
    ident = leave_container(docker_client, fake_image, model_id, 5, start=True)
    assert await remove_leftover_container(model_id, ident, stop_timeout=1) is True
    assert find_labelled(model_id) == []
    assert await remove_leftover_container(model_id, ident, stop_timeout=1) is False


async def test_nothing_left_is_nothing_to_do(docker_client: Any, model_id: str) -> None:
    """A model with no container and a journal id that no longer exists: nothing running, no error."""
    assert await remove_leftovers(model_id, stop_timeout=1) == []
    assert await remove_leftover_container(model_id, "0" * 64, stop_timeout=1) is False


async def test_another_supervisors_container_of_the_same_model_is_left_alone(
    docker_client: Any, fake_image: str, model_id: str
) -> None:
    """Two supervisors on one host both run a model with this id: each removes only its own leftovers."""
    leave_container(docker_client, fake_image, model_id, 1, start=True, instance="aaaaaaaaaaaa")
    theirs = leave_container(docker_client, fake_image, model_id, 1, start=True, instance="bbbbbbbbbbbb")
    try:
        assert await remove_leftover_container(model_id, None, stop_timeout=1, instance="aaaaaaaaaaaa") is True
        assert [c.id for c in find_labelled(model_id)] == [theirs]
        assert docker_client.api.inspect_container(theirs)["State"]["Running"]
    finally:
        docker_client.api.remove_container(theirs, force=True)  # "mine" is gone already
