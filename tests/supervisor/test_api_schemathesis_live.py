"""Schemathesis against a live `llm-supervisor run`: real fake-vllm models, real HTTP on loopback, the bearer
token. Generated requests to every operation never get a 5xx, and every answer matches the schema.

test_api_schemathesis.py fuzzes the app over a fake supervisor object; this one fuzzes the real daemon, so the
answers come from real runs being stopped, started, restarted, healed and reloaded while it is fuzzed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from real_fleet import config_data, fake_model
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_cli_run import Daemon, daemon

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]
# The checks and the excluded endless stream are those of test_api_schemathesis.py.
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
ENDLESS = r".*/logs/stream$"
TOKEN = "live-schemathesis-token"  # a test token for a daemon on loopback
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODELS = ("qwen", "llama")
INT64_MAX = 2**63 - 1
EXAMPLES = 8  # per operation and per variant (random ids, then a configured model's id)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon with a token and two healthy fake-vllm models."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_data(tmp_path / "state", {m: fake_model() for m in MODELS})))
    with daemon(config, env={"LLM_SUPERVISOR_TOKEN": TOKEN}) as d:
        for model in MODELS:
            wait_healthy(d.url, model)
        yield d


def wait_healthy(url: str, model: str, within: float = 40.0) -> None:
    """Poll the model's status (with the token) until it is healthy."""
    deadline = time.monotonic() + within
    with httpx.Client(base_url=url, headers=AUTH, timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"/api/llm/models/{model}").json().get("state") == "healthy":
                    return
            time.sleep(0.05)
    pytest.fail(f"{model} not healthy within {within:g} s")


def _fuzz(cases: Any, mode: GenerationMode, statuses: Counter[tuple[GenerationMode, int]]) -> None:
    """Run EXAMPLES generated cases against the live daemon with the checks; count the answers by status."""

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=30)
        statuses[mode, response.status_code] += 1

    fuzz()


def test_generated_requests_to_a_live_supervisor_get_no_5xx(live: Daemon) -> None:
    """Every operation, fuzzed over real HTTP, answers documented, schema-valid, non-5xx; with the token (valid
    requests) it reaches the success paths, and schemathesis' negative cases (bad values, no token) are 4xx."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=AUTH).exclude(path_regex=ENDLESS)
    problems: list[str] = []
    statuses: Counter[tuple[GenerationMode, int]] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        names = {p.name for p in operation.iter_parameters()}
        fixed = {"model_id": MODELS[0]} if "model_id" in names else None
        variants: list[tuple[GenerationMode, dict[str, str] | None]] = [(GenerationMode.POSITIVE, None)]
        if fixed:
            variants.append((GenerationMode.POSITIVE, fixed))  # a configured model: its success paths
        if names:  # bad values of the parameters it has (one without any has nothing to break)
            variants.append((GenerationMode.NEGATIVE, fixed))
        for mode, path_parameters in variants:
            try:
                _fuzz(operation.as_strategy(mode, path_parameters=path_parameters), mode, statuses)
            except Exception as exc:  # every operation's failure is collected, then reported
                problems.append(f"{operation.label} {mode.value} {path_parameters or ''}: {exc}")
    assert operations >= 10, "the live schema lists the API's operations"
    assert not problems, "\n\n".join(problems)
    assert statuses[GenerationMode.POSITIVE, 200] > 0, f"success paths reached: {statuses}"
    assert statuses[GenerationMode.POSITIVE, 401] == 0, "every valid request carried the token"
    assert not [status for _, status in statuses if status >= 500]
    assert live.proc.poll() is None, "the daemon survived the fuzzing"


def test_since_beyond_64_bits_is_not_a_5xx(live: Daemon) -> None:
    """A `since` larger than any sequence number SQLite can hold is a 422 naming the parameter, not a 500."""
    url = f"{live.url}/api/llm/models/{MODELS[0]}/events"
    response = httpx.get(url, params={"since": INT64_MAX + 1}, headers=AUTH, timeout=10)
    assert response.status_code == 422, response.text
    assert "since" in response.text
    assert httpx.get(url, params={"since": INT64_MAX}, headers=AUTH, timeout=10).status_code == 200
