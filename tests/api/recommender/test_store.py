"""The suggestion store on §3-shaped entries: advice not to inject, alerts that vanish,
regrouped joints (one CarePlan revoked, another created)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.recommender.engine.policy import PolicyRef
from services.recommender.suggestions.builders import resource_id
from services.recommender.suggestions.repository import apply_entry
from shared.db.models import Outbox, Suggestion
from shared.db.session import session_scope
from tests.api.recommender.helpers import assert_valid_r4

POLICY = PolicyRef("cms-lcd", "test-1")
PK = "default:P-9"


def _knee(verdict: str, reasons: list[str]) -> dict[str, Any]:
    return {
        "pathway": "knee-steroid",
        "target": {"region": "knee", "joints": ["knee"], "side": "left"},
        "verdict": verdict,
        "reasons": reasons,
        "earliestDate": None,
        "nextStep": None,
        "evidence": [{"procedure": "Procedure/inj-1"}, {"procedure": "Procedure/inj-2"}],
    }


def _entry(assessments: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"patient": "Patient/P-9", "assessments": assessments, "orderChecks": [], "alerts": alerts}


def _apply(engine: Engine, entry: dict[str, Any]) -> None:
    with session_scope(engine) as s:
        apply_entry(s, PK, entry, POLICY, deliver=False)


def _current(engine: Engine, rtype: str) -> dict[str, dict[str, Any]]:
    with Session(engine) as s:
        return {
            r.resource_id: r.resource or {}
            for r in s.exec(select(Suggestion).where(Suggestion.resource_type == rtype))
        }


ALERT = {
    "code": "steroid-frequency",
    "severity": "warning",
    "text": "4 steroid injections into the left knee in 365 days",
    "evidence": ["Procedure/inj-1", "Procedure/inj-2"],
}


def test_advice_not_to_inject_and_alert_lifecycle(engine: Engine) -> None:
    _apply(engine, _entry([_knee("not-met", ["steroid-frequency"])], [ALERT]))
    key = f"{PK}:knee-steroid:knee:left:knee"
    (request,) = _current(engine, "ServiceRequest").values()
    assert request["id"] == resource_id(f"{key}:request")
    assert request["doNotPerform"] is True
    assert request["code"]["coding"][0]["code"] == "20610"
    assert request["bodySite"] == [
        {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "72696002", "display": "Knee region structure"},
                {"system": "http://snomed.info/sct", "code": "419161000", "display": "Unilateral left"},
            ],
            "text": "Left knee",
        }
    ]
    (issue,) = _current(engine, "DetectedIssue").values()
    assert issue["identifier"] == [
        {"system": "urn:pinpoint:recommendation", "value": f"{PK}:alert:steroid-frequency"}
    ]
    assert issue["severity"] == "moderate" and issue["status"] == "final"
    assert issue["evidence"] == [
        {"detail": [{"reference": "Procedure/inj-1"}, {"reference": "Procedure/inj-2"}]}
    ]
    for resource in (request, issue, *_current(engine, "CarePlan").values()):
        assert_valid_r4(resource)

    _apply(engine, _entry([_knee("not-met", ["steroid-frequency"])], []))  # a year later: no alert
    (issue,) = _current(engine, "DetectedIssue").values()
    assert issue["status"] == "cancelled" and issue["meta"]["versionId"] == "2"
    assert_valid_r4(issue)
    (plan,) = _current(engine, "CarePlan").values()
    assert plan["meta"]["versionId"] == "1"  # the CarePlan did not change: not rewritten


def test_regrouped_joints_revoke_one_careplan_and_create_another(engine: Engine) -> None:
    def facet(joints: list[str], verdict: str) -> dict[str, Any]:
        return {
            "pathway": "facet-rfa",
            "target": {"region": "lumbar", "joints": joints, "side": "right"},
            "verdict": verdict,
            "reasons": [] if verdict == "supported" else ["second-block-required"],
            "earliestDate": None,
            "nextStep": {"system": "http://www.ama-assn.org/go/cpt", "code": "64635", "display": "RFA"},
            "evidence": [],
        }

    _apply(engine, _entry([facet(["L5-S1", "L4-L5"], "supported")], []))
    both = resource_id(f"{PK}:facet-rfa:lumbar:right:L4-L5+L5-S1")
    assert set(_current(engine, "CarePlan")) == {both}

    _apply(engine, _entry([facet(["L4-L5"], "supported"), facet(["L5-S1"], "not-met")], []))
    plans = _current(engine, "CarePlan")
    assert plans[both]["status"] == "revoked"
    one = resource_id(f"{PK}:facet-rfa:lumbar:right:L4-L5")
    other = resource_id(f"{PK}:facet-rfa:lumbar:right:L5-S1")
    assert plans[one]["status"] == plans[other]["status"] == "draft"
    not_met = _current(engine, "ServiceRequest")[resource_id(f"{PK}:facet-rfa:lumbar:right:L5-S1:request")]
    assert not_met["doNotPerform"] is True  # not-met with the ablation as next step: do not ablate yet
    with Session(engine) as s:
        actions = sorted((o.payload or {})["action"] for o in s.exec(select(Outbox)))
    assert actions == ["create", "create", "create", "revoke"]
