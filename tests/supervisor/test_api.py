"""The management API against a fake supervisor: every path, errors, GET purity, auth and rate limit."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from api_helpers import ManualClock, asgi_client
from fakes import FakeSupervisor

from supervisor.api.app import create_app
from supervisor.api.ratelimit import ActionRateLimiter
from supervisor.api.schemas import EventOut, HealthCheckResponse, ModelStatusOut
from supervisor.core.states import EventKind, State
from supervisor.core.views import HealthCheckReport, ModelStatus, TimelineEvent

TOKEN = "s3cret-token-value"


@pytest.fixture
def sup(tmp_path: Path) -> FakeSupervisor:
    return FakeSupervisor(["qwen", "llama"], tmp_path / "logs")


async def test_health_needs_no_auth_and_says_ok(sup: FakeSupervisor) -> None:
    """GET /health answers {"status": "ok"} even when a token is configured."""
    async with asgi_client(create_app(sup, token=TOKEN)) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_list_models_has_every_status_field(sup: FakeSupervisor) -> None:
    """GET /api/llm/models lists every model with all ModelStatus fields and the total."""
    async with asgi_client(create_app(sup, token=None)) as client:
        body = (await client.get("/api/llm/models")).json()
    assert body["total"] == 2
    assert [m["id"] for m in body["models"]] == ["qwen", "llama"]
    assert set(body["models"][0]) == {f.name for f in fields(ModelStatus)}
    assert body["models"][0]["state"] == "healthy"


async def test_get_one_model_and_unknown_is_404(sup: FakeSupervisor) -> None:
    """GET /api/llm/models/{id} returns that model; an unknown id is 404 with a detail naming the known ids."""
    sup.set_status("llama", State.FAILED, failure_cause="oom", failure_advice="lower --gpu-memory-utilization")
    async with asgi_client(create_app(sup, token=None)) as client:
        ok = await client.get("/api/llm/models/llama")
        missing = await client.get("/api/llm/models/nope")
    assert ok.status_code == 200
    assert ok.json()["failure_cause"] == "oom"
    assert ok.json()["failure_advice"] == "lower --gpu-memory-utilization"
    assert missing.status_code == 404
    assert missing.json()["detail"] == "unknown model 'nope' (configured: qwen, llama)"


@pytest.mark.parametrize(
    ("path", "call"),
    [("start", "start"), ("stop", "stop"), ("stop?force=true", "stop-force"), ("restart", "restart")],
)
async def test_actions_go_through_the_facade(sup: FakeSupervisor, path: str, call: str) -> None:
    """POST start/stop/restart call the facade once and answer its message and the new status."""
    async with asgi_client(create_app(sup, token=None)) as client:
        response = await client.post(f"/api/llm/models/qwen/{path}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert sup.calls == [(call, "qwen")]
    assert body["accepted"] is True
    assert body["message"].endswith("begun")
    assert body["status"]["id"] == "qwen"
    assert body["restart_count"] == body["status"]["restart_count"]


async def test_refused_action_is_409_with_the_reason(sup: FakeSupervisor) -> None:
    """A refused operation answers 409 and the facade's sentence as detail."""
    sup.set_status("qwen", State.STOPPED)
    async with asgi_client(create_app(sup, token=None)) as client:
        response = await client.post("/api/llm/models/qwen/stop")
    assert response.status_code == 409
    assert response.json() == {"detail": "model 'qwen' is already stopped"}


@pytest.mark.parametrize(
    "request_line",
    [
        ("POST", "/api/llm/models/qwen/stop?force=maybe"),
        ("GET", "/api/llm/models/qwen/logs?lines=0"),
        ("GET", "/api/llm/models/qwen/logs?lines=10001"),
        ("GET", "/api/llm/models/qwen/logs?lines=ten"),
        ("GET", "/api/llm/models/qwen/events?since=-1"),
        ("GET", "/api/llm/models/qwen/events?limit=0"),
    ],
)
async def test_bad_parameters_are_422_with_a_reason(sup: FakeSupervisor, request_line: tuple[str, str]) -> None:
    """Out-of-range or malformed parameters are 422, naming the parameter, and call nothing."""
    method, url = request_line
    async with asgi_client(create_app(sup, token=None)) as client:
        response = await client.request(method, url)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"
    assert sup.calls == []


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("POST", "start"),
        ("POST", "stop"),
        ("POST", "restart"),
        ("GET", "logs"),
        ("GET", "events"),
        ("POST", "health-check"),
        ("GET", "logs/stream"),
    ],
)
async def test_unknown_model_is_404_on_every_path(sup: FakeSupervisor, method: str, suffix: str) -> None:
    """Every per-model path answers 404 with a detail for an unknown id, and calls nothing."""
    async with asgi_client(create_app(sup, token=None)) as client:
        response = await client.request(method, f"/api/llm/models/ghost/{suffix}")
    assert response.status_code == 404
    assert "unknown model 'ghost'" in response.json()["detail"]
    assert sup.calls == []


