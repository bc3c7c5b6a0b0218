"""The routes of the fake: vLLM's endpoints plus ``/admin/faults`` and ``/admin/stats``.

Unknown paths and methods answer like FastAPI (``{"detail": "Not Found"}``, 405). With ``--api-key``,
``/v1/...`` paths need ``Authorization: Bearer KEY`` (401 ``{"error": "Unauthorized"}``), like vLLM.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable

from fake_vllm import faults, openai_api
from fake_vllm.httpserver import Request, Response, StreamResponse
from fake_vllm.openai_api import dumps
from fake_vllm.runtime import Runtime
from fake_vllm.settings import VLLM_VERSION

Route = Callable[[Runtime, Request], Awaitable[Response | StreamResponse]]


async def health(rt: Runtime, _request: Request) -> Response:
    """200 with an empty body; 503 once the engine is dead or when a flap is drawn."""
    if rt.is_engine_dead:
        return Response(503, content_type=None)
    if rt.dice.health_fails(rt.faults.health_flap):
        rt.stats.injected_health_failures += 1
        return Response(503, content_type=None)
    return Response(200, content_type=None)


async def models(rt: Runtime, _request: Request) -> Response:
    """vLLM's model list, one entry per served name."""
    created = int(rt.started_at)
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": rt.settings.model,
            "parent": None,
            "max_model_len": rt.settings.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{os.urandom(16).hex()}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        for name in rt.settings.served_model_names
    ]
    return Response(200, dumps({"object": "list", "data": data}))


async def version(_rt: Runtime, _request: Request) -> Response:
    """``{"version": ...}``."""
    return Response(200, dumps({"version": VLLM_VERSION}))


async def ping(rt: Runtime, request: Request) -> Response:
    """SageMaker-style liveness: like /health."""
    return await health(rt, request)


async def metrics(rt: Runtime, _request: Request) -> Response:
    """Prometheus text."""
    return Response(200, rt.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")


async def completions(rt: Runtime, request: Request) -> Response | StreamResponse:
    """POST /v1/completions."""
    return await openai_api.respond(rt, request, chat=False, done=rt.on_inference_answered)


async def chat_completions(rt: Runtime, request: Request) -> Response | StreamResponse:
    """POST /v1/chat/completions."""
    return await openai_api.respond(rt, request, chat=True, done=rt.on_inference_answered)


async def get_faults(rt: Runtime, _request: Request) -> Response:
    """Every fault as set now."""
    return Response(200, dumps(rt.faults_view()))


async def post_faults(rt: Runtime, request: Request) -> Response:
    """Change faults; all keys are validated before any is applied (400 names the bad key)."""
    try:
        update = faults.parse_update(json.loads(request.body or b"null"))
    except json.JSONDecodeError as exc:
        return Response(400, dumps({"detail": f"body is not JSON: {exc}", "key": None}))
    except faults.FaultValueError as exc:
        return Response(400, dumps({"detail": str(exc), "key": exc.key}))
    rt.apply(update)
    return Response(200, dumps(rt.faults_view()))


async def stats(rt: Runtime, _request: Request) -> Response:
    """Request counters and fault events."""
    return Response(200, dumps({**rt.stats_view(), "time": time.time()}))


# path -> (kind for /admin/stats, {method: route})
ROUTES: dict[str, tuple[str, dict[str, Route]]] = {
    "/health": ("health", {"GET": health}),
    "/ping": ("ping", {"GET": ping, "POST": ping}),
    "/version": ("version", {"GET": version}),
    "/metrics": ("metrics", {"GET": metrics}),
    "/v1/models": ("models", {"GET": models}),
    "/v1/completions": ("completions", {"POST": completions}),
    "/v1/chat/completions": ("chat_completions", {"POST": chat_completions}),
    "/admin/faults": ("admin", {"GET": get_faults, "POST": post_faults}),
    "/admin/stats": ("admin", {"GET": stats}),
}


def _authorized(rt: Runtime, request: Request) -> bool:
    if not rt.settings.api_keys or not request.path.startswith("/v1"):
        return True
    given = request.headers.get("authorization", "")
    return any(hmac.compare_digest(given, f"Bearer {key}") for key in rt.settings.api_keys)


def make_handler(rt: Runtime) -> Callable[[Request], Awaitable[Response | StreamResponse]]:
    """The HTTP handler: routing, auth and counting."""

    async def handle(request: Request) -> Response | StreamResponse:
        kind, methods = ROUTES.get(request.path, ("other", {}))
        if not methods:
            response: Response | StreamResponse = Response(404, dumps({"detail": "Not Found"}))
        elif request.method not in methods:
            response = Response(405, dumps({"detail": "Method Not Allowed"}), headers=[("allow", ", ".join(methods))])
        elif not _authorized(rt, request):
            response = Response(401, dumps({"error": "Unauthorized"}))
        else:
            response = await methods[request.method](rt, request)
        rt.stats.count(kind, response.status)
        return response

    return handle
