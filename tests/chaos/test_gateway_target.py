"""Scenarios with `load`, `requests` and `replicas`: validated strictly, and turned into a supervisor config with
the gateway on, each replica on its own port, and fault proxies that the gateway's requests cross too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos.scenario import ScenarioError, parse_scenario
from chaos.target import PROXY_ALIAS, build_config, plan_local
from supervisor.config.schema import parse_config


def scenario(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "s",
        "story": "a story",
        "target": {"models": {"m1": {"replicas": 2, "fake_vllm": ["--itl", "0.01"]}, "m2": {}}},
        "load": {"model": "m1", "concurrency": 2},
        "faults": [{"action": "kill", "target": {"model": "m1", "replica": 1}}],
        "expect": [{"requests": {"model": "m1", "failed_max": 0}}],
    }
    data.update(changes)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "x.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"load": {"model": "m1", "concurency": 2}}, "load.concurency: unknown key (did you mean concurrency?)"),
        (
            {"expect": [{"requests": {"model": "m1", "faild_max": 0}}]},
            "expect.0.requests.faild_max: unknown key (did you mean failed_max?)",
        ),
        (
            {"expect": [{"requests": {"model": "m1"}}]},
            "expect.0.requests: give failed_max, p99_max and/or fallback_min",
        ),
        ({"load": None}, "expect.0: requests are judged on the scenario's load"),
        ({"load": {"model": "m2"}}, "expect.0: requests of 'm1', but the load sends to 'm2'"),
        ({"load": {"model": "m3"}, "expect": [{"no_orphans": True}]}, "load: unknown model 'm3'"),
        ({"load": {"model": "m1", "stream": "sometimes"}}, "load.stream"),
        (
            {"faults": [{"action": "kill", "target": {"model": "m1", "replica": 2}}]},
            "faults.0: m1 has no replica 2 (it has 2, from 0)",
        ),
        (
            {"expect": [{"restarts": {"model": "m2", "replica": 1, "count": 1}}], "load": None},
            "expect.0: m2 has no replica 1 (it has 1, from 0)",
        ),
        (
            {"faults": [{"action": "api", "operation": "stop", "rolling": True, "target": {"model": "m1"}}]},
            "faults.0.api: rolling and target.replica go with operation: restart only",
        ),
        (
            {
                "faults": [
                    {"action": "api", "operation": "restart", "rolling": True, "target": {"model": "m1", "replica": 0}}
                ]
            },
            "faults.0.api: a rolling restart restarts every replica",
        ),
        ({"target": {"models": {"m1": {"replicas": 2, "fallback": "m9"}}}}, "target.models.m1.fallback: unknown model"),
        (
            {"target": {"models": {"m1": {"replicas": 2, "fallback": "m1"}}}},
            "target.models.m1.fallback: a model cannot",
        ),
        (
            {"target": {"models": {"m1": {"replicas": 2, "runtime": "docker"}}}},
            "target.models.m1: replicas: run as processes",
        ),
        (
            {"target": {"models": {"m1": {"replicas": 2}}, "gateway": {"hold_timeot": 1}}},
            "target.gateway.hold_timeot: unknown key (did you mean hold_timeout?)",
        ),
        ({"lod": {"model": "m1"}}, "lod: unknown key (did you mean load?)"),
        (
            {"faults": [{"action": "kill", "target": {"model": "m1", "replca": 1}}]},
            "faults.0.kill.target.replca: unknown key (did you mean replica?)",
        ),
        ({"faults": [{"action": "kill", "target": {"model": "m1"}, "zzz": 1}]}, "faults.0.kill.zzz: unknown key"),
    ],
)
def test_load_requests_and_replicas_are_checked_with_their_path(change: dict[str, Any], expected: str) -> None:
    found = problems(scenario(**change))
    assert any(p.startswith(expected) for p in found), found


def test_stream_both_and_a_rate_are_accepted() -> None:
    parsed = parse_scenario(scenario(load={"model": "m1", "stream": "both", "rate": 20, "kind": "chat"}))
    assert parsed.load is not None
    assert (parsed.load.stream, parsed.load.rate, parsed.load.kind) == ("both", 20.0, "chat")


def test_the_config_serves_the_gateway_and_gives_each_replica_its_port(tmp_path: Path) -> None:
    """Replicas: "{port}" in args and base_url, one port each; the gateway on its own free port; and the
    supervisor's own parser accepts the result."""
    data = scenario(target={**scenario()["target"], "gateway": {"hold_timeout": 2}})
    data["target"]["models"]["m1"]["fallback"] = "m2"
    data["target"]["models"]["m1"]["progress_timeout"] = 1.5
    spec = parse_scenario(data)
    plan = plan_local(spec, tmp_path / "run")
    config = build_config(spec, plan, seed=3)
    m1 = config["llmModels"]["m1"]
    assert m1["args"][:4] == ["serve", "m1", "--port", "{port}"]
    assert m1["endpoints"] == {"base_url": "http://127.0.0.1:{port}/v1"}
    assert m1["replicas"] == 2
    assert m1["ports"] == list(plan.server_ports["m1"])
    assert len(set(m1["ports"])) == 2
    assert (m1["fallback"], m1["progress_timeout"]) == ("m2", 1.5)
    assert "replicas" not in config["llmModels"]["m2"]
    gateway = config["supervisor"]["gateway"]
    assert gateway == {"host": "127.0.0.1", "port": plan.gateway_port, "hold_timeout": 2.0}
    assert plan.gateway_url == f"http://127.0.0.1:{plan.gateway_port}"
    parsed = parse_config(config, "generated")
    assert parsed.supervisor.gateway is not None
    assert parsed.models["m1"].replica(1).endpoints.base_url == f"http://127.0.0.1:{plan.server_ports['m1'][1]}/v1"


