"""The door to FHIR validation.

:func:`validate_r4` checks a resource against FHIR R4's published JSON schema (HL7 FHIR 4.0.1,
``fhir-r4.schema.json``, shipped beside this module), compiled by jsonschema-rs into one validator
per resource type, on first use. The schema leaves out a few rules of the specification that
``fhir-r4-rules.json`` adds as data (derived from the fhir.resources models by
``tests/unit/fhir/r4_rules.py``): required primitive elements (present as a value or as an
``_element`` extension) and ``name[x]`` choices (one type at most, one when required). Complex
elements must be JSON objects (so a null in a list of them is refused), dates days the calendar
has; each ``contained`` resource is validated against its own type. As the R4B models did, numbers
sent as numeric text and the nulls that line a primitive list up with its ``_element`` list pass.
Issues name elements FHIRPath-style with words for a person, never the value sent
(jsonschema-rs' own messages quote it).

:func:`validate_r5` uses the fhir.resources top level (R5 models) on purpose, for R5 write-back
output; this is the ONLY module importing ``fhir.resources``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
from fhir.resources import get_fhir_model_class as get_r5_model_class  # the top level IS R5
from pydantic import BaseModel, ValidationError

__all__ = ["ResourceInvalid", "compile_validators", "is_known_type", "validate_r4", "validate_r5"]

SCHEMA_FILE = Path(__file__).with_name("fhir-r4.schema.json")
RULES_FILE = Path(__file__).with_name("fhir-r4-rules.json")
MAX_ISSUES = 10
_DRAFT6 = "http://json-schema.org/draft-06/schema#"


class ResourceInvalid(ValueError):
    """A resource fails validation; ``issues`` are ``(FHIRPath-ish location, message)`` pairs
    written for a person, never quoting the payload."""

    def __init__(self, resource_type: str, issues: list[tuple[str, str]], release: str = "R4") -> None:
        self.resource_type = resource_type
        self.issues = issues
        first = f"{issues[0][0]}: {issues[0][1]}" if issues else "invalid"
        super().__init__(f"{resource_type} is not valid FHIR {release}: {first}")


class _Schema:
    """The R4 schema's definitions with the rules added, and what the messages need from them."""

    def __init__(self) -> None:
        raw = orjson.loads(SCHEMA_FILE.read_bytes())
        defs: dict[str, Any] = raw["definitions"]
        self.resource_types = frozenset(ref["$ref"].rsplit("/", 1)[-1] for ref in raw["oneOf"])
        # (definition, allOf index) → (element label, message) of the rules added below
        self.added: dict[tuple[str, int], tuple[str, str]] = {}
        for name, d in defs.items():
            # a complex element is an object: null, text or a number is refused — but for the
            # ``_element`` extensions of a primitive list, where null is a positional placeholder
            if "properties" in d and "type" not in d and name != "Element":
                d["type"] = "object"
        # Numbers as the specification reads them; a numeric string is accepted as the R4B models
        # accepted it (HL7 v2 converters send ``"value": "12.5"``) — the pattern checks a string.
        # The schema copies a primitive's definition into choice elements (``valueInteger``): all
        # copies are changed alike.
        numbers = {
            defs[name]["pattern"]: change
            for name, change in (
                ("decimal", {"type": ["number", "string"]}),
                ("integer", {"type": ["integer", "string"]}),
                ("unsignedInt", {"type": ["integer", "string"], "minimum": 0}),
                ("positiveInt", {"type": ["integer", "string"], "minimum": 1}),
            )
        }
        for d in defs.values():
            for node in (d, *d.get("properties", {}).values()):
                for n in (node, node.get("items", {})):
                    if n.get("type") == "number" and n.get("pattern") in numbers:
                        n.update(numbers[n["pattern"]])
        # Dates the calendar has (the patterns allow 2020-02-30), wherever a date is copied.
        dates = {defs[name]["pattern"] for name in ("date", "dateTime", "instant")}
        for d in defs.values():
            for node in (d, *d.get("properties", {}).values()):
                if node.get("pattern") in dates:
                    node["format"] = _CALENDAR
        # A primitive list may hold nulls lining its values up with its ``_element`` list
        # (FHIR's JSON format; the schema refuses them, the R4B models accepted them).
        for d in defs.values():
            for prop in d.get("properties", {}).values():
                ref = prop.get("items", {}).get("$ref", "") if prop.get("type") == "array" else ""
                primitive = (
                    defs.get(ref.rsplit("/", 1)[-1]) if ref[len("#/definitions/") :][:1].islower() else None
                )
                if primitive is not None:
                    types = primitive["type"] if isinstance(primitive["type"], list) else [primitive["type"]]
                    prop["items"] = {
                        **{k: v for k, v in primitive.items() if k != "description"},
                        "type": [*types, "null"],
                    }
        # a contained resource (or a Bundle entry's) is checked against its own type, not a oneOf of all
        defs["ResourceList"] = {"type": "object", "required": ["resourceType"]}
        for name, rule in orjson.loads(RULES_FILE.read_bytes()).items():
            d = defs.get(name)
            if d is None:
                continue
            props = d.get("properties", {})
            checks: list[dict[str, Any]] = d.setdefault("allOf", [])
            for element in rule.get("required", ()):
                if element not in props:
                    continue
                ext = f"_{element}"
                with_ext = {"required": [ext], "properties": {ext: {"required": ["extension"]}}}
                self.added[(name, len(checks))] = (element, "required element missing")
                checks.append({"anyOf": [{"required": [element]}, with_ext]})
            for prefix, choice in rule.get("choices", {}).items():
                present = [{"required": [t]} for t in choice["types"] if t in props]
                if not present:
                    continue
                label = f"{prefix}[x]"
                if choice["required"]:
                    self.added[(name, len(checks))] = (
                        label,
                        "required element missing, or more than one type given",
                    )
                    checks.append({"oneOf": present})
                else:
                    self.added[(name, len(checks))] = (label, "more than one type given")
                    checks.append({"anyOf": [{"not": {"anyOf": present}}, {"oneOf": present}]})
        self.definitions = defs
        self.pattern_types = {
            d["pattern"]: name for name, d in defs.items() if name[:1].islower() and "pattern" in d
        }

    def reachable(self, name: str) -> dict[str, Any]:
        """The definitions ``name`` refers to, directly or not: a validator compiled from these
        alone takes a tenth of the time of one given all of them."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            stack: list[Any] = [self.definitions[current]]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    ref = node.get("$ref")
                    if isinstance(ref, str):
                        todo.append(ref.rsplit("/", 1)[-1])
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
        return {n: self.definitions[n] for n in seen}

    def node(self, schema_path: Iterable[str | int]) -> Any:
        node: Any = {"definitions": self.definitions}
        for part in schema_path:
            node = node[part]
        return node


@cache
def _schema() -> _Schema:
    """Built with the cyclic collector paused: its ~100,000 new objects (none in a cycle) would
    otherwise start collections that walk everything a loaded server holds (~0.1 s, not ~0.02 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Schema()
    finally:
        if enabled:
            gc.enable()


_CALENDAR = "fhir-calendar-date"


def _calendar_date(value: str) -> bool:
    """A date's day exists (a year or a month alone is left to the pattern)."""
    if len(value) < 10:
        return True
    try:
        date(int(value[0:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return True


_COMPILED: dict[str, Any] = {}  # resource type → its validator, compiled on first use


def _validator(resource_type: str) -> Any:
    validator = _COMPILED.get(resource_type)
    if validator is None:
        schema = {
            "$schema": _DRAFT6,
            "$ref": f"#/definitions/{resource_type}",
            "definitions": _schema().reachable(resource_type),
        }
        validator = _COMPILED[resource_type] = jsonschema_rs.Draft6Validator(
            schema, formats={_CALENDAR: _calendar_date}, validate_formats=True
        )
    return validator


def is_known_type(resource_type: str) -> bool:
    return resource_type in _schema().resource_types


def compile_validators(resource_types: Iterable[str]) -> None:
    """Compile the validators of these types now (each is otherwise compiled on first use, ~5 ms):
    a process about to fork workers compiles them once for all of them."""
    for resource_type in resource_types:
        if is_known_type(resource_type):
            _validator(resource_type)


def validate_r4(resource: Mapping[str, Any]) -> None:
    """Raise :class:`ResourceInvalid` when ``resource`` is not a valid FHIR R4 resource of its type."""
    rtype = resource.get("resourceType")
    compiled = _COMPILED.get(rtype) if isinstance(rtype, str) else None
    if compiled is not None and "contained" not in resource and compiled.is_valid(resource):
        return  # the common case, without a Python call more
    if not isinstance(rtype, str):
        raise ResourceInvalid("Resource", [("Resource.resourceType", "required element missing")])
    issues = _issues(resource, rtype)
    if issues:
        raise ResourceInvalid(rtype, issues[:MAX_ISSUES])


def _issues(resource: Mapping[str, Any], location: str) -> list[tuple[str, str]]:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not is_known_type(rtype):
        return [(f"{location}.resourceType", "not a known FHIR R4 resource type")]
    validator = _validator(rtype)
    if validator.is_valid(resource):
        issues: list[tuple[str, str]] = []
    else:
        issues = _described(validator.iter_errors(resource), location)
    contained = resource.get("contained")
    if isinstance(contained, list):
        for i, inner in enumerate(contained):
            if isinstance(inner, Mapping) and len(issues) < MAX_ISSUES:
                issues += _issues(inner, f"{location}.contained[{i}]")
    return issues


def _described(errors: Iterable[Any], root: str) -> list[tuple[str, str]]:
    """One issue per location; nothing under an element of the wrong type (its rules are moot)."""
    s = _schema()
    issues: list[tuple[str, str]] = []
    for err in errors:
        issues += _describe(err, root, s)
    wrong = tuple(loc for loc, message in issues if message.startswith("wrong type"))
    seen: set[str] = set()
    out = []
    for location, message in issues:
        under_wrong = any(location.startswith((w + ".", w + "[")) for w in wrong)
        if location not in seen and not under_wrong:
            seen.add(location)
            out.append((location, message))
    return out[:MAX_ISSUES]


def _path(root: str, parts: Iterable[str | int]) -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{str(p)[:64]}" for p in parts)


def _describe(err: Any, root: str, s: _Schema) -> list[tuple[str, str]]:
    """Location and message for a person; jsonschema-rs' own messages quote the value, so never used."""
    kind = err.kind
    name = kind.name
    where = _path(root, err.instance_path)
    spath = list(err.schema_path)
    if name == "additionalProperties":
        return [(f"{where}.{str(u)[:64]}", "unknown element") for u in kind.unexpected]
    if name == "required":
        return [(f"{where}.{kind.property}", "required element missing")]
    if name in ("anyOf", "oneOf", "oneOfNotValid", "oneOfMultipleValid", "not") and "allOf" in spath:
        i = len(spath) - 1 - spath[::-1].index("allOf")
        added = s.added.get((str(spath[i - 1]), int(spath[i + 1])))
        if added is not None:
            return [(f"{where}.{added[0]}", added[1])]
    if name == "enum":
        codes = [str(c) for c in s.node(spath[:-1]).get("enum", ())]
        shown = ", ".join(codes[:8]) + (", …" if len(codes) > 8 else "")
        return [(where, f"not one of the allowed codes ({shown})")]
    if name == "const":
        if err.instance_path and err.instance_path[-1] == "resourceType":
            return [(where, f"wrong resource type: expected {s.node(spath[:-1]).get('const')}")]
        return [(where, "not the fixed value")]
    if name == "pattern":
        fhir_type = (
            str(spath[-2])
            if len(spath) >= 3 and spath[-3] == "definitions"
            else s.pattern_types.get(kind.pattern)
        )
        if fhir_type in ("string", "markdown"):
            return [(where, f"not a valid {fhir_type}: empty, or with control characters")]
        return [(where, f"not a valid {fhir_type}" if fhir_type else "not in the required format")]
    if name == "format":
        return [(where, "not a valid date: no such day")]
    if name == "type":
        expected = " or ".join(str(t) for t in kind.types if t != "null")
        if len(spath) >= 3 and spath[-3] == "definitions":
            fhir_type = str(spath[-2])
            if fhir_type[:1].isupper():
                return [(where, f"wrong type: expected an object ({fhir_type})")]
            return [(where, f"wrong type: expected {fhir_type} (a JSON {expected})")]
        return [(where, f"wrong type: expected {'a list' if expected == 'array' else expected}")]
    return [(where, f"not valid ({name})")]


@cache
def _r5_model(resource_type: str) -> type[BaseModel] | None:
    try:
        model: type[BaseModel] = get_r5_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    return model


def validate_r5(resource: Mapping[str, Any]) -> None:
    """Raise :class:`ResourceInvalid` when ``resource`` is not a valid R5 resource of its type
    (e.g. an R4 ``CarePlan.activity.detail`` or ``activity.reference`` is refused)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ResourceInvalid("Resource", [("resourceType", "missing")], "R5")
    model = _r5_model(rtype)
    if model is None:
        raise ResourceInvalid(rtype, [("resourceType", f"unknown resource type {rtype!r}")], "R5")
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        issues = [
            (
                ".".join([rtype, *(str(p) for p in err.get("loc", ()))]),
                str(err.get("msg", "invalid"))[:300],
            )
            for err in exc.errors()[:MAX_ISSUES]
        ]
        raise ResourceInvalid(rtype, issues, "R5") from None
