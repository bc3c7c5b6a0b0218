"""Bearer-token auth for the management API (docs/design/contract.md section 4).

The token comes from the environment variable named by `supervisor.token_env`, read once at start-up.
Unset or empty: no auth (and `llm-supervisor run` then refuses to bind anything but loopback). Set: every
`/api/...` path and `/metrics` need `Authorization: Bearer <token>`, compared in constant time; `/health`
and the status page's static shell stay open so a load balancer and a browser can reach them.

FluidMCP's switches work unchanged (docs/fluidmcp.md): with `FMCP_SECURE_MODE=true` the token is
`FMCP_BEARER_TOKEN` unless `token_env` names a set variable, and secure mode without any token is refused
rather than left open.
"""

from __future__ import annotations

import hmac
import os
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="The token in the supervisor's token_env variable")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


FMCP_SECURE_MODE = "FMCP_SECURE_MODE"
FMCP_BEARER_TOKEN = "FMCP_BEARER_TOKEN"  # noqa: S105 (a variable's name, not a secret)
_TRUE = frozenset({"1", "true", "yes", "on"})


class InsecureModeError(ValueError):
    """FMCP_SECURE_MODE asks for authentication but no token is set anywhere."""


def token_from_env(env_name: str) -> str | None:
    """The configured token, or None when the variable is unset or empty (an empty token is no token)."""
    value = os.environ.get(env_name, "")
    return value or None


def secure_mode() -> bool:
    """FluidMCP's FMCP_SECURE_MODE switch (true/1/yes/on, any case)."""
    return os.environ.get(FMCP_SECURE_MODE, "").strip().lower() in _TRUE


def api_token(env_name: str) -> str | None:
    """The management API's token: `$env_name` when set; else, in FluidMCP's secure mode, `$FMCP_BEARER_TOKEN`.

    Raises InsecureModeError when secure mode is on and neither is set: FluidMCP users who asked for auth must
    not get an open API."""
    token = token_from_env(env_name)
    if token is not None or not secure_mode():
        return token
    token = token_from_env(FMCP_BEARER_TOKEN)
    if token is None:
        raise InsecureModeError(
            f"{FMCP_SECURE_MODE}=true but no token is set: set ${FMCP_BEARER_TOKEN} (or ${env_name}) to a secret, "
            f"or unset {FMCP_SECURE_MODE}"
        )
    return token


class BearerAuth:
    """A FastAPI dependency: passes with the right token, raises 401 with the reason otherwise."""

    def __init__(self, token: str | None, env_name: str) -> None:
        self._token = token.encode() if token else None
        # Where the operator should look: FMCP_BEARER_TOKEN when secure mode supplied it.
        self._env_name = env_name if token_from_env(env_name) or not secure_mode() else FMCP_BEARER_TOKEN

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if self._token is None:
            return
        if credentials is None:
            # HTTPBearer gives None for a missing header and for one that is not "Bearer <x>": tell them apart.
            if request.headers.get("authorization"):
                raise HTTPException(401, "malformed Authorization header: expected 'Bearer <token>'", _CHALLENGE)
            raise HTTPException(
                401,
                f"missing bearer token: send 'Authorization: Bearer <token>' (the server reads it from "
                f"${self._env_name})",
                _CHALLENGE,
            )
        if not hmac.compare_digest(credentials.credentials.encode(), self._token):
            raise HTTPException(401, "invalid bearer token", _CHALLENGE)
