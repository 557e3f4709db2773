"""Cards from §3 documents: order checks (warning + suggestion / info for PA), patient-view."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest

from services.recommender.cds_hooks.cards import CardContext, cards_for
from tests.api.cds.conftest import CdsApp, assert_valid_card, assert_valid_response
from tests.conftest import FIXTURES

CTX = CardContext("https://pinpoint.example/patients/P-001/evidence", {"id": "cms-lcd"}, True)
TARGET = {"region": "lumbar", "joints": ["L4-L5", "L5-S1"], "side": "right"}
EVIDENCE = [
    {
        "procedure": "Procedure/mbb-1",
        "performed": "2025-02-03T09:20:00-05:00",
        "agent": "lidocaine",
        "scale": "72514-3",
        "baseline": 7,
        "peakReliefPercent": 85.7,
        "sustainedMinutes": 60,
        "positive": True,
        "reasons": [],
    },
    {
        "procedure": "Procedure/mbb-2",
        "performed": "2025-02-24T09:20:00-05:00",
        "agent": "bupivacaine",
        "scale": "72514-3",
        "baseline": 7,
        "peakReliefPercent": 100.0,
        "sustainedMinutes": 240,
        "positive": True,
        "reasons": [],
    },
]


def order(name: str = "v01-one-block-only") -> dict[str, Any]:
    bundle = json.loads((FIXTURES / "vignettes" / name / "bundle.json").read_text())
    found: dict[str, Any] = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "req-rfa")
    return found


def document(
    check: dict[str, Any],
    assessments: list[dict[str, Any]] | None = None,
    alerts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "policy": {"id": "cms-lcd", "version": "2025.1"},
        "evaluatedAt": "2025-02-10T13:00:00+00:00",
        "patients": [
            {
                "patient": "Patient/P-001",
                "assessments": assessments or [],
                "orderChecks": [check] if check else [],
                "alerts": alerts or [],
            }
        ],
    }


def render(
    doc: dict[str, Any], hook: str = "order-sign", the_order: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    o = the_order or order()
    cards = [
        r.card
        for r in cards_for(
            doc,
            patient_ref="Patient/P-001",
            hook=hook,
            drafts={f"ServiceRequest/{o['id']}": o},
            selections=None,
            ctx=CTX,
        )
    ]
    for c in cards:
        assert_valid_card(c)
    return cards


def check(verdict: str, reasons: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "order": "ServiceRequest/req-rfa",
        "pathway": "facet-rfa",
        "verdict": verdict,
        "reasons": reasons,
        "earliestDate": None,
        "evidence": EVIDENCE[:1],
        **extra,
    }


def test_supported_order_gives_an_info_card_with_the_prior_authorisation_evidence() -> None:
    [card] = render(document(check("supported", [], evidence=EVIDENCE, supportedTargets=[TARGET])))
    assert card["indicator"] == "info"
    assert card["summary"] == "Facet RFA, right L4–S1: supported — 2 blocks, 85.7 % and 100 % relief"
    assert "suggestions" not in card and "overrideReasons" not in card
    detail = card["detail"]
    for needle in (
        "3 Feb 2025",
        "24 Feb 2025",
        "lidocaine",
        "bupivacaine",
        "85.7 %",
        "4 hours",
        "7 (NRS 0–10)",
        "cms-lcd version 2025.1",
    ):
        assert needle in detail
    for never in ("Procedure/", "72514-3", "None", "T09:20"):
        assert never not in detail
    assert card["source"]["topic"]["code"] == "facet-rfa"
    assert card["links"] == [{"label": "Evidence in Pinpoint", "url": CTX.evidence_url, "type": "absolute"}]


def test_one_block_only_warns_and_proposes_the_confirmatory_block_instead() -> None:
    [card] = render(document(check("not-met", ["second-block-required"])))
    assert card["indicator"] == "warning"
    assert "second positive confirmatory block" in card["summary"]
    assert card["selectionBehavior"] == "at-most-one"
    assert {c["code"] for c in card["overrideReasons"]} >= {"clinical-judgement", "prior-authorisation"}
    [suggestion] = card["suggestions"]
    delete, create = suggestion["actions"]
    assert delete == {
        "type": "delete",
        "description": delete["description"],
        "resourceId": "ServiceRequest/req-rfa",
    }
    block = create["resource"]
    assert create["type"] == "create"
    assert block["resourceType"] == "ServiceRequest" and block["status"] == "draft"
    assert [c["code"] for c in block["code"]["coding"]] == ["64493", "64494"]
    assert block["bodySite"] == order()["bodySite"]  # the same joints and side
    assert block["subject"] == {"reference": "Patient/P-001"}


def test_the_next_step_of_the_matching_assessment_is_preferred() -> None:
    assessment = {
        "pathway": "facet-rfa",
        "target": TARGET,
        "verdict": "not-met",
        "reasons": ["relief-below-threshold"],
        "earliestDate": "2025-02-17",
        "nextStep": {"system": "http://www.ama-assn.org/go/cpt", "code": "64493", "display": "MBB"},
    }
    [card] = render(document(check("not-met", ["relief-below-threshold"]), [assessment]))
    create = card["suggestions"][0]["actions"][1]["resource"]
    assert [c["code"] for c in create["code"]["coding"]] == ["64493", "64494"]
    assert create["occurrenceDateTime"] == "2025-02-17"


def test_sedated_block_asks_for_a_block_without_sedation() -> None:
    [card] = render(document(check("not-met", ["sedation-confounded"])))
    create = card["suggestions"][0]["actions"][1]["resource"]
    assert "without sedation" in create["note"][0]["text"]


def test_partially_supported_order_is_reduced_to_its_supported_joints() -> None:
    three = copy.deepcopy(order("v20-three-level-rfa"))
    supported = {"region": "lumbar", "joints": ["L5-S1"], "side": "right"}
    [card] = render(
        document(check("partially-supported", ["levels-exceed-session-limit"], supportedTargets=[supported])),
        the_order=three,
    )
    assert card["indicator"] == "warning"
    reduced = card["suggestions"][0]["actions"][1]["resource"]
    assert [s["coding"][0]["code"] for s in reduced["bodySite"]] == ["L5-S1"]
    assert [c["code"] for c in reduced["code"]["coding"]] == ["64635"]  # the add-on code is gone
    assert "Supported part" in card["detail"]


def test_deferred_order_is_rescheduled_to_the_earliest_date() -> None:
    [card] = render(document(check("deferred", ["rfa-session-cap"], earliestDate="2025-06-01")))
    moved = card["suggestions"][0]["actions"][1]["resource"]
    assert moved["occurrenceDateTime"] == "2025-06-01"
    assert moved["code"] == order()["code"]
    assert "1 Jun 2025" in card["detail"] and "2025-06-01" not in card["detail"]
    assert card["suggestions"][0]["label"] == "Reschedule on or after 1 Jun 2025"


@pytest.mark.parametrize("verdict", ["not-covered", "needs-review", "not-evaluable"])
def test_other_verdicts_warn_with_a_suggestion_removing_the_order(verdict: str) -> None:
    reason = {
        "not-covered": "not-covered-by-policy",
        "needs-review": "level-previously-ablated",
        "not-evaluable": "no-follow-up",
    }[verdict]
    [card] = render(document(check(verdict, [reason])))
    assert card["indicator"] == "warning"
    actions = card["suggestions"][0]["actions"]
    assert actions[0]["resourceId"] == "ServiceRequest/req-rfa"


def test_not_evaluable_for_a_missing_baseline_proposes_a_block_again() -> None:
    [card] = render(document(check("not-evaluable", ["no-baseline"])))
    assert len(card["suggestions"][0]["actions"]) == 2


def test_summary_stays_under_140_characters_with_every_reason() -> None:
    reasons = ["duration-inconsistent-with-agent", "prolonged-response", "levels-exceed-session-limit"]
    for pathway in ("facet-rfa-repeat", "sij-therapeutic", "genicular-rfa", "esi", "knee-steroid"):
        c = check("needs-review", reasons)
        c["pathway"] = pathway
        [card] = render(document(c))
        assert len(card["summary"]) < 140


def test_checks_of_orders_not_in_the_context_give_no_card() -> None:
    c = check("not-met", ["second-block-required"], order="ServiceRequest/stored-active-order")
    assert render(document(c)) == []


def test_patient_view_gives_one_card_per_assessment_and_per_alert() -> None:
    assessments = [
        {
            "pathway": "facet-rfa",
            "target": TARGET,
            "verdict": "supported",
            "reasons": [],
            "earliestDate": None,
            "nextStep": {
                "system": "http://www.ama-assn.org/go/cpt",
                "code": "64635",
                "display": "Lumbar facet RFA",
            },
            "evidence": EVIDENCE,
        },
        {
            "pathway": "sij-therapeutic",
            "target": {"region": "sacroiliac", "joints": ["SIJ"], "side": "left"},
            "verdict": "needs-review",
            "reasons": ["low-baseline"],
            "earliestDate": None,
            "evidence": [],
        },
    ]
    alerts = [
        {"code": "cumulative-steroid", "severity": "warning", "text": "412 mg methylprednisolone-equivalent"}
    ]
    cards = render(document({}, assessments, alerts), hook="patient-view")
    assert [c["indicator"] for c in cards] == ["info", "warning", "warning"]
    assert (
        cards[0]["summary"].startswith("Facet RFA, right L4–S1: supported") and "64635" in cards[0]["detail"]
    )
    assert "left SIJ" in cards[1]["summary"]
    assert cards[2]["source"]["topic"]["code"] == "cumulative-steroid" and "412 mg" in cards[2]["detail"]
    assert all("suggestions" not in c for c in cards)


async def test_cards_through_the_service_are_conformant_and_unique(cds: CdsApp) -> None:
    o = order()
    cds.assessor.patients = document(
        check("not-met", ["second-block-required"]),
        alerts=[{"code": "sedation", "severity": "warning", "text": "x"}],
    )["patients"]
    body = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/u",
            "patientId": "P-001",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o}]},
        },
        "prefetch": {"procedures": None},
    }
    r1 = await cds.client.post("/cds-services/pinpoint-order-sign", json=body)
    r2 = await cds.client.post("/cds-services/pinpoint-order-sign", json=body)
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["content-type"] == "application/json"
    for r in (r1, r2):
        assert_valid_response(r.json())
        assert len(r.json()["cards"]) == 1  # order hooks: order checks only, not patient alerts
    assert r1.json()["cards"][0]["uuid"] != r2.json()["cards"][0]["uuid"]
    # patient-view: the same document shows the alert
    body["hook"] = "patient-view"
    del body["context"]["draftOrders"]
    r = await cds.client.post("/cds-services/pinpoint-patient-view", json=body)
    assert [c["source"]["topic"]["code"] for c in r.json()["cards"]] == ["sedation"]
