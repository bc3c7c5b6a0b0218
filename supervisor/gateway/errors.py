"""Errors in the shape vLLM's OpenAI server answers them, so clients and SDKs parse ours like its own."""

from __future__ import annotations

import json

# What vLLM calls each status in the error's `type`.
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "BadRequestError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
}


def error_object(message: str, status: int, param: str | None = None) -> dict[str, object]:
    return {"message": message, "type": ERROR_TYPES.get(status, "InternalServerError"), "param": param, "code": status}


def error_body(message: str, status: int, param: str | None = None) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}` as JSON bytes."""
    return json.dumps({"error": error_object(message, status, param)}).encode()


def error_event(message: str, status: int) -> bytes:
    """A stream's last words when it broke after bytes went out: an error event, then the end marker."""
    return b"data: " + json.dumps({"error": error_object(message, status)}).encode() + b"\n\ndata: [DONE]\n\n"
