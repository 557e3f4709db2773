"""The outcome Observations Pinpoint writes back (issue 19), built from worked case f05's
``outcomes``: R4B-valid (and R4 JSON schema), the right references, text a person can read,
withdrawal, R5 form, and how a CarePlan refers to an Observation of another transaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.recommender.assessor import Assessor
from services.recommender.suggestions import builders as sg
from services.recommender.suggestions import outcome_obs
from services.recommender.writeback import linked_references, to_r5
from shared.domain.relevance import classify
from shared.fhir.resources import validate_r4, validate_r5
from tests.api.recommender.helpers import assert_valid_r4
from tests.conftest import FIXTURES

F05 = FIXTURES / "vignettes" / "f05-outcomes-relief-duration-censoring"
KEY = "hosp:P-001"
RFA1 = {
    "procedure": "Procedure/rfa-1",
    "pathway": "facet-rfa",
    "target": {"region": "lumbar", "side": "right", "joints": ["L4-L5", "L5-S1"]},
    "performed": "2024-01-08T09:15:00-05:00",
}


@pytest.fixture(scope="module")
def entry() -> dict[str, Any]:
    bundle = json.loads((F05 / "bundle.json").read_text())
    now = datetime.fromisoformat(json.loads((F05 / "expected.json").read_text())["now"])
    resources = [e["resource"] for e in bundle["entry"]]
    return Assessor.load("cms-lcd").patient_entry(resources, "Patient/P-001", now)


@pytest.fixture(scope="module")
def groups(entry: dict[str, Any]) -> list[sg.Group]:
    return sg.desired_groups(KEY, entry, Assessor.load("cms-lcd").ref)


def _comp(obs: dict[str, Any], code: str) -> dict[str, Any]:
    (c,) = [c for c in obs["component"] if c["code"]["coding"][0]["code"] == code]
    return dict(c)


def test_one_observation_group_per_procedure_before_the_careplans(groups: list[sg.Group]) -> None:
    assert [(g.kind, g.key) for g in groups] == [
        ("outcome", "hosp:P-001:outcome:rfa-1"),
        ("outcome", "hosp:P-001:outcome:rfa-2"),
        ("assessment", "hosp:P-001:facet-rfa-repeat:lumbar:right:L4-L5+L5-S1"),
    ]
    for g in groups:
        for m in g.members:
            resource = sg.with_meta(m.body, 1, datetime(2025, 2, 1, tzinfo=UTC))
            validate_r4(resource)
            assert_valid_r4(resource)


def test_the_observation_refers_to_procedure_patient_and_sources(groups: list[sg.Group]) -> None:
    obs = groups[0].members[0].body
    assert obs["identifier"] == [{"system": sg.SYSTEM, "value": "hosp:P-001:outcome:rfa-1"}]
    assert obs["id"] == sg.resource_id("hosp:P-001:outcome:rfa-1")  # the same on every replica and run
    assert obs["subject"] == {"reference": "Patient/P-001"}
    assert [f["reference"] for f in obs["focus"]] == ["Procedure/rfa-1"]
    assert "partOf" not in obs
    assert obs["code"]["coding"] == [
        {
            "system": "urn:pinpoint:outcome",
            "code": "procedure-outcome",
            "display": "Outcome of an interventional pain procedure against its baseline",
        }
    ]
    derived = [d["reference"] for d in obs["derivedFrom"]]
    used = ["rfa-1-pre", "odi-baseline", "o-1", "o-2", "odi-2", "o-3", "odi-3"]
    assert derived == [f"Observation/{i}" for i in used]
    assert obs["effectivePeriod"] == {"start": "2024-01-08T09:15:00-05:00", "end": "2024-07-08"}
    # the group's inputs (its Provenance entities): the Procedure and every source
    assert groups[0].inputs == ("Procedure/rfa-1", *derived)


def test_components_carry_ucum_units_and_absent_reasons(groups: list[sg.Group]) -> None:
    rfa1 = groups[0].members[0].body
    rfa2 = groups[1].members[0].body
    ucum = "http://unitsofmeasure.org"
    assert _comp(rfa1, "baseline-pain")["valueQuantity"] == {"value": 8, "unit": "score", "system": ucum,
                                                              "code": "{score}"}  # fmt: skip
    assert _comp(rfa1, "baseline-odi")["valueQuantity"]["code"] == "%"
    assert _comp(rfa1, "pain-relief-1m")["valueQuantity"] == {"value": 75.0, "unit": "%", "system": ucum,
                                                               "code": "%"}  # fmt: skip
    assert _comp(rfa1, "odi-6m")["valueQuantity"]["value"] == 20
    assert _comp(rfa1, "odi-change-6m")["valueQuantity"]["value"] == 20
    assert _comp(rfa1, "odi-1m")["dataAbsentReason"]["coding"][0]["code"] == "not-performed"  # no ODI then
    assert _comp(rfa1, "pain-relief-12m")["dataAbsentReason"]["coding"][0]["code"] == "not-applicable"
    assert _comp(rfa1, "relief-duration")["valueQuantity"] == {"value": 182, "unit": "days", "system": ucum,
                                                                "code": "d"}  # fmt: skip
    assert _comp(rfa1, "relief-censored")["valueBoolean"] is False
    assert _comp(rfa1, "days-to-next-procedure")["valueQuantity"]["value"] == 287
    assert _comp(rfa2, "relief-censored")["valueBoolean"] is True
    assert _comp(rfa2, "pain-relief-6m")["dataAbsentReason"]["coding"][0]["code"] == "temp-unknown"
    assert not [c for c in rfa2["component"] if c["code"]["coding"][0]["code"] == "days-to-next-procedure"]
    assert (rfa1["status"], rfa2["status"]) == ("final", "preliminary")


def test_the_text_is_for_a_person(groups: list[sg.Group]) -> None:
    rfa1 = groups[0].members[0].body
    text = rfa1["note"][0]["text"]
    assert text.startswith(
        "Outcome of facet radiofrequency ablation at the right lumbar L4-L5, L5-S1 on 8 Jan 2024."
    )
    assert (
        "At 3 months: 62.5 % pain relief (pain 3 on 8 Apr 2024); Oswestry Disability Index 22, change 18 "
        "towards better, reaching the minimal clinically important difference."
    ) in text
    assert "At 12 months: the next procedure came first." in text
    assert (
        "Relief of at least 50 % lasted 182 days. Next procedure on the same target after 287 days." in text
    )
    rfa2 = groups[1].members[0].body["note"][0]["text"]
    assert "lasted 91 days and still ongoing at the last reading" in rfa2
    assert "At 6 months: still to come (21 Apr 2025)." in rfa2
    for banned in ("None", "P-001", "72514-3", "urn:"):
        assert banned not in text and banned not in rfa2
    assert rfa1["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml"><p>Outcome of')


def test_the_careplan_activity_outcome_reference(groups: list[sg.Group]) -> None:
    plan = groups[2].members[0].body
    ids = [g.members[0].resource_id for g in groups[:2]]
    assert plan["activity"][0] == {
        "reference": {"reference": f"ServiceRequest/{groups[2].members[1].resource_id}"}
    }
    assert [[r["reference"] for r in a["outcomeReference"]] for a in plan["activity"][1:]] == [
        ["Procedure/rfa-1", f"Observation/{ids[0]}"],
        ["Procedure/rfa-2", f"Observation/{ids[1]}"],
    ]
    # other targets get none: the left side, another region
    other = {"region": "lumbar", "side": "left", "joints": ["L4-L5"]}
    assert sg.outcome_activities(KEY, other, [RFA1]) == []
    cervical = {"region": "cervical", "side": "right", "joints": ["C5-C6"]}
    assert sg.outcome_activities(KEY, cervical, [RFA1]) == []
    bilateral = {"region": "lumbar", "side": "bilateral", "joints": ["L5-S1"]}
    assert len(sg.outcome_activities(KEY, bilateral, [RFA1])) == 1


def test_a_vanished_outcome_is_entered_in_error(groups: list[sg.Group]) -> None:
    obs = groups[0].members[0].body
    gone = sg.withdrawn(obs)
    assert gone["status"] == "entered-in-error" and sg.is_withdrawn(gone)
    validate_r4(sg.with_meta(gone, 2, datetime(2025, 2, 1, tzinfo=UTC)))


def test_r5_form(groups: list[sg.Group]) -> None:
    obs = groups[0].members[0].body
    validate_r5({k: v for k, v in to_r5(obs).items() if k != "id"})
    plan = to_r5(groups[2].members[0].body)
    assert plan["activity"][1] == {
        "performedActivity": [
            {"reference": r} for r in groups[2].members[0].body["activity"][1]["outcomeReference"]
        ]
    }
    validate_r5(plan)


def test_references_to_other_groups_are_found(groups: list[sg.Group]) -> None:
    plan, request = (m.body for m in groups[2].members)
    linked = linked_references([plan, request])
    assert ("Observation", groups[0].members[0].resource_id) in linked
    assert ("ServiceRequest", request["id"]) not in linked  # a member of the same transaction


def test_outcome_key_and_title() -> None:
    assert outcome_obs.outcome_key("s:p", "Procedure/abc") == "s:p:outcome:abc"
    knee = {"pathway": "knee-steroid", "target": {"region": "knee", "side": "left", "joints": ["knee"]},
            "performed": "2024-03-01"}  # fmt: skip
    assert (
        outcome_obs.title(knee) == "Outcome of knee corticosteroid injection at the left knee on 1 Mar 2024"
    )


def test_an_outcome_coming_back_from_the_server_is_never_ingested(groups: list[sg.Group]) -> None:
    """Loop safety: the server may push Pinpoint's Observation back (subscription, import)."""
    echoed = {**groups[0].members[0].body, "id": "server-42", "meta": {"versionId": "1"}}
    verdict = classify(echoed)
    assert not verdict.kept and verdict.category == "own-proposal"
