"""The names a model's servers answer to (their `/v1/models` ids), learnt from the servers themselves.

A client may name a model by its id in the config or by a name its servers list; the gateway forwards with
the servers' own name, because vLLM refuses any other. Names are fetched when a replica becomes healthy and,
failing that, from the replica a request is about to use.
"""

from __future__ import annotations

import json
import logging

from supervisor.gateway.upstream import BrokenBody, NoResponse, Pool

log = logging.getLogger(__name__)


class ServedNames:
    def __init__(self) -> None:
        self._by_model: dict[str, tuple[str, ...]] = {}

    def model_for(self, name: str) -> str | None:
        """The model whose servers answer to `name`."""
        return next((model_id for model_id, names in self._by_model.items() if name in names), None)

    def first(self, model_id: str) -> str | None:
        names = self._by_model.get(model_id)
        return names[0] if names else None

    def forget(self, model_id: str) -> None:
        """A reload removed or replaced the model: its servers' names are no longer known to be its."""
        self._by_model.pop(model_id, None)

    async def learn(self, model_id: str, pool: Pool) -> str | None:
        """Ask one server of the model for its names; the first one, or None when it could not say."""
        try:
            answer = await pool.request("GET", "/v1/models", [(b"host", pool.host.encode())], b"")
            body = await answer.read()
        except (NoResponse, BrokenBody) as exc:
            log.debug("%s: could not read served names: %s", model_id, exc)
            return None
        names = _ids(body) if answer.status == 200 else ()
        if names:
            self._by_model[model_id] = names
        return names[0] if names else None


def _ids(body: bytes) -> tuple[str, ...]:
    try:
        data = json.loads(body)
        return tuple(str(entry["id"]) for entry in data["data"])
    except (ValueError, KeyError, TypeError):
        return ()
