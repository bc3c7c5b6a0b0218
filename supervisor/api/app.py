"""The management API (docs/design/contract.md section 4), Prometheus /metrics and the status page, as one FastAPI app.

GET endpoints call only the supervisor's pure reads: they never probe and never move a counter
(docs/design/defects.md #6). Start/stop/restart go to the model's owner task through the facade, which serializes them
(docs/design/defects.md #7). Log files are read in a worker thread so a 10,000-line tail never stalls the loop that
runs every model's probes (docs/design/defects.md #8).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from supervisor import __version__
from supervisor.api.auth import BearerAuth, api_token, secure_mode
from supervisor.api.facade import SupervisorFacade
from supervisor.api.metrics import CONTENT_TYPE_LATEST, Metrics
from supervisor.api.ratelimit import ActionRateLimiter
from supervisor.api.routes_health import health_router
from supervisor.api.routes_ops import ops_router
from supervisor.api.schemas import (
    ActionResponse,
    ErrorDetail,
    EventOut,
    HealthCheckResponse,
    HealthResponse,
    LogsResponse,
    ModelList,
    ModelStatusOut,
)
from supervisor.core.views import ActionResult, ModelStatus
from supervisor.loop.model import unit_name
from supervisor.store import logs

STATIC_DIR = Path(__file__).parent / "static"
MAX_LOG_LINES = 10_000
SEQ_MAX = 2**63 - 1  # SQLite's largest integer: a larger `since` is a 422, not an OverflowError (500)

_UNSET: Any = object()
Responses = dict[int | str, dict[str, Any]]
_ERR: dict[str, Any] = {"model": ErrorDetail}
_AUTH: Responses = {401: {**_ERR, "description": "Missing, malformed or wrong bearer token"}}
_MODEL: Responses = {**_AUTH, 404: {**_ERR, "description": "No model with this id"}}
_ACTION: Responses = {
    **_MODEL,
    409: {**_ERR, "description": "Refused (the supervisor is shutting down); detail says why"},
    429: {
        **_ERR,
        "description": "More than the allowed start/restart requests a minute for this model; see Retry-After",
    },
}
_RESTART: Responses = {**_ACTION, 400: {**_ERR, "description": "replica and rolling=true given together"}}
ModelId = Annotated[str, PathParam(description="The model id from the config")]
ReplicaIndex = Annotated[int, Query(ge=0, description="Which replica's log (0 for a model of one replica)")]


def create_app(
    supervisor: SupervisorFacade,
    *,
    token: str | None = _UNSET,
    rate_limiter: ActionRateLimiter | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """Build the app. `token` defaults to the env var named by `config.supervisor.token_env` (or FluidMCP's
    FMCP_BEARER_TOKEN in its secure mode); raises auth.InsecureModeError for secure mode without a token."""
    token_env = supervisor.config.supervisor.token_env
    if token is _UNSET or (token is None and secure_mode()):
        # FluidMCP's secure mode supplies FMCP_BEARER_TOKEN when token_env is unset, or refuses an open API.
        token = api_token(token_env)
    auth = BearerAuth(token, token_env)
    metrics = metrics or Metrics(supervisor)

    app = FastAPI(
        title="llm-supervisor",
        summary="Keeps vLLM servers alive: status, actions, logs, events and metrics.",
        version=__version__,
    )
    app.state.metrics = metrics

    @app.get("/health", response_model=HealthResponse, tags=["supervisor"])
    async def health() -> HealthResponse:
        """The supervisor's own liveness (no auth)."""
        return HealthResponse(status="ok")

    api = APIRouter(dependencies=[Depends(auth)], tags=["models"])
    _read_routes(api, supervisor)
    _action_routes(api, supervisor, rate_limiter or ActionRateLimiter())
    _log_routes(api, supervisor)
    app.include_router(api, prefix="/api/llm")
    # FluidMCP's documented paths (/llm/models/...): the same routes, auth and answers; out of the schema.
    app.include_router(api, prefix="/llm", include_in_schema=False)

    app.include_router(ops_router(supervisor), dependencies=[Depends(auth)])  # POST /api/reload

    app.include_router(health_router(supervisor), dependencies=[Depends(auth)])  # /api/status, diagnostics, heal

    @app.get(
        "/metrics",
        response_class=Response,
        dependencies=[Depends(auth)],
        tags=["supervisor"],
        responses={**_AUTH, 200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def get_metrics() -> Response:
        """Prometheus metrics (docs/design/contract.md section 5)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The status page's shell; its data comes from the (authenticated) API."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _status_of(supervisor: SupervisorFacade, model_id: str) -> ModelStatus:
    try:
        return supervisor.status(model_id)
    except KeyError:
        known = ", ".join(supervisor.model_ids()) or "none"
        raise HTTPException(404, f"unknown model '{model_id}' (configured: {known})") from None


def _log_unit(supervisor: SupervisorFacade, model_id: str, replica: int) -> str:
    """The log a replica writes to; 404 for a replica the model does not have."""
    replicas = len(_status_of(supervisor, model_id).replicas) or 1
    if replica >= replicas:
        raise HTTPException(404, f"model '{model_id}' has no replica {replica}")
    return unit_name(model_id, replica)


def _read_routes(api: APIRouter, supervisor: SupervisorFacade) -> None:
    @api.get("/models", response_model=ModelList, responses=_AUTH)
    async def list_models() -> ModelList:
        """Every configured model's status."""
        models = [ModelStatusOut.model_validate(s) for s in supervisor.statuses()]
        return ModelList(models=models, total=len(models))

    @api.get("/models/{model_id}", response_model=ModelStatusOut, responses=_MODEL)
    async def get_model(model_id: ModelId) -> ModelStatusOut:
        """One model's status."""
        return ModelStatusOut.model_validate(_status_of(supervisor, model_id))

    @api.get("/models/{model_id}/events", response_model=list[EventOut], responses=_MODEL)
    async def get_events(
        model_id: ModelId,
        since: Annotated[int, Query(ge=0, le=SEQ_MAX, description="Only events with a larger seq")] = 0,
        limit: Annotated[int | None, Query(ge=1, le=MAX_LOG_LINES, description="At most this many, the newest")] = None,
    ) -> list[EventOut]:
        """The model's timeline, oldest first."""
        _status_of(supervisor, model_id)
        events = supervisor.events(model_id, since, limit)
        return [EventOut.model_validate(e) for e in events]

    @api.post("/models/{model_id}/health-check", response_model=HealthCheckResponse, responses=_MODEL)
    async def health_check(model_id: ModelId) -> HealthCheckResponse:
        """Run one health probe now and report it (the only endpoint that probes)."""
        _status_of(supervisor, model_id)
        try:
            report = await supervisor.health_check(model_id)
        except KeyError:
            raise HTTPException(404, f"unknown model '{model_id}'") from None
        return HealthCheckResponse.model_validate(report)


def _action_routes(api: APIRouter, supervisor: SupervisorFacade, limiter: ActionRateLimiter) -> None:
    async def act(
        model_id: str, action: Callable[[], Awaitable[ActionResult]], *, limited: bool = True
    ) -> ActionResponse:
        _status_of(supervisor, model_id)
        wait = limiter.check(model_id) if limited else None  # stop is never limited (contract section 10)
        if wait is not None:
            raise HTTPException(
                429,
                f"more than {limiter.limit} start/restart requests for '{model_id}' in "
                f"{limiter.window:g} s; retry in {wait:.0f} s",
                {"Retry-After": limiter.retry_after_header(wait)},
            )
        try:
            result = await action()
        except KeyError as exc:  # no such replica, or the model was removed between the check and the call
            if limited:
                limiter.refund(model_id)
            raise HTTPException(404, str(exc)) from None
        if limited and not (result.accepted and result.changed):
            limiter.refund(model_id)  # a refused or no-op action does not count
        if not result.accepted:
            raise HTTPException(409, result.message)
        return ActionResponse(
            message=result.message,
            accepted=True,
            restart_count=result.status.restart_count,
            uptime_seconds=result.status.uptime_seconds,
            status=ModelStatusOut.model_validate(result.status),
        )

    @api.post("/models/{model_id}/start", response_model=ActionResponse, responses=_ACTION)
    async def start_model(model_id: ModelId) -> ActionResponse:
        """Set the desired state to running; a `failed` model gets a fresh restart budget."""
        return await act(model_id, lambda: supervisor.start_model(model_id))

    @api.post("/models/{model_id}/stop", response_model=ActionResponse, responses=_ACTION)
    async def stop_model(
        model_id: ModelId,
        force: Annotated[bool, Query(description="SIGKILL the group at once instead of SIGTERM first")] = False,
    ) -> ActionResponse:
        """Set the desired state to stopped; no restart policy restarts it until `start`."""
        return await act(model_id, lambda: supervisor.stop_model(model_id, force=force), limited=False)

    @api.post("/models/{model_id}/restart", response_model=ActionResponse, responses=_RESTART)
    async def restart_model(
        model_id: ModelId,
        replica: Annotated[int | None, Query(ge=0, description="Restart only this replica")] = None,
        rolling: Annotated[
            bool, Query(description="One replica at a time, each out of the gateway's routing until healthy")
        ] = False,
    ) -> ActionResponse:
        """Stop the current run (if any) and start a new one now, backoff or not."""
        if rolling and replica is not None:
            raise HTTPException(400, "give either replica or rolling=true, not both")
        return await act(model_id, lambda: supervisor.restart_model(model_id, replica=replica, rolling=rolling))


def _log_routes(api: APIRouter, supervisor: SupervisorFacade) -> None:
    @api.get("/models/{model_id}/logs", response_model=LogsResponse, responses=_MODEL)
    async def get_logs(
        model_id: ModelId,
        lines: Annotated[int, Query(ge=1, le=MAX_LOG_LINES, description="How many of the newest lines")] = 100,
        replica: ReplicaIndex = 0,
    ) -> LogsResponse:
        """The newest lines of stdout and stderr (one file, in order), across rotated files and runs."""
        unit = _log_unit(supervisor, model_id, replica)
        result = await logs.read_tail(supervisor.log_dir(), unit, lines)
        return LogsResponse(
            model_id=model_id,
            lines=list(result.lines),
            total_lines=result.total_lines,
            returned_lines=len(result.lines),
        )

    @api.get(
        "/models/{model_id}/logs/stream",
        response_class=StreamingResponse,
        responses={**_MODEL, 200: {"content": {"text/plain": {}}, "description": "One log line per line"}},
    )
    async def stream_logs(
        model_id: ModelId,
        lines: Annotated[int, Query(ge=0, le=MAX_LOG_LINES, description="Newest lines to send first")] = 10,
        replica: ReplicaIndex = 0,
    ) -> StreamingResponse:
        """The newest `lines` lines, then every new line as it is written, until the client disconnects."""
        unit = _log_unit(supervisor, model_id, replica)
        log_dir = supervisor.log_dir()

        async def body() -> AsyncIterator[str]:
            # The follower starts exactly where the tail ended, so no line is lost or sent twice.
            shown = await logs.read_tail(log_dir, unit, lines)
            for line in shown.lines:
                yield line + "\n"
            async for line in logs.follow(log_dir, unit, start=shown.position):
                yield line + "\n"

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")
