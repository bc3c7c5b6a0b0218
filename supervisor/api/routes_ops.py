"""Operating the supervisor as a whole: `POST /api/reload` (docs/design/contract.md section 10).

The reload re-reads the config file the daemon was started with and applies it without touching models
whose settings are unchanged; `supervisor.loop.fleet.Fleet.reload` does the work, this module only says it in
HTTP. A file that does not validate changes nothing and answers 422 listing every problem.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from supervisor.api.facade import SupervisorFacade
from supervisor.api.schemas import ErrorDetail
from supervisor.config.reload_plan import ReloadRefused
from supervisor.config.schema import ConfigError


class ReloadResponse(BaseModel):
    added: list[str] = Field(description="Models that are new in the file: started (unless stopped before)")
    removed: list[str] = Field(description="Models no longer in the file: stopped, whole process groups")
    restarted: list[str] = Field(
        description="Models whose settings changed: restarted on the new ones (several replicas: one at a time, "
        "finishing after this answer)"
    )
    unchanged: list[str] = Field(description="Models whose settings are the same: not touched (same pids)")
    needs_restart: list[str] = Field(
        description="supervisor keys that changed but apply only when the supervisor restarts "
        "(e.g. supervisor.api.port); the running values stay"
    )


class ConfigProblems(BaseModel):
    detail: str = Field(description="The file and every problem found, one per line")
    problems: list[str] = Field(description="Every problem, each naming its key path")


def ops_router(supervisor: SupervisorFacade) -> APIRouter:
    """The routes; the app includes them under its bearer auth."""
    router = APIRouter(prefix="/api", tags=["supervisor"])

    @router.post(
        "/reload",
        response_model=ReloadResponse,
        responses={
            401: {"model": ErrorDetail, "description": "Missing, malformed or wrong bearer token"},
            409: {"model": ErrorDetail, "description": "No config file to re-read, or the supervisor is stopping"},
            422: {"model": ConfigProblems, "description": "The file does not validate; nothing changed"},
        },
    )
    async def reload() -> Any:
        """Re-read the config file: start new models, stop removed ones, restart changed ones; leave the rest."""
        try:
            plan = await supervisor.reload()
        except ConfigError as exc:
            return JSONResponse(ConfigProblems(detail=str(exc), problems=exc.problems).model_dump(), status_code=422)
        except ReloadRefused as exc:
            return JSONResponse(ErrorDetail(detail=str(exc)).model_dump(), status_code=409)
        return ReloadResponse(
            added=list(plan.added),
            removed=list(plan.removed),
            restarted=list(plan.restarted),
            unchanged=list(plan.unchanged),
            needs_restart=list(plan.needs_restart),
        )

    return router