async def test_events_since_and_limit(sup: FakeSupervisor) -> None:
    """GET .../events returns the model's timeline after `since`, oldest first; `limit` keeps the newest."""
    sup.emit("qwen", EventKind.SPAWNED, State.STARTING)
    sup.emit("llama", EventKind.SPAWNED, State.STARTING)
    sup.emit("qwen", EventKind.HEALTHY, State.HEALTHY)
    sup.emit("qwen", EventKind.EXITED, State.BACKOFF, detail="exit code 1", reason="crash")
    async with asgi_client(create_app(sup, token=None)) as client:
        everything = (await client.get("/api/llm/models/qwen/events")).json()
        after = (await client.get("/api/llm/models/qwen/events?since=1")).json()
        newest = (await client.get("/api/llm/models/qwen/events?limit=1")).json()
    assert [e["seq"] for e in everything] == [1, 3, 4]
    assert set(everything[0]) == {"seq", "time", "model_id", "kind", "state", "detail", "reason", "replica"}
    assert [e["kind"] for e in after] == ["healthy", "exited"]
    assert newest == [everything[-1]]
    assert newest[0]["detail"] == "exit code 1"
    assert newest[0]["reason"] == "crash"


async def test_health_check_runs_one_probe(sup: FakeSupervisor) -> None:
    """POST .../health-check runs exactly one probe and answers the FluidMCP fields."""
    async with asgi_client(create_app(sup, token=None)) as client:
        body = (await client.post("/api/llm/models/qwen/health-check")).json()
    assert sup.probes == 1
    assert set(body) == {
        "model_id",
        "is_healthy",
        "health_message",
        "consecutive_health_failures",
        "last_health_check_time",
        "has_cuda_oom",
    }
    assert body["model_id"] == "qwen"
    assert body["is_healthy"] is True


async def test_prior_art_6_get_endpoints_never_probe_or_act(sup: FakeSupervisor) -> None:
    """Polling every GET path (as a dashboard does) runs no probe and calls no action (docs/design/defects.md #6)."""
    sup.emit("qwen", EventKind.SPAWNED, State.STARTING)
    before = sup.statuses()
    async with asgi_client(create_app(sup, token=None)) as client:
        for _ in range(5):
            for url in (
                "/api/llm/models",
                "/api/llm/models/qwen",
                "/api/llm/models/qwen/events",
                "/api/llm/models/qwen/logs?lines=5",
                "/metrics",
                "/health",
                "/",
            ):
                assert (await client.get(url)).status_code == 200, url
    assert sup.calls == []
    assert sup.probes == 0
    assert sup.statuses() == before


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed Authorization header"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid bearer token"),
        ({"Authorization": "Bearer "}, "malformed Authorization header"),
    ],
)
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/llm/models"),
        ("GET", "/api/llm/models/qwen"),
        ("POST", "/api/llm/models/qwen/restart"),
        ("GET", "/api/llm/models/qwen/events"),
        ("GET", "/metrics"),
        ("POST", "/api/llm/models/qwen/health-check"),
    ],
)
async def test_auth_refuses_missing_malformed_and_wrong_tokens(
    sup: FakeSupervisor, headers: dict[str, str], reason: str, method: str, url: str
) -> None:
    """With a token configured, /api/... and /metrics answer 401 with the reason, and nothing is called."""
    async with asgi_client(create_app(sup, token=TOKEN)) as client:
        response = await client.request(method, url, headers=headers)
    assert response.status_code == 401
    assert reason in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert sup.calls == []


async def test_right_token_is_accepted_and_shell_is_open(sup: FakeSupervisor) -> None:
    """The right token opens the API; the page shell and its assets need none."""
    app = create_app(sup, token=TOKEN)
    async with asgi_client(app, token=TOKEN) as client:
        assert (await client.get("/api/llm/models")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.post("/api/llm/models/qwen/restart")).status_code == 200
    async with asgi_client(app) as anonymous:
        page = await anonymous.get("/")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        assert (await anonymous.get("/static/app.js")).status_code == 200
        assert (await anonymous.get("/static/style.css")).status_code == 200


