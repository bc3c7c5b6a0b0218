"""The official openai client works against a real fake-vllm process."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from fake_vllm.testing import Spawn

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def _client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=10)


def test_lists_the_served_model_with_its_max_len(spawn: Spawn) -> None:
    """models.list() returns the served name, owned by vllm, with --max-model-len."""
    server = spawn("--max-model-len", "4096", model=MODEL)
    with _client(server.base_url) as client:
        models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].owned_by == "vllm"
    assert models[0].model_extra is not None
    assert models[0].model_extra["max_model_len"] == 4096


def test_completion_counts_usage(spawn: Spawn) -> None:
    """A completion returns text and a usage block that adds up."""
    server = spawn(model=MODEL)
    with _client(server.base_url) as client:
        result = client.completions.create(
            model=MODEL, prompt="Say hello to the operator", max_tokens=7, extra_body={"ignore_eos": True}
        )
    assert result.object == "text_completion"
    assert result.choices[0].text.strip()
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 7
    assert result.usage.prompt_tokens == 5
    assert result.usage.total_tokens == 12


def test_chat_completion(spawn: Spawn) -> None:
    """A chat completion answers as the assistant with a finish reason and usage."""
    server = spawn(model=MODEL)
    with _client(server.base_url) as client:
        result = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi there"}])
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert result.usage is not None
    assert result.usage.completion_tokens == len(choice.message.content.split())


def test_chat_stream_yields_chunks_and_usage(spawn: Spawn) -> None:
    """stream=True yields chunks whose deltas join into the non-streamed answer, then usage."""
    server = spawn("--seed", "7", model=MODEL)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story"}]
    with _client(server.base_url) as client:
        whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


async def test_async_client_streams_completions(spawn: Spawn) -> None:
    """The async client streams a completion to its end."""
    server = spawn(model=MODEL)
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as client:
        stream = await client.completions.create(
            model=MODEL, prompt="abc", max_tokens=5, stream=True, extra_body={"ignore_eos": True}
        )
        pieces = [chunk.choices[0].text async for chunk in stream]
    assert len(pieces) == 5


def test_unknown_model_is_openai_not_found(spawn: Spawn) -> None:
    """Asking for another model raises openai.NotFoundError with vLLM's message."""
    server = spawn(model=MODEL)
    with _client(server.base_url) as client, pytest.raises(openai.NotFoundError, match=r"The model `other` does not"):
        client.completions.create(model="other", prompt="x")
