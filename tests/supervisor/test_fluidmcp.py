"""FluidMCP's usage against a fake supervisor: /llm/... aliases, FMCP_SECURE_MODE tokens and fluidmcp_* metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import asgi_client, samples, value
from fakes import FakeSupervisor

from supervisor.api.app import create_app
from supervisor.api.auth import InsecureModeError, api_token
from supervisor.core.states import State
from supervisor.store import logs

TOKEN = "fmcp-secret-token"


@pytest.fixture
def sup(tmp_path: Path) -> FakeSupervisor:
    return FakeSupervisor(["vllm", "llama"], tmp_path / "logs")


@pytest.fixture
def fmcp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """FluidMCP's secure mode with its token; our own token variable unset."""
    monkeypatch.delenv("LLM_SUPERVISOR_TOKEN", raising=False)
    monkeypatch.setenv("FMCP_SECURE_MODE", "true")
    monkeypatch.setenv("FMCP_BEARER_TOKEN", TOKEN)
    return monkeypatch


@pytest.mark.parametrize(
    "path", ["/models", "/models/vllm", "/models/vllm/events", "/models/vllm/logs?lines=5", "/models/nope"]
)
async def test_llm_paths_answer_like_api_llm_paths(sup: FakeSupervisor, path: str) -> None:
    """Every GET under /llm/... answers exactly what the same path under /api/llm/... does (404 included)."""
    log = logs.log_path(sup.log_dir(), "vllm")
    log.parent.mkdir(parents=True)
    log.write_text("INFO: Loading model\n")
    async with asgi_client(create_app(sup, token=None)) as client:
        ours = await client.get("/api/llm" + path)
        theirs = await client.get("/llm" + path)
    assert (theirs.status_code, theirs.json()) == (ours.status_code, ours.json())
    assert theirs.status_code == (404 if "nope" in path else 200)
    if "logs" in path:
        assert theirs.json()["lines"] == ["INFO: Loading model"]


async def test_llm_actions_reach_the_supervisor(sup: FakeSupervisor) -> None:
    """POST /llm/models/{id}/stop?force=true, /start, /restart and /health-check act as the /api/llm ones do."""
    async with asgi_client(create_app(sup, token=None)) as client:
        stop = await client.post("/llm/models/vllm/stop?force=true")
        start = await client.post("/llm/models/vllm/start")
        restart = await client.post("/llm/models/vllm/restart")
        check = await client.post("/llm/models/vllm/health-check")
    assert [stop.status_code, start.status_code, restart.status_code, check.status_code] == [200] * 4
    assert sup.calls == [("stop-force", "vllm"), ("start", "vllm"), ("restart", "vllm"), ("health-check", "vllm")]
    assert check.json()["model_id"] == "vllm"


async def test_llm_paths_need_the_token_and_stay_out_of_openapi(sup: FakeSupervisor) -> None:
    """The aliases are authenticated like /api/llm, and OpenAPI documents only the /api/llm paths."""
    async with asgi_client(create_app(sup, token=TOKEN)) as client:
        anonymous = await client.get("/llm/models")
        authorized = await client.get("/llm/models", headers={"Authorization": f"Bearer {TOKEN}"})
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert anonymous.status_code == 401
    assert authorized.status_code == 200
    assert "/api/llm/models" in paths
    assert not [p for p in paths if p.startswith("/llm/")]


async def test_secure_mode_uses_fmcp_bearer_token(sup: FakeSupervisor, fmcp_env: pytest.MonkeyPatch) -> None:
    """FMCP_SECURE_MODE=true with FMCP_BEARER_TOKEN: the API needs that token and names it in the 401."""
    async with asgi_client(create_app(sup)) as client:
        anonymous = await client.get("/llm/models")
        wrong = await client.get("/llm/models", headers={"Authorization": "Bearer nope"})
        right = await client.get("/llm/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert anonymous.status_code == 401
    assert "$FMCP_BEARER_TOKEN" in anonymous.json()["detail"]
    assert wrong.status_code == 401
    assert right.status_code == 200


async def test_secure_mode_applies_when_the_daemon_found_no_token(
    sup: FakeSupervisor, fmcp_env: pytest.MonkeyPatch
) -> None:
    """The daemon passes token=None when token_env is unset; secure mode still closes the API."""
    async with asgi_client(create_app(sup, token=None)) as client:
        assert (await client.get("/api/llm/models")).status_code == 401


def test_token_env_wins_over_fmcp_bearer_token(fmcp_env: pytest.MonkeyPatch) -> None:
    """A set token_env variable is the token even in secure mode; unset, FMCP_BEARER_TOKEN is."""
    assert api_token("LLM_SUPERVISOR_TOKEN") == TOKEN
    fmcp_env.setenv("LLM_SUPERVISOR_TOKEN", "ours")
    assert api_token("LLM_SUPERVISOR_TOKEN") == "ours"


@pytest.mark.parametrize("switch", ["1", "YES", "on", "True"])
def test_secure_mode_reads_the_usual_true_words(fmcp_env: pytest.MonkeyPatch, switch: str) -> None:
    """FMCP_SECURE_MODE accepts true, 1, yes and on in any case, as docs/fluidmcp.md says."""
    fmcp_env.setenv("FMCP_SECURE_MODE", switch)
    assert api_token("LLM_SUPERVISOR_TOKEN") == TOKEN


def test_without_secure_mode_fmcp_bearer_token_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """FMCP_BEARER_TOKEN alone (secure mode off, as in FluidMCP) leaves the API as token_env says."""
    monkeypatch.delenv("LLM_SUPERVISOR_TOKEN", raising=False)
    monkeypatch.setenv("FMCP_BEARER_TOKEN", TOKEN)
    monkeypatch.setenv("FMCP_SECURE_MODE", "false")
    assert api_token("LLM_SUPERVISOR_TOKEN") is None


def test_secure_mode_without_any_token_is_refused(sup: FakeSupervisor, fmcp_env: pytest.MonkeyPatch) -> None:
    """FMCP_SECURE_MODE=true with no token anywhere raises a clear error instead of serving an open API."""
    fmcp_env.setenv("FMCP_BEARER_TOKEN", "")
    with pytest.raises(InsecureModeError, match=r"FMCP_SECURE_MODE=true but no token is set: set \$FMCP_BEARER"):
        create_app(sup)


async def test_metrics_carry_fluidmcp_series(sup: FakeSupervisor) -> None:
    """/metrics has fluidmcp_server_restarts_total, _status (1 healthy, 0 not) and _uptime_seconds per model."""
    sup.set_status("vllm", State.HEALTHY, restart_count=2, uptime_seconds=125.5)
    sup.set_status("llama", State.BACKOFF, restart_count=1)
    async with asgi_client(create_app(sup, token=None)) as client:
        parsed = samples((await client.get("/metrics")).text)
    assert value(parsed, "fluidmcp_server_restarts_total", server="vllm") == 2
    assert value(parsed, "fluidmcp_server_status", server="vllm") == 1
    assert value(parsed, "fluidmcp_server_uptime_seconds", server="vllm") == 125.5
    assert value(parsed, "fluidmcp_server_restarts_total", server="llama") == 1
    assert value(parsed, "fluidmcp_server_status", server="llama") == 0
    assert value(parsed, "fluidmcp_server_uptime_seconds", server="llama") == 0
