"""Minimum necessary (CONTRACT §2): what Pinpoint keeps and what it drops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.domain import terminology as t
from shared.domain.normalize import normalize
from shared.domain.relevance import classify, patient_reference
from shared.fhir.bundle import flatten, resolve
from tests.conftest import shared_corpus
from tests.unit.fhirfactory import CPT, RX, SCT, block, patient, reading, subj


def proc(code: str, system: str = CPT, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": "p",
        "status": "completed",
        "subject": subj("P-1"),
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }


def med(kind: str, code: str, route: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": kind,
        "id": "m",
        "status": "completed",
        "subject": subj("P-1"),
        "medicationCodeableConcept": {"coding": [{"system": RX, "code": code}]},
    }
    if route:
        res["dosage"] = {"route": {"coding": [{"system": SCT, "code": route}]}}
    return res


@pytest.mark.parametrize(
    ("resource", "kept", "category"),
    [
        pytest.param(patient(), True, "patient", id="patient"),
        pytest.param(block("b", "2025-02-03 09:00"), True, "intervention", id="medial-branch-block"),
        pytest.param(proc("18286008", SCT), False, "procedure", id="cardiac-ablation-dropped"),
        pytest.param(proc("18946005", SCT), False, "procedure", id="labour-epidural-dropped"),
        pytest.param(proc("99152"), True, "sedation", id="moderate-sedation"),
        pytest.param(proc("97110"), True, "conservative-care", id="physical-therapy"),
        pytest.param(
            proc("96372", usedCode=[{"text": "ceftriaxone 1 g IM"}]),
            False,
            "procedure",
            id="intramuscular-antibiotic-dropped",
        ),
        pytest.param(
            proc("96372", usedCode=[{"text": "triamcinolone 40 mg IM"}]),
            True,
            "steroid-injection",
            id="intramuscular-steroid-kept",
        ),
        pytest.param(reading("o", "2025-02-03 09:00", 5), True, "pain-score", id="pain-score"),
        pytest.param(
            {
                "resourceType": "Observation",
                "id": "hr",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            },
            False,
            "observation",
            id="heart-rate-dropped",
        ),
        pytest.param(
            {"resourceType": "Observation", "id": "t", "code": {"text": "Thigh thrust test"}},
            True,
            "provocation-test",
            id="provocation-test",
        ),
        pytest.param(
            med("MedicationAdministration", "6960", "47625008"), True, "sedation", id="iv-midazolam"
        ),
        pytest.param(med("MedicationStatement", "7258"), True, "conservative-care", id="naproxen"),
        pytest.param(
            med("MedicationAdministration", "10759"), True, "steroid-injection", id="steroid-injection"
        ),
        pytest.param(
            med("MedicationRequest", "10759", "26643006"), False, "medication", id="oral-steroid-dropped"
        ),
        pytest.param(med("MedicationRequest", "1191"), False, "medication", id="aspirin-dropped"),
        pytest.param(
            {
                "resourceType": "ServiceRequest",
                "id": "s",
                "code": {"coding": [{"system": CPT, "code": "64635"}]},
            },
            True,
            "order",
            id="rfa-order",
        ),
        pytest.param(
            {
                "resourceType": "ServiceRequest",
                "id": "s",
                "identifier": [{"system": "urn:pinpoint:recommendation", "value": "x"}],
                "code": {"coding": [{"system": CPT, "code": "64635"}]},
            },
            False,
            "own-proposal",
            id="own-proposal-dropped",
        ),
        pytest.param({"resourceType": "Encounter", "id": "e"}, False, "encounter", id="encounter-dropped"),
        pytest.param(
            {"resourceType": "BodyStructure", "id": "b"}, True, "body-structure", id="body-structure"
        ),
    ],
)
def test_classify(resource: dict[str, Any], kept: bool, category: str) -> None:
    rel = classify(resource)
    assert (rel.kept, rel.category) == (kept, category)
    assert rel.kept or rel.reason


def test_patient_reference() -> None:
    assert patient_reference(patient("X")) == "Patient/X"
    assert patient_reference(reading("o", "2025-02-03 09:00", 1, pid="Y")) == "Patient/Y"
    assert (
        patient_reference({"resourceType": "BodyStructure", "patient": {"reference": "Patient/Z"}})
        == "Patient/Z"
    )
    assert patient_reference({"resourceType": "Medication"}) is None


def test_nested_message_bundles_are_unwrapped() -> None:
    inner = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [{"resource": patient("N")}, {"fullUrl": "x"}],
    }
    outer = {"resourceType": "Bundle", "type": "message", "entry": [{"resource": inner}]}
    assert [r["id"] for _, r in flatten(outer)] == ["N"]


def test_identity_rule_id_then_urn_uuid_then_hash() -> None:
    res = resolve(
        [
            (None, {"resourceType": "Patient", "id": "a"}),
            ("urn:uuid:abc", {"resourceType": "Patient"}),
            (None, {"resourceType": "Patient", "gender": "male"}),
        ]
    )
    assert res[0]["id"] == "a"
    assert res[1]["id"] == "abc"
    assert len(res[2]["id"]) == 32
    again = resolve([(None, {"resourceType": "Patient", "gender": "male"})])
    assert again[0]["id"] == res[2]["id"]


def _corpus_files() -> list[Path]:
    root = shared_corpus("realdata")
    return sorted(p for p in root.rglob("*") if p.suffix in (".json", ".ndjson") and p.is_file())


def _load(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        docs = [json.loads(text)]
    except json.JSONDecodeError:
        docs = []
        for line in text.splitlines():
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    out: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, dict) and "resourceType" in doc:
            out += resolve(flatten(doc))
    return out


@pytest.mark.corpus
def test_real_data_never_reads_ablation_or_labour_epidural_as_pain_interventions() -> None:
    files = _corpus_files()
    assert files
    interventions = 0
    for path in files:
        resources = _load(path)
        kept = [r for r in resources if classify(r).kept]
        for r in resources:
            code = r.get("code") if isinstance(r.get("code"), dict) else {}
            codes = {c.get("code") for c in code.get("coding", []) if isinstance(c, dict)}
            if r.get("resourceType") == "Procedure" and codes & {"18286008", "18946005"}:
                assert classify(r).category != "intervention", path
        for facts in normalize(kept).values():
            interventions += len(facts.interventions)
    assert interventions == 0  # the corpus has no spinal injections, blocks or ablations


def test_each_rxnorm_code_names_one_agent_of_one_class() -> None:
    tables = (t.LOCAL_ANAESTHETICS, t.STEROIDS, t.SEDATIVES, t.NSAIDS)
    assert len(t.RXNORM_NAMES) == sum(map(len, tables))  # no code in two classes
    assert all(t.RXNORM_NAMES[code] == name for table in tables for code, name in table.items())
