"""``/v1/completions`` and ``/v1/chat/completions`` in vLLM's OpenAI shapes, streaming included.

Errors use vLLM's body ``{"error": {"message", "type", "param", "code"}}``; an error after a stream has
started is sent as a ``data: {"error": ...}`` event followed by ``data: [DONE]``, as vLLM does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fake_vllm import engine, tracebacks
from fake_vllm.httpserver import Request, Response, StreamResponse
from fake_vllm.runtime import EngineDead, Runtime
from fake_vllm.settings import VLLM_VERSION

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


def dumps(value: object) -> bytes:
    """Compact JSON, as pydantic's model_dump_json writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def sanitize(message: str) -> str:
    """vLLM's sanitize_message: file paths in an error message become ``<path>``."""
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    return re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message).strip()


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """vLLM's ErrorResponse."""
    return {
        "error": {
            "message": sanitize(message),
            "type": _ERROR_TYPES.get(status, "Error"),
            "param": param,
            "code": status,
        }
    }


def error(status: int, message: str, param: str | None = None) -> Response:
    """An OpenAI-shaped error response."""
    return Response(status, dumps(error_body(status, message, param)))


class InvalidRequest(Exception):
    """A request vLLM would refuse with 400; the message is the one returned, ``param`` the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Parsed:
    """What generation needs from either endpoint."""

    chat: bool
    request: engine.GenerationRequest
    stream: bool
    include_usage: bool


def _int(body: dict[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _chat_prompt(body: dict[str, Any]) -> tuple[str, int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: field required (a non-empty list)")
    tokens = 2  # the template's closing assistant header
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise InvalidRequest("messages: each message needs a role")
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        tokens += 4 + engine.count_tokens(str(content))
    return json.dumps(messages, sort_keys=True), tokens


def _completion_prompts(body: dict[str, Any]) -> list[tuple[str, int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [(prompt, engine.count_tokens(prompt))]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [(json.dumps(prompt), len(prompt))]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        return [(p, engine.count_tokens(p)) if isinstance(p, str) else (json.dumps(p), max(1, len(p))) for p in prompt]
    raise InvalidRequest("prompt: field required (a string, a list of strings or a list of token ids)")


def _json_object(raw: bytes) -> dict[str, Any]:
    body = json.loads(raw or b"null")
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def parse(rt: Runtime, body: dict[str, Any], *, chat: bool) -> Parsed:
    """Validate a generation request and plan its outputs."""
    n = _int(body, "n", 1, 1) or 1
    limit = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens", 16)
    max_tokens = _int({"max_tokens": limit}, "max_tokens", None, 1)
    seed = _int(body, "seed", None, -(2**63))
    ignore_eos = bool(body.get("ignore_eos", False))
    prompts = [_chat_prompt(body)] if chat else _completion_prompts(body)
    prompt_tokens = sum(tokens for _, tokens in prompts)
    longest = max(tokens for _, tokens in prompts)
    max_len = rt.settings.max_model_len
    if max_tokens is not None and max_tokens > max_len:
        raise InvalidRequest(
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_len}. Please request fewer "
            f"output tokens. (parameter=max_tokens, value={max_tokens})",
            "max_tokens",
        )
    if longest + (max_tokens or 0) > max_len:
        raise InvalidRequest(
            f"This model's maximum context length is {max_len} tokens. However, you requested "
            f"{longest + (max_tokens or 0)} tokens ({longest} in the messages, {max_tokens or 0} in the "
            "completion). Please reduce the length of the messages or completion.",
            "input_tokens",
        )
    cap = max_tokens if max_tokens is not None else max_len - longest
    request = engine.GenerationRequest(
        prompt_tokens=prompt_tokens,
        prompt_keys=tuple(key for key, _ in prompts),
        n=n,
        seed=rt.faults.seed,
        request_seed=seed,
        max_tokens=cap,
        ignore_eos=ignore_eos,
        ttft=rt.faults.ttft,
        itl=rt.faults.itl,
    )
    options = body.get("stream_options") or {}
    stream = bool(body.get("stream", False))
    return Parsed(chat, request, stream, stream and bool(options.get("include_usage", False)))


def _usage(parsed: Parsed, completion_tokens: int) -> dict[str, Any]:
    prompt_tokens = parsed.request.prompt_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def _choice(
    parsed: Parsed, index: int, text: str, finish: str | None, *, first: bool = False, delta: bool = False
) -> dict[str, Any]:
    if not parsed.chat:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        return choice | {"token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}
    if delta:
        content = {"role": "assistant", "content": text} if first else {"content": text}
        return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish}
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [],
        "reasoning_content": None,
    }
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish, "stop_reason": None}


async def respond(rt: Runtime, request: Request, *, chat: bool, done: Callable[[], None]) -> Response | StreamResponse:
    """Handle one generation request end to end; ``done`` runs once the answer has been sent."""
    try:
        body = _json_object(request.body)
        model = body.get("model")
        if model is not None and model not in rt.settings.served_model_names:
            aliases = ", ".join(rt.settings.served_model_names)
            message = f"The model `{model}` does not exist. Valid aliases: {aliases}."
            return _finish(error(404, message, "model"), done)
        parsed = parse(rt, body, chat=chat)
    except InvalidRequest as exc:
        return _finish(error(400, str(exc), exc.param), done)
    except ValueError as exc:
        return _finish(error(400, str(exc)), done)
    if rt.is_engine_dead:
        return _engine_dead(rt, done)
    if rt.dice.request_fails(rt.faults.error_rate):
        rt.stats.injected_request_errors += 1
        return _finish(error(500, f"fake-vllm: injected request failure (error_rate={rt.faults.error_rate})"), done)
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{os.urandom(8).hex()}"
    head = {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.get("model") or rt.settings.model_name,
    }
    steps = rt.generate(parsed.request)
    if parsed.stream:
        rt.stats.streams += 1
        # With no inter-token latency the events go out in one write: one syscall instead of one per token.
        return StreamResponse(200, _stream(parsed, head, steps, coalesce=parsed.request.itl == 0), after_sent=done)
    texts = dict.fromkeys(range(parsed.request.choices), "")
    finish: dict[int, str | None] = {}
    tokens = 0
    try:
        async with contextlib.aclosing(steps):
            async for step in steps:
                tokens += len(step.tokens)
                for index, token, reason in step.tokens:
                    texts[index] += token
                    finish[index] = reason
    except EngineDead:
        return _engine_dead(rt, done)
    result = {**head, "choices": [_choice(parsed, i, texts[i], finish.get(i)) for i in sorted(texts)]}
    if chat:
        result |= {"service_tier": None, "system_fingerprint": None, "usage": _usage(parsed, tokens)}
        result |= {"prompt_logprobs": None, "kv_transfer_params": None}
    else:
        result |= {"service_tier": None, "system_fingerprint": _fingerprint(rt), "usage": _usage(parsed, tokens)}
        result |= {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}
    return Response(200, dumps(result), after_sent=done)


def _fingerprint(rt: Runtime) -> str:
    """``vllm-0.32.0-xxxxxxxx``: vLLM's fingerprint of its configuration, here of the model and seed."""
    digest = zlib.crc32(f"{rt.settings.model}|{rt.settings.max_model_len}".encode())
    return f"vllm-{VLLM_VERSION}-{digest:08x}"


