"""POST /api/reload against a fake supervisor: the plan as JSON, 422 with every problem, 409, and auth."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import asgi_client
from fakes import FakeSupervisor

from supervisor.api.app import create_app
from supervisor.config.reload_plan import ReloadPlan, ReloadRefused
from supervisor.config.schema import ConfigError, parse_config
from supervisor.loop.fleet import Fleet

TOKEN = "s3cret-token-value"


@pytest.fixture
def sup(tmp_path: Path) -> FakeSupervisor:
    return FakeSupervisor(["qwen", "llama"], tmp_path / "logs")


async def test_reload_answers_the_plan(sup: FakeSupervisor) -> None:
    """The answer lists added, removed, restarted and unchanged models and the keys that need a restart."""
    sup.reload_outcome = ReloadPlan(("new",), ("old",), ("qwen",), ("llama",), ("supervisor.state_dir",))
    async with asgi_client(create_app(sup, token=TOKEN), TOKEN) as client:
        response = await client.post("/api/reload")
    assert response.status_code == 200
    assert response.json() == {
        "added": ["new"],
        "removed": ["old"],
        "restarted": ["qwen"],
        "unchanged": ["llama"],
        "needs_restart": ["supervisor.state_dir"],
    }
    assert sup.calls == [("reload", "")]


async def test_reload_of_an_invalid_file_is_422_with_every_problem(sup: FakeSupervisor) -> None:
    """A file that does not validate: 422, `problems` lists each one and `detail` says them all."""
    problems = ["llmModels.a.restart_polcy: unknown key (did you mean restart_policy?)", "llmModels.b: bad"]
    sup.reload_outcome = ConfigError(problems, "/etc/llm.yaml")
    async with asgi_client(create_app(sup, token=None)) as client:
        response = await client.post("/api/reload")
    assert response.status_code == 422
    assert response.json()["problems"] == problems
    assert response.json()["detail"].startswith("/etc/llm.yaml: 2 problems:")
    assert all(p in response.json()["detail"] for p in problems)


async def test_reload_refused_is_409(sup: FakeSupervisor) -> None:
    """No file to re-read (or shutting down): 409 with the reason as detail."""
    sup.reload_outcome = ReloadRefused("the supervisor is shutting down")
    async with asgi_client(create_app(sup, token=None)) as client:
        response = await client.post("/api/reload")
    assert response.status_code == 409
    assert response.json() == {"detail": "the supervisor is shutting down"}


async def test_reload_needs_the_token(sup: FakeSupervisor) -> None:
    """Like every action, a reload without the bearer token is 401 and does nothing."""
    async with asgi_client(create_app(sup, token=TOKEN)) as client:
        response = await client.post("/api/reload")
    assert response.status_code == 401
    assert sup.calls == []


async def test_a_fleet_without_a_file_or_shutting_down_refuses_to_reload(tmp_path: Path) -> None:
    """Config parsed in memory has no file to re-read; a fleet that is shutting down refuses any reload."""
    config = parse_config({"supervisor": {"state_dir": str(tmp_path)}, "llmModels": {}}, "test")
    fleet = Fleet(config)
    await fleet.start()
    with pytest.raises(ReloadRefused, match="not started from a config file"):
        await fleet.reload()
    assert (await fleet.reload(config)) == ReloadPlan()
    await fleet.shutdown()
    with pytest.raises(ReloadRefused, match="shutting down"):
        await fleet.reload(config)