async def test_token_comes_from_the_configured_env_var(
    sup: FakeSupervisor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """create_app reads the token from the variable named by supervisor.token_env; empty means no auth."""
    custom = FakeSupervisor(["qwen"], tmp_path, token_env="MY_TOKEN")
    monkeypatch.setenv("MY_TOKEN", "from-env")
    async with asgi_client(create_app(custom)) as client:
        assert (await client.get("/api/llm/models")).status_code == 401
        ok = await client.get("/api/llm/models", headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200
    monkeypatch.setenv("MY_TOKEN", "")
    async with asgi_client(create_app(custom)) as client:
        assert (await client.get("/api/llm/models")).status_code == 200


async def test_rate_limit_429_after_ten_actions_a_minute(sup: FakeSupervisor) -> None:
    """The 11th start/restart of one model inside a minute is 429 with Retry-After; others are unaffected."""
    clock = ManualClock()
    app = create_app(sup, token=None, rate_limiter=ActionRateLimiter(clock=clock))
    async with asgi_client(app) as client:
        for i in range(10):
            clock.now += 1.0
            action = ("restart", "start")[i % 2]
            assert (await client.post(f"/api/llm/models/qwen/{action}")).status_code in (200, 409)
        refused = await client.post("/api/llm/models/qwen/restart")
        assert refused.status_code == 429
        # The first of the ten was at t+1, now is t+10: it leaves the window 51 s from now.
        assert refused.headers["retry-after"] == "51"
        assert "more than 10" in refused.json()["detail"]
        assert (await client.post("/api/llm/models/llama/restart")).status_code == 200
        assert (await client.post("/api/llm/models/ghost/restart")).status_code == 404
        clock.now += 51.0
        assert (await client.post("/api/llm/models/qwen/restart")).status_code == 200
        assert (await client.post("/api/llm/models/qwen/restart")).status_code == 429
    assert sup.calls.count(("restart", "qwen")) == 6  # 5 of the first ten + the one after the window moved


def test_rate_limiter_window_rolls() -> None:
    """The limiter refuses the 11th hit in any 60 s and frees one slot per hit that leaves the window."""
    clock = ManualClock()
    limiter = ActionRateLimiter(limit=3, window=60.0, clock=clock)
    results = []
    for t in (0, 10, 20, 30, 60, 61, 70):
        clock.now = 1000.0 + t
        results.append(limiter.check("m"))
    assert results == [None, None, None, 30.0, None, 9.0, None]
    assert limiter.check("other") is None
    assert ActionRateLimiter.retry_after_header(0.2) == "1"
    assert ActionRateLimiter.retry_after_header(9.0) == "9"


def test_response_models_have_the_fields_of_the_values_they_copy() -> None:
    """The pydantic answers repeat the core's dataclasses field for field, so neither can drift alone."""
    for model, source in (
        (ModelStatusOut, ModelStatus),
        (EventOut, TimelineEvent),
        (HealthCheckResponse, HealthCheckReport),
    ):
        assert list(model.model_fields) == [f.name for f in fields(source)], model.__name__


async def test_openapi_documents_every_contract_path(sup: FakeSupervisor) -> None:
    """/openapi.json lists each path of docs/design/contract.md section 4, its method, and the ModelStatus schema."""
    async with asgi_client(create_app(sup, token=TOKEN)) as client:
        doc = (await client.get("/openapi.json")).json()
    expected = {
        ("/health", "get"),
        ("/api/llm/models", "get"),
        ("/api/llm/models/{model_id}", "get"),
        ("/api/llm/models/{model_id}/start", "post"),
        ("/api/llm/models/{model_id}/stop", "post"),
        ("/api/llm/models/{model_id}/restart", "post"),
        ("/api/llm/models/{model_id}/logs", "get"),
        ("/api/llm/models/{model_id}/logs/stream", "get"),
        ("/api/llm/models/{model_id}/health-check", "post"),
        ("/api/llm/models/{model_id}/events", "get"),
        ("/metrics", "get"),
        ("/api/status", "get"),
        ("/api/diagnostics", "get"),
        ("/api/heal", "post"),
        ("/api/reload", "post"),
    }
    assert {(p, m) for p, ops in doc["paths"].items() for m in ops} == expected
    status_schema = doc["components"]["schemas"]["ModelStatusOut"]
    assert set(status_schema["properties"]) == {f.name for f in fields(ModelStatus)}
    assert set(doc["paths"]["/api/llm/models/{model_id}/restart"]["post"]["responses"]) >= {
        "200",
        "401",
        "404",
        "409",
        "422",
        "429",
    }
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
