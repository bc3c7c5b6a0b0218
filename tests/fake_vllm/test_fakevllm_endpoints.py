"""vLLM's endpoints on a real fake-vllm process: shapes, errors, metrics, determinism."""

from __future__ import annotations

import asyncio
import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fake_vllm.testing import Spawn

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset({"engine": "0", "model_name": "m", **labels}.items()))]


def test_health_version_ping(spawn: Spawn) -> None:
    """/health is 200 with an empty body; /version and /ping answer like vLLM."""
    server = spawn()
    health = httpx.get(f"{server.base_url}/health")
    assert (health.status_code, health.content) == (200, b"")
    assert health.headers["server"] == "uvicorn"
    assert httpx.get(f"{server.base_url}/version").json() == {"version": "0.32.0"}
    assert httpx.get(f"{server.base_url}/ping").status_code == 200
    assert httpx.post(f"{server.base_url}/ping").status_code == 200


def test_models_shape_and_served_names(spawn: Spawn) -> None:
    """/v1/models lists every --served-model-name with vLLM's fields."""
    server = spawn("--served-model-name", "a", "b", "--max-model-len", "8k", model="org/real")
    body = httpx.get(f"{server.base_url}/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["a", "b"]
    entry = body["data"][0]
    assert entry["root"] == "org/real"
    assert entry["parent"] is None
    assert entry["owned_by"] == "vllm"
    assert entry["max_model_len"] == 8000
    assert entry["permission"][0]["object"] == "model_permission"


def test_metrics_parse_and_count_real_traffic(spawn: Spawn) -> None:
    """/metrics parses with prometheus_client and counts tokens, successes and latencies."""
    server = spawn("--ttft", "0.05", model="m")
    for _ in range(3):
        body = {"model": "m", "prompt": "one two three", "max_tokens": 4, "ignore_eos": True}
        assert httpx.post(f"{server.base_url}/v1/completions", json=body).status_code == 200
    text = httpx.get(f"{server.base_url}/metrics").text
    samples = _samples(text)
    assert _value(samples, "vllm:prompt_tokens_total") == 9
    assert _value(samples, "vllm:generation_tokens_total") == 12
    assert _value(samples, "vllm:request_success_total", finished_reason="length") == 3
    assert _value(samples, "vllm:num_requests_running") == 0
    assert _value(samples, "vllm:e2e_request_latency_seconds_count") == 3
    assert _value(samples, "vllm:time_to_first_token_seconds_count") == 3
    assert _value(samples, "vllm:time_to_first_token_seconds_sum") >= 0.15
    # 0.05 s TTFT lands in the le=0.06 bucket and above, never in le=0.04.
    assert _value(samples, "vllm:time_to_first_token_seconds_bucket", le="0.04") == 0
    assert _value(samples, "vllm:inter_token_latency_seconds_count") == 9
    assert {"vllm:kv_cache_usage_perc", "vllm:num_requests_waiting", "vllm:num_preemptions"} <= {
        f.name for f in text_string_to_metric_families(text)
    }


async def test_running_and_waiting_gauges_follow_max_num_seqs(spawn: Spawn) -> None:
    """With --max-num-seqs 2, four slow requests show 2 running and 2 waiting."""
    server = spawn("--max-num-seqs", "2", "--ttft", "1.5", model="m")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        body = {"prompt": "x", "max_tokens": 1}
        requests = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(4)]
        samples: Samples = {}
        for _ in range(100):
            samples = _samples((await client.get("/metrics")).text)
            if _value(samples, "vllm:num_requests_waiting") == 2:
                break
            await asyncio.sleep(0.02)
        assert _value(samples, "vllm:num_requests_running") == 2
        assert _value(samples, "vllm:num_requests_waiting") == 2
        assert _value(samples, "vllm:kv_cache_usage_perc") > 0
        assert all(r.status_code == 200 for r in await asyncio.gather(*requests))


def test_completion_stream_is_sse_ending_in_done(spawn: Spawn) -> None:
    """A streamed completion is text/event-stream, one data: event per token, then data: [DONE]."""
    server = spawn(model="m")
    body = {"prompt": "hi", "max_tokens": 3, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert [c["object"] for c in chunks] == ["text_completion"] * 3
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]


def test_text_is_deterministic_under_seed(spawn: Spawn) -> None:
    """Two processes with the same --seed answer the same prompt with the same text; another seed differs."""
    body = {"prompt": "the same prompt", "max_tokens": 20}
    texts = []
    for seed in ("3", "3", "4"):
        server = spawn("--seed", seed, model="m")
        texts.append(httpx.post(f"{server.base_url}/v1/completions", json=body).json()["choices"][0]["text"])
        server.kill()
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_openai_shaped_errors(spawn: Spawn) -> None:
    """Bad JSON, missing fields and over-long requests are 400 with vLLM's error body; 404/405 like FastAPI."""
    server = spawn("--max-model-len", "10", model="m")
    url = server.base_url
    bad_json = httpx.post(f"{url}/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    assert bad_json.json()["error"]["type"] == "BadRequestError"
    missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "m"})
    assert missing.status_code == 400
    assert "messages" in missing.json()["error"]["message"]
    too_long = httpx.post(f"{url}/v1/completions", json={"prompt": "a b c d e f", "max_tokens": 5})
    assert too_long.status_code == 400
    assert "maximum context length is 10 tokens" in too_long.json()["error"]["message"]
    assert httpx.get(f"{url}/nope").json() == {"detail": "Not Found"}
    assert httpx.get(f"{url}/v1/completions").status_code == 405


def test_api_key_guards_v1_only(spawn: Spawn) -> None:
    """With --api-key, /v1 paths need the bearer token (401 otherwise) and /health does not."""
    server = spawn("--api-key", "sekrit", model="m")
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    ok = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_admin_stats_count_requests(spawn: Spawn) -> None:
    """/admin/stats counts requests by kind and status, and reports pid and state."""
    server = spawn(model="m")
    probes_while_starting = httpx.get(f"{server.base_url}/admin/stats").json()["requests"]["health"]
    httpx.get(f"{server.base_url}/health")
    httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "x"})
    httpx.post(f"{server.base_url}/v1/completions", json={"model": "other", "prompt": "x"})
    stats = httpx.get(f"{server.base_url}/admin/stats").json()
    assert stats["pid"] == server.pid
    assert stats["state"] == "ready"
    assert stats["requests"]["health"] == probes_while_starting + 1
    assert stats["requests"]["admin"] == 1
    assert stats["requests"]["completions"] == 2
    assert stats["responses"]["404"] == 1
    assert stats["inference_requests_answered"] == 2
