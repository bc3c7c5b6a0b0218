"""The gateway's config: its section, replicas with their ports, fallbacks, progress and inference probes."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.config.schema import ConfigError, parse_config

REPLICATED = {
    "command": "vllm",
    "args": ["serve", "qwen", "--port", "{port}"],
    "replicas": 2,
    "ports": [8001, 8002],
    "endpoints": {"base_url": "http://127.0.0.1:{port}/v1"},
}


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "test")
    return caught.value.problems


def test_no_gateway_section_means_no_gateway_and_one_replica() -> None:
    """A config without `gateway` has none; every model is one replica with no fallback or stall watch."""
    config = parse_config({"llmModels": {"m": {"command": "vllm"}}}, "t")
    model = config.models["m"]
    assert config.supervisor.gateway is None
    assert (model.replicas, model.ports, model.fallback, model.progress_timeout, model.inference_probe) == (
        1,
        (),
        None,
        None,
        None,
    )
    assert model.replica(0) is model


def test_gateway_defaults() -> None:
    """An empty gateway section listens on 127.0.0.1:8000, holds 120 s, tries 3 times, drains 60 s."""
    gateway = parse_config({"supervisor": {"gateway": {}}, "llmModels": {}}, "t").supervisor.gateway
    assert gateway is not None
    assert (gateway.host, gateway.port, gateway.api_key_env) == ("127.0.0.1", 8000, None)
    assert (gateway.hold_timeout, gateway.max_attempts, gateway.drain_timeout) == (120.0, 3, 60.0)


def test_each_replica_gets_its_port_in_args_and_base_url() -> None:
    """`{port}` becomes the replica's own port; the replica is one server with that one port."""
    model = parse_config({"llmModels": {"q": REPLICATED}}, "t").models["q"]
    second = model.replica(1)
    assert second.args == ("serve", "qwen", "--port", "8002")
    assert second.endpoints.base_url == "http://127.0.0.1:8002/v1"
    assert (second.replicas, second.ports, second.probe_root_url) == (1, (8002,), "http://127.0.0.1:8002")
    assert model.replica(0).args[-1] == "8001"


def test_inference_probe_defaults_and_values() -> None:
    """inference_probe: {} probes every 30 s with a 10 s timeout; given values are kept."""
    model = parse_config({"llmModels": {"m": {"command": "v", "inference_probe": {}}}}, "t").models["m"]
    assert model.inference_probe is not None
    assert (model.inference_probe.interval, model.inference_probe.timeout) == (30.0, 10.0)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"ports": [8001]}, "llmModels.q: ports: give one port per replica (2), got 1"),
        ({"ports": [8001, 8001]}, "llmModels.q: ports: each replica needs its own port"),
        ({"ports": [], "replicas": 1}, 'llmModels.q: "{port}" appears in args or endpoints.base_url'),
        (
            {"args": ["serve"], "endpoints": {"base_url": "http://127.0.0.1:8001/v1"}},
            'llmModels.q: replicas > 1 need "{port}"',
        ),
        ({"replicas": 0}, "llmModels.q.replicas: must be >= 1 (got 0)"),
        ({"ports": [8001, 70000]}, "llmModels.q.ports[1]: must be <= 65535 (got 70000)"),
        ({"fallback": "q"}, "llmModels.q.fallback: a model cannot fall back to itself"),
        ({"fallback": "qwen-tiny"}, "llmModels.q.fallback: no model 'qwen-tiny' is configured"),
        ({"progress_timeout": 0}, "llmModels.q.progress_timeout: must be > 0 (got 0)"),
        ({"inference_probe": {"intervl": 5}}, "llmModels.q.inference_probe.intervl: unknown key"),
    ],
)
def test_bad_replica_and_gateway_values_name_their_path(keys: dict[str, Any], problem: str) -> None:
    """Each mistake is reported with its key path and what to do."""
    problems = problems_of({"llmModels": {"q": {**REPLICATED, **keys}}})
    assert any(p.startswith(problem) for p in problems), problems


def test_an_unknown_fallback_suggests_the_model_meant() -> None:
    """A misspelt fallback names the configured model it was probably meant to be."""
    models = {"q": {**REPLICATED, "fallback": "qwen-tyni"}, "qwen-tiny": {"command": "vllm"}}
    assert problems_of({"llmModels": models}) == [
        "llmModels.q.fallback: no model 'qwen-tyni' is configured (did you mean qwen-tiny?)"
    ]


def test_two_models_cannot_share_a_replica_port() -> None:
    """A replica on another model's server is refused like two models on one port."""
    other = {"command": "vllm", "endpoints": {"base_url": "http://127.0.0.1:8002/v1"}}
    problems = problems_of({"llmModels": {"q": REPLICATED, "other": other}})
    assert problems == [
        "llmModels.other.endpoints.base_url: the same server as llmModels.q (http://127.0.0.1:8002); "
        "each model needs its own port"
    ]


@pytest.mark.parametrize(
    ("gateway", "problem"),
    [
        ({"port": 70000}, "supervisor.gateway.port: must be <= 65535 (got 70000)"),
        ({"max_attempts": 0}, "supervisor.gateway.max_attempts: must be >= 1 (got 0)"),
        ({"hold_timeout": -1}, "supervisor.gateway.hold_timeout: must be > 0 (got -1)"),
        ({"api_key": "x"}, "supervisor.gateway.api_key: unknown key (did you mean api_key_env?)"),
    ],
)
def test_bad_gateway_values_name_their_path(gateway: dict[str, Any], problem: str) -> None:
    """The gateway section is checked like every other: the path, the rule, the value."""
    assert problems_of({"supervisor": {"gateway": gateway}, "llmModels": {}}) == [problem]
