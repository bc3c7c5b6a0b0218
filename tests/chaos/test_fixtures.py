"""The `fake_vllm` and `supervised` fixtures start real processes and leave none behind."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import psutil
import pytest

from chaos.fixtures import FakeServer, Supervised


def test_fake_vllm_fixture_serves_and_takes_faults(fake_vllm: Callable[..., FakeServer]) -> None:
    """The factory starts a healthy fake; /admin/faults changes it while it runs."""
    server = fake_vllm(model="tiny")
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    assert server.set_faults(health_flap=1.0)["health_flap"] == 1.0
    assert httpx.get(f"{server.url}/health", timeout=5).status_code != 200


def test_fake_server_stop_kills_engine_children(no_leftovers: None) -> None:
    """Stopping a fake with engine children leaves none of its processes alive."""
    with FakeServer("--engine-children", "2") as server:
        parent = psutil.Process(server.pid)
        children = parent.children(recursive=True)
        assert len(children) == 2
    assert not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


@pytest.mark.slow
def test_supervised_fixture_runs_models(no_leftovers: None, supervised: Callable[..., Supervised]) -> None:
    """The factory starts our supervisor over fakes; its API answers with the token it was given."""
    target = supervised({"m1": {"startup_probe_interval": 0.2}})
    status = target.wait_for("m1", "healthy", within=30)
    assert psutil.pid_exists(status["pid"])
    with target.client() as client:
        assert client.get("/api/llm/models").json()["total"] == 1
    assert httpx.get(f"{target.server_url('m1')}/health", timeout=5).status_code == 200
