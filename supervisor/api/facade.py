"""What the management plane (API, metrics) needs from the supervisor, written down as Protocols.

`supervisor.loop.fleet.Fleet` satisfies `SupervisorFacade`; tests hand the API a small fake through
the same seam. Reads (`status`, `statuses`, `events`, `model_ids`, `log_dir`) are pure: they never probe
and never move a counter (docs/design/defects.md #6). Actions go to the model's owner task, which serializes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from supervisor.config.reload_plan import ReloadPlan
from supervisor.core.views import ActionResult, HealthCheckReport, ModelStatus, TimelineEvent
from supervisor.loop.model import SupervisedModel
from supervisor.loop.observer import Observer


class TokenSettings(Protocol):
    """The part of `config.supervisor` the API reads."""

    @property
    def token_env(self) -> str: ...


class ConfigView(Protocol):
    @property
    def supervisor(self) -> TokenSettings: ...


class SupervisorFacade(Protocol):
    """Per-model methods raise a KeyError subclass (`UnknownModel`) for an id that is not configured."""

    @property
    def config(self) -> ConfigView: ...

    def model_ids(self) -> list[str]: ...

    def status(self, model_id: str) -> ModelStatus: ...

    def statuses(self) -> list[ModelStatus]: ...

    def events(self, model_id: str, since: int = 0, limit: int | None = None) -> list[TimelineEvent]: ...

    async def start_model(self, model_id: str) -> ActionResult: ...

    async def stop_model(self, model_id: str, force: bool = False) -> ActionResult: ...

    async def restart_model(self, model_id: str, replica: int | None = None, rolling: bool = False) -> ActionResult: ...

    async def health_check(self, model_id: str) -> HealthCheckReport: ...

    async def reload(self) -> ReloadPlan:
        """Re-read the config file; raises ConfigError (nothing changed) or ReloadRefused."""
        ...

    def log_dir(self) -> Path: ...

    def models(self) -> Mapping[str, SupervisedModel]:
        """Every supervised model by id, with its replicas' owners (diagnostics and heal read them)."""
        ...

    @property
    def instance(self) -> str:
        """This supervisor's name; every process of its runs carries it (LLM_SUPERVISOR_INSTANCE)."""
        ...

    @property
    def closing(self) -> bool:
        """The supervisor is shutting down: nothing may start a run any more."""
        ...

    def add_observer(self, observer: Observer) -> None: ...
