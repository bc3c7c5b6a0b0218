"""`--model m1=qwen`: the catalogue's model ids mapped to a deployment's, for runs against staging.

The catalogue names its models m1, m2, ...; a deployment names them as its operators do. A mapping renames
every reference to a model (steady state, faults, clean-up, expectations, load, fallbacks and a local
target's models) before the scenario runs, so the verdicts and reports name the deployment's models.
"""

from __future__ import annotations

import re
from typing import Any

from chaos.scenario import Scenario

MODEL_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REFERENCES = ("model", "fallback")  # the keys whose value is a model id
KEYED_BY_MODEL = ("models",)  # the mappings whose keys are model ids (target.models, real_vllm.models)


class MappingError(ValueError):
    """A `--model` argument that is not OLD=NEW with two model ids."""


def parse_model_map(items: list[str]) -> dict[str, str]:
    """`["m1=qwen", "m2=llama"]` -> {"m1": "qwen", "m2": "llama"}; every bad item is reported at once."""
    mapping: dict[str, str] = {}
    problems = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not MODEL_ID.match(old) or not MODEL_ID.match(new):
            problems.append(f"--model {item!r}: give CATALOGUE_ID=DEPLOYMENT_ID, e.g. m1=qwen")
        elif old in mapping and mapping[old] != new:
            problems.append(f"--model {item!r}: {old} is already mapped to {mapping[old]}")
        else:
            mapping[old] = new
    if len(set(mapping.values())) != len(mapping):
        problems.append("--model: two catalogue ids map to the same model")
    if problems:
        raise MappingError("; ".join(problems))
    return mapping


def rename_models(scenario: Scenario, mapping: dict[str, str]) -> Scenario:
    """The scenario with every model id in `mapping` replaced; ids not in it stay as they are."""
    if not mapping:
        return scenario
    data = scenario.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return Scenario.model_validate(_rename(data, mapping))


def _rename(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_rename(item, mapping) for item in node]
    if not isinstance(node, dict):
        return node
    renamed: dict[str, Any] = {}
    for key, value in node.items():
        if key in REFERENCES and isinstance(value, str):
            renamed[key] = mapping.get(value, value)
        elif key in KEYED_BY_MODEL and isinstance(value, dict):
            renamed[key] = {mapping.get(k, k): _rename(v, mapping) for k, v in value.items()}
        else:
            renamed[key] = _rename(value, mapping)
    return renamed
