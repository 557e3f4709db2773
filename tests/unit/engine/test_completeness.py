"""Data that could not be retrieved makes the targets that need it not-evaluable with the one
reason data-unavailable naming what is missing — never a clinical reason (CONTRACT §8)."""

from __future__ import annotations

from typing import Any

from services.recommender.engine.completeness import mark_unavailable, unavailable_text
from services.recommender.engine.wording import documentation_gaps, reason_text


def _item(pathway: str, verdict: str = "not-evaluable", **extra: Any) -> dict[str, Any]:
    return {
        "pathway": pathway,
        "verdict": verdict,
        "reasons": ["no-baseline"] if verdict != "supported" else [],
        "earliestDate": None,
        "nextStep": {"code": "64493"},
        "evidence": [{"procedure": "Procedure/b1", "positive": False, "reasons": ["no-baseline"]}],
        **extra,
    }


def test_missing_pain_scores_make_relief_targets_not_evaluable_with_the_data_named() -> None:
    entry = {
        "assessments": [
            _item("sij-diagnostic"),
            _item("knee-steroid", "supported"),
            _item("esi", "not-covered"),
        ],
        "orderChecks": [
            _item("facet-rfa", "supported", order="ServiceRequest/o", supportedTargets=[{"joints": ["SIJ"]}])
        ],
        "alerts": [],
    }
    out = mark_unavailable(entry, {"pain-scores"})
    sij, knee, esi = out["assessments"]
    assert sij["verdict"] == "not-evaluable" and sij["reasons"] == ["data-unavailable"]
    assert sij["unavailable"] == ["pain-scores"] and sij["nextStep"] is None
    assert sij["evidence"][0]["reasons"] == ["data-unavailable"]  # not "no pain score before the block"
    assert knee == entry["assessments"][1]  # a knee steroid injection is not judged on pain scores
    assert esi["verdict"] == "not-covered"  # the policy does not cover it, whatever the data
    [order] = out["orderChecks"]
    assert order["verdict"] == "not-evaluable" and order["supportedTargets"] == []
    assert entry["assessments"][0]["reasons"] == ["no-baseline"]  # the input is left alone


def test_nothing_missing_changes_nothing_and_the_patient_record_alone_decides_nothing() -> None:
    entry = {"assessments": [_item("facet-rfa", "supported")], "orderChecks": [], "alerts": []}
    assert mark_unavailable(entry, set()) == entry
    assert mark_unavailable(entry, {"patient"})["assessments"] == entry["assessments"]


def test_the_reason_reads_as_what_could_not_be_retrieved() -> None:
    assert (
        reason_text("data-unavailable", ["pain-scores"]) == "pain scores could not be retrieved from the EHR"
    )
    assert unavailable_text(["diagnoses", "pain-scores"]) == (
        "pain scores and diagnoses could not be retrieved from the EHR"
    )
    assert reason_text("data-unavailable") == "data the rule needs could not be retrieved from the EHR"


def test_documentation_judged_on_missing_data_is_unknown_not_a_gap() -> None:
    """No pain score reached Pinpoint: "no baseline pain scale" would be a false gap."""
    documentation = [
        {"requirement": "baseline-pain-scale", "status": "missing", "source": "L38773", "detail": "none"},
        {
            "requirement": "baseline-disability-scale",
            "status": "missing",
            "source": "L38773",
            "detail": "none",
        },
        {"requirement": "imaging-guidance", "status": "met", "source": "L38773", "detail": "fluoroscopy"},
    ]
    entry = {
        "assessments": [_item("facet-rfa", documentation=documentation)],
        "orderChecks": [],
        "alerts": [],
    }
    [item] = mark_unavailable(entry, {"pain-scores"})["assessments"]
    pain, disability, imaging = item["documentation"]
    assert pain["status"] == "unknown" and pain["detail"] == "pain scores could not be retrieved from the EHR"
    assert disability["status"] == "missing"  # function scores did arrive: a real gap
    assert imaging["status"] == "met"
    assert documentation_gaps(item["documentation"]) == [
        "Documentation: no baseline disability scale — required by L38773"
    ]
