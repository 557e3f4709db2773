"""Derives ``shared/fhir/fhir-r4-rules.json`` from the fhir.resources R4B models: the rules of FHIR R4
that the official JSON schema leaves out, keyed by the schema's definition names —

- ``required``: required PRIMITIVE elements (the schema's ``required`` lists only complex ones;
  a primitive may be carried by its ``_element`` extension instead of a value);
- ``choices``: ``name[x]`` elements: at most one of the types given, and whether one is required.

Regenerate after a fhir.resources upgrade (``test_r4_rules`` fails when the table drifts)::

    .venv/bin/python -m tests.unit.fhir.r4_rules > shared/fhir/fhir-r4-rules.json
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

SCHEMA = Path(__file__).parents[3] / "shared" / "fhir" / "fhir-r4.schema.json"


def _model(name: str) -> Any:
    try:
        return get_fhir_model_class(name)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None


def _element_model(annotation: Any) -> Any:
    """The model class of a backbone element field (``abc.CarePlanActivityType`` → CarePlanActivity)."""
    while typing.get_args(annotation):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    name = getattr(annotation, "__name__", "")
    return _model(name[: -len("Type")]) if name.endswith("Type") else None


def _ref(prop: dict[str, Any]) -> str | None:
    ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _rules_of(model: Any) -> dict[str, Any]:
    instance = model.model_construct()
    fields = model.model_fields
    rule: dict[str, Any] = {}
    required = sorted(fields[name].alias or name for name, _ext in instance.get_required_fields())
    if required:
        rule["required"] = required
    choices = {
        prefix: {
            "types": sorted(fields[f].alias or f for f in names),
            "required": bool(fields[names[0]].json_schema_extra["one_of_many_required"]),
        }
        for prefix, names in sorted(instance.get_one_of_many_fields().items())
    }
    if choices:
        rule["choices"] = choices
    return rule


def compute() -> dict[str, Any]:
    definitions: dict[str, Any] = json.loads(SCHEMA.read_text())["definitions"]
    table: dict[str, Any] = {}
    pending = [(name, _model(name)) for name in definitions if name[:1].isupper() and "_" not in name]
    seen: set[str] = set()
    while pending:
        name, model = pending.pop()
        if model is None or name in seen or name not in definitions:
            continue
        seen.add(name)
        if rule := _rules_of(model):
            table[name] = rule
        for field_name, field in model.model_fields.items():
            target = _ref(definitions[name].get("properties", {}).get(field.alias or field_name, {}))
            if target and "_" in target:  # a backbone element: its own definition, e.g. CarePlan_Detail
                pending.append((target, _element_model(field.annotation)))
    return dict(sorted(table.items()))


if __name__ == "__main__":
    json.dump(compute(), sys.stdout, indent=1)
    sys.stdout.write("\n")
