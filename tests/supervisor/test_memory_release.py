"""What a finished run and a replaced model leave behind is freed at once, by reference counting, and the
daemon's timer frees the cycles it cannot avoid: a long-running supervisor's memory stays flat (bench/soak.py).

CPython's full collections are rare in a daemon whose heap is large and stable, so memory held by a
reference cycle stays for a long time; these tests switch the automatic collection off to see exactly what
reference counting alone frees.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from real_fleet import config_data, fake_model
from test_process_runtime import Lines, WaitUntil, spawn_python

from supervisor.cli import heap
from supervisor.config.schema import parse_config
from supervisor.core.states import State
from supervisor.loop.fleet import Fleet
from supervisor.store.memory import MemoryStore

pytestmark = pytest.mark.usefixtures("no_process_left")

WAIT = 30.0  # a fake-vllm start on a busy 2-core machine


@contextmanager
def automatic_collection_off() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Node:
    """A reference cycle: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


async def test_a_gone_run_lets_go_of_its_sink() -> None:
    """The sink refers to the model's owner, which refers to the run: once gone, the run drops it."""
    sink = Lines()
    sink_ref = weakref.ref(sink)
    run = await spawn_python("print('last words')", sink)
    await run.wait_gone()
    assert sink.texts() == ["last words"]
    del sink
    assert sink_ref() is None
    assert run.pid is not None  # the run itself is still here: it is the sink it let go of


@pytest.mark.slow
async def test_a_reloaded_model_is_freed_without_a_collection(tmp_path: Path, wait_until: WaitUntil) -> None:
    """A reload replaces the changed model's owner; the old one (its probe, machine, log buffers) is freed
    by reference counting the moment the replacement is done, not at a full collection hours later."""
    model = fake_model()
    data = config_data(tmp_path / "state", {"m": model})
    fleet = Fleet(parse_config(data, "test"), store=MemoryStore(), seed=1)
    await fleet.start()
    try:
        await wait_until(lambda: _healthy(fleet), WAIT)
        old_owner = weakref.ref(fleet.model("m").replicas[0].owner)
        old_pid = fleet.status("m").pid
        data["llmModels"]["m"] = {**model, "max_restarts": 7}
        with automatic_collection_off():
            plan = await fleet.reload(parse_config(data, "test"))
            await wait_until(lambda: _healthy(fleet) and fleet.status("m").pid != old_pid, WAIT)
            assert plan.restarted == ("m",)
            assert old_owner() is None
    finally:
        await fleet.shutdown()


async def test_the_timer_frees_cyclic_garbage(wait_until: WaitUntil) -> None:
    """With the automatic collection off, a reference cycle outlives its last reference until the timer's
    full collection frees it."""
    with automatic_collection_off():
        node_ref = weakref.ref(Node())
        assert node_ref() is not None  # a cycle: reference counting alone cannot free it
        collecting = asyncio.create_task(heap.collect_periodically(interval=0.01))
        try:
            await wait_until(lambda: node_ref() is None, 5.0)
        finally:
            collecting.cancel()


def test_freezing_start_up_keeps_later_garbage_collectable() -> None:
    """What exists at start-up is frozen, out of every collection's way; cycles made afterwards are still
    found by a collection."""
    try:
        heap.freeze_startup()
        assert gc.get_freeze_count() > 1000  # at least this test process's modules, classes and functions
        later = weakref.ref(Node())
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()


def _healthy(fleet: Fleet) -> bool:
    return fleet.status("m").state is State.HEALTHY