def _engine_dead(rt: Runtime, done: Callable[[], None]) -> Response:
    """500 with EngineDeadError's message; like vLLM's handler, it also tells the server to shut down."""

    def sent() -> None:
        done()
        rt.on_engine_error()

    response = error(500, tracebacks.ENGINE_DEAD_MESSAGE)
    response.after_sent = sent
    return response


def _finish(response: Response, done: Callable[[], None]) -> Response:
    response.after_sent = done
    return response


async def _stream(
    parsed: Parsed, head: dict[str, Any], steps: AsyncGenerator[engine.Step, None], *, coalesce: bool
) -> AsyncIterator[bytes]:
    chunk_head = {**head, "object": "chat.completion.chunk" if parsed.chat else "text_completion"}
    produced = 0
    pending: list[bytes] = []

    def event(payload: dict[str, Any]) -> None:
        pending.append(b"data: " + dumps(payload) + b"\n\n")

    if parsed.chat:
        for index in range(parsed.request.choices):
            event({**chunk_head, "choices": [_choice(parsed, index, "", None, first=True, delta=True)]})
    try:
        async for step in steps:
            for index, token, reason in step.tokens:
                produced += 1
                event({**chunk_head, "choices": [_choice(parsed, index, token, reason, delta=True)]})
            if not coalesce:
                yield b"".join(pending)
                pending.clear()
    except EngineDead:
        event(error_body(500, tracebacks.ENGINE_DEAD_MESSAGE))
    else:
        if parsed.include_usage:
            event({**chunk_head, "choices": [], "usage": _usage(parsed, produced)})
    finally:
        await steps.aclose()
    pending.append(b"data: [DONE]\n\n")
    yield b"".join(pending)
