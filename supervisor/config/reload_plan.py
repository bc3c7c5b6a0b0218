"""What a reload changes: the running config against the re-read one, as a plan. Pure: no I/O, no clock.

A model whose settings are equal keeps running untouched; one that is new starts, one that is gone stops, and
one whose settings differ in any key restarts. The `supervisor:` section is not applied live (the API's socket,
the state directory and its lock, the token, the gateway's listener are all opened once at start-up): each key
that differs is named in `needs_restart`, and the supervisor keeps its running values until a full restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supervisor.config.schema import Config


class ReloadRefused(Exception):
    """A reload cannot be done now (no config file to read, or the supervisor is shutting down)."""


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()  # key paths under `supervisor:` that only a full restart applies

    @property
    def changes_models(self) -> bool:
        return bool(self.added or self.removed or self.restarted)


def plan_reload(running: Config, wanted: Config) -> ReloadPlan:
    """Compare the config the fleet runs with the one just read; model ids keep the new file's order."""
    old, new = running.models, wanted.models
    return ReloadPlan(
        added=tuple(m for m in new if m not in old),
        removed=tuple(m for m in old if m not in new),
        restarted=tuple(m for m in new if m in old and old[m] != new[m]),
        unchanged=tuple(m for m in new if m in old and old[m] == new[m]),
        needs_restart=tuple(
            _differences(
                running.supervisor.model_dump(mode="json"), wanted.supervisor.model_dump(mode="json"), "supervisor"
            )
        ),
    )


def applied_config(running: Config, wanted: Config) -> Config:
    """What the fleet runs after the reload: the new models under the supervisor settings it started with."""
    return running.model_copy(update={"models": dict(wanted.models)})


def _differences(old: Any, new: Any, path: str) -> list[str]:
    """The key paths where two JSON-like values differ, down to the first key that is not a mapping on both
    sides (`supervisor.api.port`; `supervisor.gateway` when the section was added or removed)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in [*old, *(k for k in new if k not in old)]:
            found += _differences(old.get(key), new.get(key), f"{path}.{key}")
        return found
    return [] if old == new else [path]
