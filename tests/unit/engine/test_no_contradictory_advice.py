"""The suggested next step keeps the policy's own limits: joints per session (the CarePlan's
ServiceRequest and the card never propose more joints than one session allows)."""

from __future__ import annotations

from typing import Any

from services.recommender.cds_hooks.cards import CardContext, cards_for
from services.recommender.policies import load_policy
from services.recommender.suggestions.builders import desired_groups
from tests.unit.fhirfactory import base_l, rfa_order, v2_pair

THREE = ("L3-L4", "L4-L5", "L5-S1")
NOW = "2025-03-10T08:00:00-05:00"


def _doc(run: Any) -> dict[str, Any]:
    resources = [*base_l(), *v2_pair(joints=THREE), rfa_order(joints=("L4-L5", "L5-S1"))]
    doc: dict[str, Any] = run(resources, NOW, "consensus-2020")
    return doc


def test_a_three_joint_ablation_is_never_suggested_beside_a_two_joint_limit(run: Any) -> None:
    doc = _doc(run)
    [rfa] = [a for a in doc["patients"][0]["assessments"] if a["pathway"] == "facet-rfa"]
    assert rfa["verdict"] == "supported" and set(rfa["target"]["joints"]) == set(THREE)  # verdict unchanged
    [step_target] = rfa["nextStepTargets"]
    assert step_target["joints"] == ["L4-L5", "L5-S1"]  # caudal first, as an order is reduced
    limit = rfa["nextStepLimit"]
    assert (limit["measured"], limit["required"], limit["source"]) == (3, 2, "CGS-FACET-2024")
    assert limit["policyKey"] == "pathways.facet-rfa.max_joints_per_side"
    ref = load_policy("consensus-2020").ref
    group = next(g for g in desired_groups("default:P-1", doc["patients"][0], ref) if "facet-rfa" in g.key)
    request = next(m.body for m in group.members if m.resource_type == "ServiceRequest")
    joints = [
        c["code"] for s in request["bodySite"] for c in s["coding"] if c["system"].endswith("spinal-joint")
    ]
    assert joints == ["L4-L5", "L5-S1"]
    plan = next(m.body for m in group.members if m.resource_type == "CarePlan")
    assert (
        "At most 2 joints per side in one session: L4-L5, L5-S1 first, L3-L4 later (CGS 2024)"
        in (plan["description"])
    )
    ctx = CardContext("https://pinpoint.example/e", {"id": "consensus-2020"}, False)
    cards = cards_for(
        doc, patient_ref="Patient/P-1", hook="patient-view", drafts={}, selections=None, ctx=ctx
    )
    [card] = [c.card for c in cards if c.pathway == "facet-rfa"]
    assert "at right lumbar L4-L5, L5-S1" in card["detail"] and "L3-L4 later" in card["detail"]


def test_careplan_text_says_measured_vs_required_with_the_source(run: Any) -> None:
    resources = [*base_l(), *v2_pair()]
    resources[-1]["valueInteger"] = 5  # not enough relief on the second block's last reading
    doc = run(resources, NOW)
    ref = load_policy("cms-lcd").ref
    texts = [
        m.body["description"]
        for g in desired_groups("default:P-1", doc["patients"][0], ref)
        for m in g.members
        if m.resource_type == "CarePlan"
    ]
    assert texts and all("(LCD L38773)" in t for t in texts), texts
