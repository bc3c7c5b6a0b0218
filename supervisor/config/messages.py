"""Pydantic's validation errors, said the way an operator reads them: a key path and what is wrong.

`llmModels.qwen.restart_polcy: unknown key (did you mean restart_policy?)` rather than a raw error dump.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel

_KINDS = {
    "float_type": "a number",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "path_type": "a path (a string)",
    "finite_number": "a finite number",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def describe(cls: type[BaseModel], prefix: str, error: Any, aliases: Sequence[str] = ()) -> str:
    """One validation error of `cls`, found under key path `prefix`, as a line an operator reads."""
    loc = [part for part in error["loc"] if part != "[key]"]
    return f"{prefix}{''.join(map(step, loc))}: {_message(cls, loc, error, aliases)}"


def step(part: object) -> str:
    """One step of a key path: `.restart_policy`, `[3]` for a list item, `["./models"]` for an odd key."""
    if isinstance(part, int):
        return f"[{part}]"
    return f".{part}" if re.fullmatch(r"[A-Za-z0-9_.-]+", str(part)) else f"[{json.dumps(str(part))}]"


def _message(cls: type[BaseModel], loc: list[Any], error: Any, aliases: Sequence[str]) -> str:
    kind, ctx, got = error["type"], error.get("ctx") or {}, show(error.get("input"))
    if kind == "extra_forbidden" and loc[-1] == "shutdown_timeout":
        return "given together with stop_timeout, of which it is an alias: keep one"
    if kind == "extra_forbidden":
        return f"unknown key{suggest(str(loc[-1]), _keys_at(cls, loc, aliases))}"
    if kind == "missing":
        return "required key is missing"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {_BOUNDS[kind]} {bound} (got {got})"
    if kind in ("literal_error", "enum"):  # a Literal and an Enum of allowed values read the same
        expected = ctx["expected"]
        return f"must be {'one of ' if ' or ' in expected else ''}{expected} (got {got})"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']} (got {got})"
    return f"must be {_KINDS[kind]} (got {got})" if kind in _KINDS else f"{error['msg']} (got {got})"


def _keys_at(cls: type[BaseModel], loc: list[Any], aliases: Sequence[str]) -> list[str]:
    """The keys allowed where an unknown key was found, to suggest the one meant."""
    model: type[BaseModel] = cls
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        candidates = (field.annotation, *get_args(field.annotation)) if field else ()
        inner = [t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel)]
        model = inner[0] if inner else model
    extra = aliases if model is cls else []  # aliases belong to the top model (ModelConfig's shutdown_timeout)
    return [*model.model_fields, *extra]


def suggest(key: str, known: Any) -> str:
    """' (did you mean X?)' for the known key closest to a misspelt one, or nothing."""
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def show(value: object) -> str:
    """A value as an error message quotes it: short, YAML-ish words for true/false/null."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value)
    if len(text) <= 60:
        return text
    if isinstance(value, Mapping | list | tuple):
        return "a mapping" if isinstance(value, Mapping) else "a list"
    return text[:57] + "..."
