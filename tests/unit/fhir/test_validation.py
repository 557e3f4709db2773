"""FHIR R4 validation (``shared.fhir.resources.validate_r4``): the official R4 JSON schema plus the
rules it leaves out, with issues a person can act on.

- The rules table is what the fhir.resources R4B models say (recomputed here; fails on drift).
- Differential: every resource of every corpus the suite has is judged as the R4B models judge
  it, except the short list of known differences below, each with its reason.
- Mutations of valid resources are refused at the right element, without quoting the payload.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.fhir.resources import RULES_FILE, ResourceInvalid, is_known_type, validate_r4
from tests.conftest import FIXTURES, shared_corpus
from tests.fakes.fhir_server import dicts_in
from tests.unit.fhir import r4_rules

#: Resources the R4B models and FHIR R4 judge differently, and why: (file name, resource id).
KNOWN_DIFFERENCES = {
    # Expression.language: R4 binds it to a required value set of three codes; R4B widened it
    # (``text/cql-identifier``, ``text/cql-expression``)
    ("cpg-r4-requestgroup-hypervolemia.json", "chf-scenario1-hypervolemia"),
}


def _documents(path: Path) -> Iterator[Any]:
    if path.suffix == ".ndjson":
        for line in path.read_bytes().splitlines():
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
        return
    try:
        yield orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return


def _resources(node: Any) -> Iterator[dict[str, Any]]:
    """Every resource inside a document (Bundle entries, CDS Hooks prefetch, Parameters), Bundles
    themselves left out (their entries are judged one by one)."""
    for d in dicts_in(node):
        rtype = d.get("resourceType")
        if isinstance(rtype, str) and rtype != "Bundle" and is_known_type(rtype):
            yield d


def _r4b_accepts(resource: dict[str, Any]) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except (ValueError, TypeError):
        return False
    return True


def _r4_accepts(resource: dict[str, Any]) -> bool:
    try:
        validate_r4(resource)
    except ResourceInvalid:
        return False
    return True


def _disagreements(root: Path) -> tuple[int, list[tuple[str, str, bool]]]:
    judged, out = 0, []
    for path in sorted([*root.rglob("*.json"), *root.rglob("*.ndjson")]):
        for doc in _documents(path):
            for resource in _resources(doc):
                judged += 1
                r4b = _r4b_accepts(resource)
                if r4b != _r4_accepts(resource) and (path.name, resource.get("id")) not in KNOWN_DIFFERENCES:
                    out.append((str(path.relative_to(root)), str(resource.get("id")), r4b))
    return judged, out


def test_the_rules_table_is_what_the_r4b_models_say() -> None:
    assert json.loads(RULES_FILE.read_text()) == r4_rules.compute(), (
        "regenerate: .venv/bin/python -m tests.unit.fhir.r4_rules > shared/fhir/fhir-r4-rules.json"
    )


def test_every_fixture_is_judged_as_the_r4b_models_judge_it() -> None:
    judged, disagreements = _disagreements(FIXTURES)
    assert judged > 1000
    assert disagreements == []


@pytest.mark.corpus
@pytest.mark.parametrize("corpus", ["vectors", "realdata"])
def test_every_shared_corpus_resource_is_judged_as_the_r4b_models_judge_it(corpus: str) -> None:
    judged, disagreements = _disagreements(shared_corpus(corpus))
    assert judged > 0
    assert disagreements == []


def _issues(resource: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ResourceInvalid) as caught:
        validate_r4(resource)
    return caught.value.issues


def _observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "pain-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}], "text": "Pain severity"},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-01-20T10:00:00-05:00",
        "valueQuantity": {"value": 7, "unit": "{score}"},
        "component": [{"code": {"text": "worst"}, "valueQuantity": {"value": 9}}],
    }


def test_a_valid_observation_passes_and_its_required_status_may_be_an_extension() -> None:
    validate_r4(_observation())
    absent = {k: v for k, v in _observation().items() if k != "status"}
    validate_r4(
        {**absent, "_status": {"extension": [{"url": "http://example.org/why", "valueCode": "asked"}]}}
    )
    assert _issues(absent) == [("Observation.status", "required element missing")]
    assert _issues({**absent, "_status": {"id": "x"}}) == [("Observation.status", "required element missing")]


SECRET = "Jane-Doe-1961"

#: (mutation, the issue expected): each breaks one rule of a valid Observation
MUTATIONS: list[tuple[str, Any, tuple[str, str]]] = [
    ("unknown element", lambda r: r.update(painNote=SECRET), ("Observation.painNote", "unknown element")),
    (
        "bad date",
        lambda r: r.update(effectiveDateTime=f"{SECRET}-13-45"),
        ("Observation.effectiveDateTime", "not a valid dateTime"),
    ),
    (
        "a day the calendar lacks",
        lambda r: r.update(effectiveDateTime="2021-02-29T10:00:00Z"),
        ("Observation.effectiveDateTime", "not a valid date: no such day"),
    ),
    (
        "bad code",
        lambda r: r.update(status=SECRET),
        (
            "Observation.status",
            "not one of the allowed codes (registered, preliminary, final, amended, corrected, "
            "cancelled, entered-in-error, unknown)",
        ),
    ),
    (
        "wrong type (decimal)",
        lambda r: r["valueQuantity"].update(value=SECRET),
        ("Observation.valueQuantity.value", "not a valid decimal"),
    ),
    (
        "wrong type (complex)",
        lambda r: r.update(code=SECRET),
        ("Observation.code", "wrong type: expected an object (CodeableConcept)"),
    ),
    (
        "wrong type (list)",
        lambda r: r.update(component={"code": {"text": SECRET}}),
        ("Observation.component", "wrong type: expected a list"),
    ),
    ("missing complex", lambda r: r.pop("code"), ("Observation.code", "required element missing")),
    ("missing primitive", lambda r: r.pop("status"), ("Observation.status", "required element missing")),
    (
        "null in a list of complex",
        lambda r: r["component"].append(None),
        ("Observation.component[1]", "wrong type: expected an object (Observation_Component)"),
    ),
    (
        "nested required",
        lambda r: r["component"][0].pop("code"),
        ("Observation.component[0].code", "required element missing"),
    ),
    (
        "two types of a choice",
        lambda r: r.update(valueString=SECRET),
        ("Observation.value[x]", "more than one type given"),
    ),
    (
        "extension without url",
        lambda r: r.update(extension=[{"valueString": SECRET}]),
        ("Observation.extension[0].url", "required element missing"),
    ),
    (
        "contained resource checked against its own type",
        lambda r: r.update(contained=[{"resourceType": "Patient", "id": "p", "gender": SECRET}]),
        ("Observation.contained[0].gender", "not one of the allowed codes (male, female, other, unknown)"),
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _n, m, e in MUTATIONS], ids=[n for n, *_ in MUTATIONS]
)
def test_a_mutation_is_refused_at_its_element_without_quoting_the_payload(mutate: Any, expected: Any) -> None:
    resource = _observation()
    mutate(resource)
    issues = _issues(resource)
    assert issues == [expected]
    assert SECRET not in str(issues)


#: mutations that touch different elements, so any of them may be combined
INDEPENDENT = [
    m
    for m in MUTATIONS
    if m[0] not in ("wrong type (list)", "missing primitive", "missing complex", "a day the calendar lacks")
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(INDEPENDENT), min_size=1, max_size=5, unique_by=lambda m: m[0]))
def test_mutations_together_are_each_named(picked: list[tuple[str, Any, tuple[str, str]]]) -> None:
    resource = copy.deepcopy(_observation())
    for _name, mutate, _expected in picked:
        mutate(resource)
    issues = _issues(resource)
    assert {expected for _n, _m, expected in picked} <= set(issues)
    assert SECRET not in str(issues)


def test_at_most_ten_issues_and_unknown_types_are_named() -> None:
    resource = {**_observation(), **{f"extra{i}": SECRET for i in range(30)}}
    assert len(_issues(resource)) == 10
    assert _issues({"resourceType": "Painting"}) == [
        ("Painting.resourceType", "not a known FHIR R4 resource type")
    ]
    assert _issues({"status": "final"}) == [("Resource.resourceType", "required element missing")]


def test_numbers_sent_as_text_are_accepted_as_the_r4b_models_accepted_them() -> None:
    resource = _observation()
    resource["valueQuantity"]["value"] = "7.5"
    validate_r4(resource)
    assert _issues({**resource, "valueInteger": 1.5, "valueQuantity": None}) != []


def test_nulls_lining_a_primitive_list_up_with_its_extensions_are_accepted() -> None:
    absent = {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
        ]
    }
    validate_r4({"resourceType": "Patient", "name": [{"given": ["Ann", None], "_given": [None, absent]}]})
    assert _issues({"resourceType": "Patient", "name": [{"given": ["Ann", 5]}]}) == [
        ("Patient.name[0].given[1]", "wrong type: expected string")
    ]
