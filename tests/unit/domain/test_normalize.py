"""Normaliser: every encoding of CONTRACT §4, one case per test id."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from shared.domain.facts import PatientFacts
from shared.domain.normalize import (
    normalize,
    parse_levels,
    side_from_codings,
    side_from_text,
)
from shared.fhir.bundle import flatten, resolve
from tests.unit.fhirfactory import LN, RX, SCT, block, patient, reading, subj


def facts_of(resources: list[dict[str, Any]], pid: str = "P-1") -> PatientFacts:
    return normalize(resolve((None, r) for r in [patient(pid), *resources]))[f"Patient/{pid}"]


@pytest.mark.parametrize(
    ("text", "joints"),
    [
        pytest.param("Right L4-5 and L5-S1", ("L4-L5", "L5-S1"), id="right-L4-5-and-L5-S1"),
        pytest.param("L4/5", ("L4-L5",), id="slash-L4/5"),
        pytest.param("C2-3", ("C2-C3",), id="third-occipital-C2-3"),
        pytest.param("R L4/5 and L5/S1", ("L4-L5", "L5-S1"), id="R-L4/5-and-L5/S1"),
        pytest.param("C7-T1", ("C7-T1",), id="cervicothoracic-junction"),
        pytest.param("T12-L1", ("T12-L1",), id="thoracolumbar-junction"),
        pytest.param("L3-L5", ("L3-L4", "L4-L5"), id="range-names-each-joint"),
        pytest.param("Lumbar medial branch block (diagnostic)", (), id="no-level-in-text"),
        pytest.param("T1-weighted MRI", (), id="no-false-level"),
    ],
)
def test_free_text_levels(text: str, joints: tuple[str, ...]) -> None:
    assert parse_levels(text) == joints


@pytest.mark.parametrize(
    ("code", "side"),
    [
        pytest.param("419161000", "left", id="R4-left"),
        pytest.param("419465000", "right", id="R4-right"),
        pytest.param("51440002", "bilateral", id="bilateral"),
        pytest.param("7771000", "left", id="R5-left"),
        pytest.param("24028007", "right", id="R5-right"),
    ],
)
def test_laterality_codes_r4_and_r5(code: str, side: str) -> None:
    assert side_from_codings([{"coding": [{"system": SCT, "code": code}]}]) == side


@pytest.mark.parametrize(
    ("text", "side"),
    [
        pytest.param("Right low back", "right", id="word-right"),
        pytest.param("LEFT L4-5", "left", id="word-any-case"),
        pytest.param("R L4/5", "right", id="upper-case-R"),
        pytest.param("L L4/5", "left", id="upper-case-L"),
        pytest.param("64635-RT", "right", id="modifier-RT"),
        pytest.param("64493-50", "bilateral", id="modifier-50"),
        pytest.param("right and left", "bilateral", id="both-words"),
        pytest.param("L4-5 r l", None, id="lower-case-letters-ignored"),
        pytest.param("L5-S1", None, id="level-letters-are-not-sides"),
    ],
)
def test_side_from_text(text: str, side: str | None) -> None:
    assert side_from_text(text) == side


def test_target_body_structure_extension_gives_joints_and_side() -> None:
    proc = block("mbb-1", "2025-02-03 09:00", side=None, joints=())
    del proc["bodySite"]
    proc["extension"] = [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/procedure-targetBodyStructure",
            "valueReference": {"reference": "BodyStructure/bs-1"},
        }
    ]
    bs = {
        "resourceType": "BodyStructure",
        "id": "bs-1",
        "patient": subj("P-1"),
        "location": {"coding": [{"system": "urn:pinpoint:spinal-joint", "code": "C5-C6"}]},
        "locationQualifier": [{"coding": [{"system": SCT, "code": "419161000"}]}],
    }
    iv = facts_of([proc, bs]).interventions[0]
    assert (iv.region, iv.joints, iv.side) == ("cervical", ("C5-C6",), "left")


def test_contained_body_structure_r5_shape() -> None:
    proc = block("mbb-1", "2025-02-03 09:00", side=None, joints=())
    del proc["bodySite"]
    proc["contained"] = [
        {
            "resourceType": "BodyStructure",
            "id": "bs",
            "includedStructure": [
                {
                    "structure": {"coding": [{"system": "urn:pinpoint:spinal-joint", "code": "L5-S1"}]},
                    "laterality": {"coding": [{"system": SCT, "code": "24028007"}]},
                }
            ],
        }
    ]
    proc["extension"] = [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/procedure-targetBodyStructure",
            "valueReference": {"reference": "#bs"},
        }
    ]
    iv = facts_of([proc]).interventions[0]
    assert (iv.joints, iv.side) == (("L5-S1",), "right")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"valueInteger": 7}, 7.0, id="valueInteger"),
        pytest.param({"valueQuantity": {"value": 6, "unit": "{score}"}}, 6.0, id="valueQuantity-score"),
        pytest.param({"valueString": "5"}, 5.0, id="valueString-number"),
        pytest.param({"valueString": " 1.5 "}, 1.5, id="valueString-decimal"),
        pytest.param(
            {"valueCodeableConcept": {"coding": [{"system": LN, "code": "LA10139-6"}]}},
            7.0,
            id="LOINC-answer-LA10139-6-is-7",
        ),
        pytest.param(
            {"valueCodeableConcept": {"coding": [{"system": LN, "code": "LA13942-0"}]}},
            10.0,
            id="LOINC-answer-LA13942-0-is-10",
        ),
    ],
)
def test_pain_values(value: dict[str, Any], expected: float) -> None:
    obs = reading("o", "2025-02-03 09:00", 0)
    del obs["valueInteger"]
    obs.update(value)
    assert facts_of([obs]).readings[0].value == expected


def test_value_string_that_is_not_a_number_is_ignored() -> None:
    obs = reading("o", "2025-02-03 09:00", 0)
    del obs["valueInteger"]
    obs["valueString"] = "severe"
    assert facts_of([obs]).readings == ()


@pytest.mark.parametrize(
    ("unit", "expected"),
    [pytest.param("mm", 62.0, id="VAS-mm"), pytest.param("cm", 62.0, id="VAS-cm-times-10")],
)
def test_vas_units(unit: str, expected: float) -> None:
    obs = reading("o", "2025-02-03 09:00", 0, scale="38214-3")
    del obs["valueInteger"]
    obs["valueQuantity"] = {"value": 62 if unit == "mm" else 6.2, "unit": unit, "code": unit}
    got = facts_of([obs]).readings[0]
    assert got.scale == "38214-3"
    assert got.value == pytest.approx(expected)


def test_effective_period_start_is_the_time() -> None:
    obs = reading("o", "2025-02-03 09:00", 4)
    del obs["effectiveDateTime"]
    obs["effectivePeriod"] = {"start": "2025-02-03T09:40:00-05:00"}
    assert facts_of([obs]).readings[0].time.isoformat() == "2025-02-03T09:40:00-05:00"


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "preliminary"])
def test_void_observations_never_count(status: str) -> None:
    assert facts_of([reading("o", "2025-02-03 09:00", 4, status=status)]).readings == ()


def test_void_procedures_never_count() -> None:
    assert facts_of([block("b", "2025-02-03 09:00", status="entered-in-error")]).interventions == ()


def test_amended_observation_replaces_original_same_id() -> None:
    original = reading("o", "2025-02-03 09:00", 6)
    amended = reading("o", "2025-02-03 09:00", 1, status="amended")
    for order in ([original, amended], [amended, original]):
        readings = facts_of(list(order)).readings
        assert [r.value for r in readings] == [1.0]


def test_corrected_observation_replaces_original_named_in_derived_from() -> None:
    original = reading("o1", "2025-02-03 09:00", 6)
    corrected = reading("o2", "2025-02-03 09:00", 1, status="corrected")
    corrected["derivedFrom"] = [{"reference": "Observation/o1"}]
    assert [r.ref for r in facts_of([original, corrected]).readings] == ["Observation/o2"]


def test_amended_observation_replaces_original_with_same_identifier() -> None:
    original = reading("o1", "2025-02-03 09:00", 6)
    amended = reading("o2", "2025-02-03 09:00", 1, status="amended")
    for r in (original, amended):
        r["identifier"] = [{"system": "urn:ehr:obs", "value": "42"}]
    assert [r.ref for r in facts_of([original, amended]).readings] == ["Observation/o2"]


def test_injectate_from_medication_administration_part_of() -> None:
    proc = block("mbb-1", "2025-02-03 09:00", agent=None)
    ma = {
        "resourceType": "MedicationAdministration",
        "id": "ma",
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": RX, "code": "35780"}]},
        "subject": subj("P-1"),
        "effectiveDateTime": "2025-02-03T09:05:00-05:00",
        "partOf": [{"reference": "Procedure/mbb-1"}],
        "dosage": {"dose": {"value": 7.5, "unit": "mg"}},
    }
    assert facts_of([proc, ma]).interventions[0].injectate.agent == "ropivacaine"


@pytest.mark.parametrize(
    ("used", "agent", "steroid", "mg"),
    [
        pytest.param([{"text": "0.5% bupivacaine"}], "bupivacaine", None, None, id="text-bupivacaine"),
        pytest.param(
            [{"text": "triamcinolone 40 mg"}], "unknown", "triamcinolone", 40.0, id="text-steroid-dose"
        ),
        pytest.param(
            [{"coding": [{"system": RX, "code": "6387"}]}, {"coding": [{"system": RX, "code": "1815"}]}],
            "mixed",
            None,
            None,
            id="two-agents-mixed",
        ),
        pytest.param(
            [{"coding": [{"system": RX, "code": "3264"}], "text": "dexamethasone 10 mg"}],
            "unknown",
            "dexamethasone",
            10.0,
            id="rxnorm-dexamethasone",
        ),
    ],
)
def test_injectate_from_used_code(
    used: list[dict[str, Any]], agent: str, steroid: str | None, mg: float | None
) -> None:
    proc = block("b", "2025-02-03 09:00", agent=None, category=None)
    proc["usedCode"] = used
    iv = facts_of([proc]).interventions[0]
    assert (iv.injectate.agent, iv.injectate.steroid, iv.injectate.steroid_mg) == (agent, steroid, mg)
    assert iv.diagnostic == (steroid is None)  # a corticosteroid means therapeutic


@pytest.mark.parametrize(
    ("text", "ia"),
    [
        pytest.param("Lumbar facet intra-articular injection", True, id="intra-articular"),
        pytest.param("facet intraarticular", True, id="intraarticular"),
        pytest.param("Facet IA injection L4-5", True, id="upper-case-IA"),
        pytest.param("medial branch block via", False, id="medial-branch"),
    ],
)
def test_intra_articular_vs_medial_branch(text: str, ia: bool) -> None:
    proc = block("b", "2025-02-03 09:00", text=text)
    assert facts_of([proc]).interventions[0].intra_articular is ia


def test_sedation_from_procedure_and_iv_medication() -> None:
    sed = {
        "resourceType": "Procedure",
        "id": "sed",
        "status": "completed",
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99152"}]},
        "subject": subj("P-1"),
        "performedPeriod": {"start": "2025-02-03T08:55:00-05:00", "end": "2025-02-03T09:25:00-05:00"},
    }
    facts = facts_of([block("b", "2025-02-03 09:00"), sed])
    assert [s.agent for s in facts.sedations] == ["procedure"]


def test_conditions_onset_fallbacks_and_region() -> None:
    cond = {
        "resourceType": "Condition",
        "id": "c",
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.16"}]},
        "subject": subj("P-1"),
        "onsetPeriod": {"start": "2025-05-01"},
    }
    rec = {**cond, "id": "c2", "recordedDate": "2025-05-10"}
    del rec["onsetPeriod"]
    facts = facts_of([cond, rec])
    assert [(c.onset, c.region) for c in facts.conditions] == [
        (date(2025, 5, 1), "lumbar"),
        (date(2025, 5, 10), "lumbar"),
    ]


def test_condition_with_codes_of_two_regions_reads_the_same_whatever_the_order() -> None:
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    codings = [{"system": icd, "code": "M54.2"}, {"system": icd, "code": "M54.5"}]
    regions = set()
    for order in (codings, codings[::-1]):
        cond = {"resourceType": "Condition", "id": "c", "code": {"coding": order}, "subject": subj("P-1")}
        (fact,) = facts_of([cond]).conditions
        assert fact.codes == ("M542", "M545")
        regions.add(fact.region)
    assert regions == {"cervical"}


def test_order_requested_date_and_filters() -> None:
    base = {
        "resourceType": "ServiceRequest",
        "intent": "order",
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "64635"}]},
        "subject": subj("P-1"),
        "authoredOn": "2025-03-10T08:00:00-05:00",
    }
    draft = {**base, "id": "a", "status": "draft"}
    active_done = {**base, "id": "b", "status": "active"}
    done = block("done", "2025-03-12 09:00", codes=("64635",))
    done["basedOn"] = [{"reference": "ServiceRequest/b"}]
    own = {
        **base,
        "id": "c",
        "status": "draft",
        "identifier": [{"system": "urn:pinpoint:recommendation", "value": "x"}],
    }
    proposal = {**base, "id": "d", "status": "draft", "intent": "proposal"}
    facts = facts_of([draft, active_done, done, own, proposal])
    assert [(o.ref, o.requested) for o in facts.orders] == [("ServiceRequest/a", date(2025, 3, 10))]


def test_two_patients_are_kept_apart() -> None:
    res = [
        patient("A"),
        patient("B"),
        reading("ra", "2025-02-03 09:00", 7, pid="A"),
        reading("rb", "2025-02-03 09:00", 3, pid="B"),
    ]
    facts = normalize(resolve((None, r) for r in res))
    assert {k: [r.value for r in f.readings] for k, f in facts.items()} == {
        "Patient/A": [7.0],
        "Patient/B": [3.0],
    }


def test_urn_uuid_references_resolve_through_the_bundle() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                "resource": {"resourceType": "Patient", "gender": "female"},
            },
            {
                "fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
                "resource": {
                    **reading("x", "2025-02-03 09:00", 5),
                    "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                },
            },
        ],
    }
    facts = normalize(resolve(flatten(bundle)))
    assert list(facts) == ["Patient/11111111-1111-1111-1111-111111111111"]
    assert facts["Patient/11111111-1111-1111-1111-111111111111"].sex == "female"
