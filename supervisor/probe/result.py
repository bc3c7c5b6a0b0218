"""What a health probe reports, and where it asks: shared by the probe client and everything that reads results.

A probe asks the server root's `/health` (vLLM answers 200, or 503 once its engine is dead). A server
without `/health` (404) is asked `GET /v1/models` instead. The root is used even when the configured
base_url ends in `/v1`: probing `{base_url}/health` meant `/v1/health`, a 404 on vLLM, and every model
restart-looped (docs/design/defects.md #1).
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTH_PATH = "/health"
FALLBACK_PATH = "/v1/models"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe. `message` says why it failed, in words for an operator (None when ok)."""

    ok: bool
    message: str | None
    status_code: int | None
    duration: float
    url: str


def server_root(root_url: str) -> str:
    """The server root of a base URL: no trailing slash, no trailing `/v1`."""
    root = root_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root
