"""The gateway's front door with real fake-vllm servers: models, names, errors, auth, streams."""

from __future__ import annotations

import json

import pytest
from openai import AsyncOpenAI, AuthenticationError, NotFoundError

from tests.gateway.conftest import Serve, fake_model, healthy, wait_until

pytestmark = pytest.mark.slow

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


async def test_models_lists_every_model_id(serve: Serve) -> None:
    """GET /v1/models lists the configured model ids in the OpenAI list shape."""
    async with serve({"qwen": fake_model(), "tiny": fake_model()}) as s:
        body = (await s.client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["qwen", "tiny"]


async def test_a_chat_completion_by_model_id_is_forwarded_with_the_servers_name(serve: Serve) -> None:
    """The client names the model id; the server (which calls itself test-model) answers; headers say who."""
    async with serve({"qwen": fake_model()}) as s:
        await wait_until(lambda: healthy(s.fleet, "qwen"), 20, "qwen healthy")
        response = await s.client.post(
            "/v1/chat/completions", json={"model": "qwen", **CHAT}, headers={"x-request-id": "abc-123"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "chat.completion"
        assert response.json()["model"] == "test-model"
        assert response.headers["x-llm-supervisor-model"] == "qwen"
        assert response.headers["x-request-id"] == "abc-123"
        assert "x-llm-supervisor-fallback" not in response.headers
        by_served_name = await s.client.post("/v1/completions", json={"model": "test-model", "prompt": "hi"})
        assert by_served_name.status_code == 200, by_served_name.text
        assert by_served_name.headers["x-llm-supervisor-model"] == "qwen"
        assert len(by_served_name.headers["x-request-id"]) == 32  # made up when the client sent none


async def test_the_openai_sdk_works_through_the_gateway_and_sees_vllm_errors(serve: Serve) -> None:
    """The official client streams a chat through the gateway; an unknown model is its NotFoundError."""
    async with serve({"qwen": fake_model()}) as s:
        await wait_until(lambda: healthy(s.fleet, "qwen"), 20, "qwen healthy")
        client = AsyncOpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(model="qwen", stream=True, **CHAT)  # type: ignore[call-overload]
        chunks = [chunk async for chunk in stream]
        assert chunks
        assert chunks[0].object == "chat.completion.chunk"
        with pytest.raises(NotFoundError, match="The model `nope` does not exist"):
            await client.completions.create(model="nope", prompt="hi", max_tokens=1)
        await client.close()


async def test_a_stream_passes_through_whole(serve: Serve) -> None:
    """A streamed completion arrives as Server-Sent Events ending in [DONE], chunk by chunk."""
    async with serve({"qwen": fake_model()}) as s:
        await wait_until(lambda: healthy(s.fleet, "qwen"), 20, "qwen healthy")
        async with s.client.stream(
            "POST", "/v1/completions", json={"model": "qwen", "prompt": "hi", "max_tokens": 5, "stream": True}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e.removeprefix("data: "))["object"] == "text_completion" for e in events[:-1])


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/completions", b"{not json", 400, "the body is not JSON"),
        ("POST", "/v1/completions", b'{"prompt": "hi"}', 400, "naming a model in 'model'"),
        ("POST", "/v1/completions", b'["qwen"]', 400, "naming a model in 'model'"),
        ("POST", "/v1/completions", b'{"model": "nope"}', 404, "The model `nope` does not exist. Known models: qwen"),
        ("GET", "/v1/completions", b"", 405, "GET /v1/completions is not served"),
        ("POST", "/admin/faults", b"{}", 404, "no route /admin/faults"),
    ],
)
async def test_bad_requests_get_a_4xx_in_vllms_error_shape(
    serve: Serve, method: str, path: str, body: bytes, status: int, message: str
) -> None:
    """Each bad request names its problem in {"error": {"message", "type", "param", "code"}}."""
    async with serve({"qwen": fake_model()}) as s:
        response = await s.client.request(method, path, content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"]
    assert error["code"] == status
    assert set(error) == {"message", "type", "param", "code"}


async def test_an_api_key_is_required_when_configured(serve: Serve) -> None:
    """With an API key, a request without it (or with another) is 401; with it, it is served."""
    async with serve({"qwen": fake_model()}, api_key="k3y") as s:
        await wait_until(lambda: healthy(s.fleet, "qwen"), 20, "qwen healthy")
        assert (await s.client.get("/v1/models")).status_code == 401
        wrong = await s.client.get("/v1/models", headers={"authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["error"]["type"]) == (401, "AuthenticationError")
        right = await s.client.post(
            "/v1/completions", json={"model": "qwen", "prompt": "hi"}, headers={"authorization": "Bearer k3y"}
        )
        assert right.status_code == 200
        client = AsyncOpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(AuthenticationError):
            await client.models.list()
        await client.close()


async def test_a_stopped_model_is_503_at_once_with_no_retry_after(serve: Serve) -> None:
    """A model an operator stopped will not come back by itself: 503 now, naming the state, no Retry-After."""
    async with serve({"qwen": fake_model()}) as s:
        await wait_until(lambda: healthy(s.fleet, "qwen"), 20, "qwen healthy")
        await s.fleet.stop_model("qwen")
        response = await s.client.post("/v1/completions", json={"model": "qwen", "prompt": "hi"})
    assert response.status_code == 503
    assert "qwen is stopped: start it" in response.json()["error"]["message"]
    assert "retry-after" not in response.headers


async def test_a_bug_costs_one_request_a_500_never_the_gateway(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception inside routing answers that request 500 in vLLM's shape; the next request is served."""
    async with serve({"qwen": fake_model()}) as s:
        await wait_until(lambda: healthy(s.fleet, "qwen"), 20, "qwen healthy")
        forwarder = s.gateway.forwarder
        real_route = forwarder._route

        async def broken(journey: object) -> object:
            raise RuntimeError("boom")

        monkeypatch.setattr(forwarder, "_route", broken)
        failed = await s.client.post("/v1/completions", json={"model": "qwen", "prompt": "hi"})
        monkeypatch.setattr(forwarder, "_route", real_route)
        served = await s.client.post("/v1/completions", json={"model": "qwen", "prompt": "hi"})
    assert failed.status_code == 500
    assert "internal error in the gateway" in failed.json()["error"]["message"]
    assert failed.headers["x-request-id"] in failed.json()["error"]["message"]
    assert served.status_code == 200


async def test_a_served_name_not_learnt_yet_is_asked_for_not_refused(serve: Serve) -> None:
    """A request by a server's own name that arrives before the gateway learnt the names (the replica became
    ready a moment ago) is routed after asking that server, not answered 404."""
    async with serve({"qwen": fake_model()}) as s:
        await wait_until(lambda: healthy(s.fleet, "qwen"), 20, "qwen healthy")
        s.gateway._names.forget("qwen")  # as if the request came before the names were fetched
        response = await s.client.post("/v1/completions", json={"model": "test-model", "prompt": "hi"})
        assert response.status_code == 200, response.text
        assert response.headers["x-llm-supervisor-model"] == "qwen"
        unknown = await s.client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
        assert unknown.status_code == 404