def test_no_load_no_gateway(tmp_path: Path) -> None:
    spec = parse_scenario(scenario(load=None, expect=[{"no_orphans": True}]))
    plan = plan_local(spec, tmp_path / "run")
    assert plan.gateway_port is None
    assert "gateway" not in build_config(spec, plan, seed=1)["supervisor"]


def test_a_proxied_replica_is_reached_through_the_alias_address(tmp_path: Path) -> None:
    """A net fault on a replicated model: every replica's base_url names 127.0.0.2 on the replica's port,
    where its proxy listens (forwarding to the server on 127.0.0.1), so probes and gateway cross the proxy."""
    net = {"action": "net", "target": {"model": "m1", "replica": 1}, "toxic": "blackhole", "for": 1}
    spec = parse_scenario(scenario(faults=[net]))
    plan = plan_local(spec, tmp_path / "run")
    m1 = build_config(spec, plan, seed=1)["llmModels"]["m1"]
    assert m1["endpoints"] == {"base_url": f"http://{PROXY_ALIAS}:{{port}}/v1"}
    assert m1["args"][2:4] == ["--port", "{port}"]
    assert plan.proxy_listen(("m1", 1)) == (PROXY_ALIAS, plan.server_ports["m1"][1])
    assert plan.units() == [("m1", 0), ("m1", 1), ("m2", 0)]


def test_a_proxied_single_server_keeps_its_own_proxy_port(tmp_path: Path) -> None:
    net = {"action": "net", "target": {"model": "m2"}, "toxic": "blackhole", "for": 1}
    spec = parse_scenario(scenario(faults=[net]))
    plan = plan_local(spec, tmp_path / "run")
    plan.proxy_ports[("m2", 0)] = 40001
    m2 = build_config(spec, plan, seed=1)["llmModels"]["m2"]
    assert m2["endpoints"] == {"base_url": "http://127.0.0.1:40001/v1"}
    assert m2["args"][2:4] == ["--port", str(plan.server_ports["m2"][0])]
    assert plan.proxy_listen(("m2", 0)) == ("127.0.0.1", 0)
