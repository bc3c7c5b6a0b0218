"""'Did you mean ...?' for an unknown key in a scenario: the closest key allowed at that place.

Pydantic reports an unknown key with its location (`target.models.m1.restart_polcy`); the keys allowed
there are found by following that location through the scenario's model types (fields, list items, mapping
values, and tagged unions, whose location names the member by its tag: `faults.0.signal.<key>`).
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Annotated, Literal, TypeGuard, Union, get_args, get_origin

from pydantic import BaseModel


def did_you_mean(root: type[BaseModel], loc: Sequence[str | int]) -> str:
    """' (did you mean X?)' for the allowed key closest to the unknown one at `loc`, or nothing."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], known_keys(root, loc[:-1]), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def known_keys(root: type[BaseModel], parent: Sequence[str | int]) -> list[str]:
    """The keys the model(s) at `parent` accept (by the names a file uses: aliases where there are any)."""
    nodes: list[object] = [root]
    for part in parent:
        nodes = [child for node in nodes for child in _children(node, part)]
    keys = {
        field.alias or name
        for node in nodes
        for tp in _members(node)
        if _is_model(tp)
        for name, field in tp.model_fields.items()
    }
    return sorted(keys)


def _members(tp: object) -> list[object]:
    """A type with Annotated and unions (X | None) taken apart."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [member for arg in get_args(tp) for member in _members(arg)]
    return [tp]


def _children(node: object, part: str | int) -> list[object]:
    found: list[object] = []
    for tp in _members(node):
        origin = get_origin(tp)
        if _is_model(tp):
            found += [f.annotation for name, f in tp.model_fields.items() if part in (name, f.alias)]
            if _tag(tp) == part:
                found.append(tp)  # a tagged union's member, named by its tag
        elif origin in (list, tuple) and isinstance(part, int):
            found.append(get_args(tp)[0])
        elif origin is dict:
            found.append(get_args(tp)[1])
    return found


def _tag(model: type[BaseModel]) -> object:
    """The `action` a step type is tagged with, or None."""
    field = model.model_fields.get("action")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    return get_args(field.annotation)[0]


def _is_model(tp: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
