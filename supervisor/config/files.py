"""Config files as data: YAML or JSON text -> Python values, with the mistakes parsers pass over silently.

Both loaders also return the keys written twice (a parser would keep the last one without a word: a lost
model); a syntax error raises `DocumentError` with its line and column.
"""

from __future__ import annotations

import json
from typing import Any

import yaml


class DocumentError(Exception):
    """The text is not valid YAML/JSON; str() says where and why."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys: PyYAML would silently keep the last one (a lost model)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            # Merge keys (<<) override by design; only keys written twice by hand are mistakes.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    self.duplicates.append(
                        f"line {key_node.start_mark.line + 1}: duplicate key "
                        f"{key_node.value!r}: the later value would silently win"
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> tuple[object, list[str]]:
    try:
        loader = _Loader(text)
        return loader.get_single_data(), loader.duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise DocumentError(f"{where}YAML syntax error: {what}") from None
    except yaml.reader.ReaderError as exc:  # a control character: YAML allows only printable text
        line = text.count("\n", 0, exc.position) + 1
        raise DocumentError(f"line {line}: character #x{exc.character:04x} is not allowed in YAML") from None


def load_json(text: str) -> tuple[object, list[str]]:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(f"duplicate key {key!r}: the later value would silently win")
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=pairs), duplicates
    except json.JSONDecodeError as exc:
        raise DocumentError(f"line {exc.lineno}, column {exc.colno}: JSON syntax error: {exc.msg}") from None
