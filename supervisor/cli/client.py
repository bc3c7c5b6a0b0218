"""A small synchronous client of the management API, used by the CLI's client subcommands.

Errors form one tree so the CLI can map them onto its exit codes (docs/design/contract.md section 3):

    ClientError
    ├── Unreachable   no answer from the daemon (connection refused, timeout)   -> exit 3
    ├── UsageError    the request itself is wrong (401, 404, 422)                -> exit 2
    └── Refused       the daemon refused the operation (409, 429, 5xx)           -> exit 1
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8099"


class ClientError(Exception):
    """Base of the client's errors; str() is a sentence for the operator.

    `status` is the HTTP status when the daemon answered; `problems` each problem it listed (a 422 of a reload
    lists every one), else empty.
    """

    def __init__(self, message: str, status: int | None = None, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.problems = tuple(problems)


class Unreachable(ClientError):
    pass


class UsageError(ClientError):
    pass


class Refused(ClientError):
    pass


def _problems(response: httpx.Response) -> list[str]:
    """Each problem the answer names: its `problems` list (a reload's 422), else its `detail`: FastAPI's 422 list
    of {loc, msg}, a list of sentences, or one."""
    try:
        body = response.json()
        detail, listed = body.get("detail"), body.get("problems")
    except (ValueError, AttributeError):
        detail = listed = None
    if isinstance(listed, list) and listed:
        return [str(p) for p in listed]
    if isinstance(detail, list):
        return [
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" if isinstance(d, dict) else str(d) for d in detail
        ]
    if detail:
        return [str(detail)]
    return [response.text.strip() or response.reason_phrase]


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
        code, problems = response.status_code, _problems(response)
        reason = f"{code}: {'; '.join(problems)}"
        if code == 401:
            raise UsageError(f"{reason} (set the token's environment variable, see --token-env)", code, problems)
        if code in (404, 422):
            raise UsageError(reason, code, problems)
        if code == 429:
            raise Refused(f"{reason} (Retry-After: {response.headers.get('retry-after', '?')} s)", code, problems)
        raise Refused(reason, code, problems)

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

    def heal(self) -> dict[str, Any]:
        return dict(self._request("POST", "/api/heal"))

    def reload(self) -> dict[str, Any]:
        return dict(self._request("POST", "/api/reload"))

    def optional(self, path: str) -> Any | None:
        """GET `path`; None when the daemon answers 404 (an older daemon without that endpoint)."""
        try:
            return self._request("GET", path)
        except UsageError as exc:
            if exc.status == 404:
                return None
            raise

    def metrics_text(self) -> str | None:
        """The Prometheus text of /metrics; None when the daemon has no such endpoint."""
        try:
            response = self._http.get("/metrics")
        except httpx.TransportError as exc:
            raise Unreachable(f"no answer from {self.url}: {exc}") from exc
        if response.status_code == 404:
            return None
        self._check(response)
        return response.text

    def follow_events(
        self,
        model_id: str,
        since: int = 0,
        limit: int | None = None,
        interval: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[dict[str, Any]]:
        """Yield the model's events (as `events` would), then each new one, polling `?since=` the last seq seen."""
        batch = self.events(model_id, since, limit)
        while True:
            for event in batch:
                since = max(since, int(event["seq"]))
                yield event
            sleep(interval)
            batch = self.events(model_id, since)

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
