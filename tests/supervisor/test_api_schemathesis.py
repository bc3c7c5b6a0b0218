"""Schemathesis against /openapi.json: generated requests never get a 5xx and every answer matches the schema."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fakes import FakeSupervisor
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from supervisor.api.app import create_app

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
# The stream never ends by design (it follows the log), so a generated request would wait forever.
ENDLESS = r".*/logs/stream$"


# Schemathesis' lazy fixture loader breaks on pytest 9 (it reads Function._nodeid), so the app is built once
# per module; its log directory is a temporary one removed with the module.
_LOGS = tempfile.TemporaryDirectory(prefix="llm-supervisor-schemathesis-")
_APP = create_app(FakeSupervisor(["qwen", "llama"], Path(_LOGS.name)), token=None)
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP).exclude(path_regex=ENDLESS)


@pytest.fixture(autouse=True, scope="module")
def _remove_logs() -> Iterator[None]:
    yield
    _LOGS.cleanup()


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_conform(case: schemathesis.Case) -> None:
    """Any generated request (random ids, bad parameters) gets a documented, schema-valid, non-5xx answer."""
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_on_a_real_model_conform(case: schemathesis.Case) -> None:
    """The same with the id of a configured model, so the success paths are generated too."""
    if case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = "qwen"
    case.call_and_validate(checks=CHECKS)
