"""A small synchronous client of the management API, used by the CLI's client subcommands.

Errors form one tree so the CLI can map them onto its exit codes (docs/design/contract.md section 3):

    ClientError
    ├── Unreachable   no answer from the daemon (connection refused, timeout)   -> exit 3
    ├── UsageError    the request itself is wrong (401, 404, 422)                -> exit 2
    └── Refused       the daemon refused the operation (409, 429, 5xx)           -> exit 1
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8099"


class ClientError(Exception):
    """Base of the client's errors; str() is a sentence for the operator."""


class Unreachable(ClientError):
    pass


class UsageError(ClientError):
    pass


class Refused(ClientError):
    pass


def _reason(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # FastAPI's 422: a list of {loc, msg}
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail) if detail else response.text.strip() or response.reason_phrase


class SupervisorClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SupervisorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        reason = f"{response.status_code}: {_reason(response)}"
        if response.status_code == 401:
            raise UsageError(f"{reason} (set the token's environment variable, see --token-env)")
        if response.status_code in (404, 422):
            raise UsageError(reason)
        if response.status_code == 429:
            raise Refused(f"{reason} (Retry-After: {response.headers.get('retry-after', '?')} s)")
        raise Refused(reason)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"no answer from {self.url}: {exc}") from exc
        self._check(response)
        return response.json()

    def models(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/llm/models"))

    def model(self, model_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/llm/models/{model_id}"))

    def start(self, model_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/llm/models/{model_id}/start"))

    def stop(self, model_id: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true" if force else "false"}
        return dict(self._request("POST", f"/api/llm/models/{model_id}/stop", params=params))

    def restart(self, model_id: str, replica: int | None = None, rolling: bool = False) -> dict[str, Any]:
        params: dict[str, str | int] = {"rolling": "true"} if rolling else {}
        if replica is not None:
            params["replica"] = replica
        return dict(self._request("POST", f"/api/llm/models/{model_id}/restart", params=params))

    def logs(self, model_id: str, lines: int, replica: int = 0) -> dict[str, Any]:
        params = {"lines": lines, "replica": replica}
        return dict(self._request("GET", f"/api/llm/models/{model_id}/logs", params=params))

    def events(self, model_id: str, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, int] = {"since": since}
        if limit is not None:
            params["limit"] = limit
        return list(self._request("GET", f"/api/llm/models/{model_id}/events", params=params))

    def follow_logs(self, model_id: str, lines: int, replica: int = 0) -> Iterator[str]:
        """Yield the newest `lines` lines and then each new one, until the server closes the stream."""
        path = f"/api/llm/models/{model_id}/logs/stream"
        try:
            # No read timeout: a quiet model may write nothing for hours.
            with self._http.stream(
                "GET", path, params={"lines": lines, "replica": replica}, timeout=httpx.Timeout(10.0, read=None)
            ) as response:
                if not response.is_success:
                    response.read()
                    self._check(response)
                yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise Unreachable(f"stream from {self.url} broke: {exc}") from exc
