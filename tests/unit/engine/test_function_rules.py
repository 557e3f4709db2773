"""Issue 19 in the engine: function in the repeat criteria, documentation readiness, outcomes of
definitive procedures, instruments in the policy. Built on the issue's worked cases (f01-f05)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.recommender.engine import render_text
from services.recommender.policies import PolicyError, load_policy
from tests.conftest import FIXTURES

VIGNETTES = FIXTURES / "vignettes"
Run = Callable[..., dict[str, Any]]


def case(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    bundle = json.loads((VIGNETTES / name / "bundle.json").read_text())
    expected = json.loads((VIGNETTES / name / "expected.json").read_text())
    return [e["resource"] for e in bundle["entry"]], expected


def without(resources: list[dict[str, Any]], *ids: str) -> list[dict[str, Any]]:
    return [r for r in resources if r.get("id") not in ids]


def check_of(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    return next(o for p in doc["patients"] for o in p["orderChecks"] if o["order"] == ref)


def doc_item(items: list[dict[str, str]], requirement: str) -> dict[str, str]:
    return next(d for d in items if d["requirement"] == requirement)


# --- function in the repeat criteria -----------------------------------------------------------------
def test_repeat_esi_without_the_functional_follow_up_is_not_met(run: Run) -> None:
    resources, expected = case("f03-esi-repeat-carried-by-function")
    doc = run(without(resources, "odi-fu-1", "odi-fu-2", "odi-fu-3"), expected["now"])
    check = check_of(doc, "ServiceRequest/req-repeat-tfesi")
    assert (check["verdict"], check["reasons"][0]) == ("not-met", "prior-relief-insufficient")


def test_function_on_another_instrument_than_baseline_does_not_count(run: Run) -> None:
    resources, expected = case("f03-esi-repeat-carried-by-function")
    changed = copy.deepcopy(resources)
    for r in changed:
        if r["id"].startswith("odi-fu"):
            r["code"] = {
                "coding": [{"system": "http://loinc.org", "code": "82237-9"}],
                "text": "Total score [NDI]",
            }
    check = check_of(run(changed, expected["now"]), "ServiceRequest/req-repeat-tfesi")
    assert check["verdict"] == "not-met"


def test_promis_t_scores_never_carry_a_repeat(run: Run) -> None:
    resources, expected = case("f03-esi-repeat-carried-by-function")
    changed = copy.deepcopy(resources)
    for r in changed:
        if r["id"].startswith("odi"):
            r["code"] = {"coding": [{"system": "http://loinc.org", "code": "71961-7"}]}
            r["valueQuantity"] = {"value": 70 if r["id"] == "odi-baseline" else 40, "unit": "{T-score}"}
    check = check_of(run(changed, expected["now"]), "ServiceRequest/req-repeat-tfesi")
    assert check["verdict"] == "not-met"


def test_function_still_in_its_period_does_not_rescue_failed_pain(run: Run) -> None:
    resources, _ = case("f04-repeat-rfa-function-only")
    doc = run(without(resources, "odi-fu-3"), "2025-02-20T09:00:00-05:00")  # before 6 months
    check = check_of(doc, "ServiceRequest/req-repeat-rfa")
    assert (check["verdict"], check["reasons"][0]) == ("not-met", "prior-relief-insufficient")


def test_function_never_turns_a_met_pain_criterion_down(run: Run) -> None:
    resources, expected = case("v09-repeat-rfa-7-months-60pct")
    doc = run(resources, expected["now"])
    assert check_of(doc, "ServiceRequest/req-repeat-rfa")["verdict"] == "supported"


def test_function_only_review_is_a_policy_switch(run: Run, tmp_path: Path) -> None:
    resources, expected = case("f04-repeat-rfa-function-only")
    custom = tmp_path / "p.yaml"
    custom.write_text(
        "id: local\nversion: '1'\nextends: cms-lcd\n"
        "sources:\n  LOCAL: {title: Local pain committee decision, publisher: Example Hospital,"
        " url: 'https://hospital.example/p', date: '2026-01-01'}\n"
        "pathways:\n  facet-rfa-repeat:\n    function_only_review: false\n"
        "    cite: {function_only_review: LOCAL}\n"
    )
    doc = run(resources, expected["now"], str(custom))
    assert check_of(doc, "ServiceRequest/req-repeat-rfa")["verdict"] == "supported"


# --- documentation readiness --------------------------------------------------------------------------
def test_sedated_block_is_a_documentation_gap_and_the_verdict_is_the_clinical_one(run: Run) -> None:
    resources, expected = case("v05-sedation-confirmatory-block")
    doc = run(resources, expected["now"], expected["policy"])
    check = check_of(doc, expected["orderChecks"][0]["order"])
    assert check["verdict"] == expected["orderChecks"][0]["verdict"]
    gap = doc_item(check["documentation"], "no-sedation")
    assert (gap["status"], gap["source"]) == ("missing", "L38773")
    assert "sedation" in gap["detail"]


def test_consensus_states_its_own_requirements(run: Run) -> None:
    resources, expected = case("f02-baseline-disability-missing")
    doc = run(resources, expected["now"], "consensus-2020")
    check = check_of(doc, "ServiceRequest/req-rfa")
    item = doc_item(check["documentation"], "baseline-disability-scale")
    assert (item["status"], item["source"]) == ("not-applicable", "COHEN-2020")
    assert doc_item(check["documentation"], "no-sedation")["source"] == "COHEN-2020"


def test_the_gap_is_said_in_words_with_who_requires_it(run: Run) -> None:
    resources, expected = case("f02-baseline-disability-missing")
    text = render_text(run(resources, expected["now"]))
    assert "Documentation: no baseline disability scale — required by LCD L38773." in text
    assert "None" not in text


def test_an_epidural_without_image_guidance_is_a_gap(run: Run) -> None:
    resources, expected = case("f03-esi-repeat-carried-by-function")
    changed = copy.deepcopy(resources)
    for r in changed:
        if r["resourceType"] == "ServiceRequest":
            r["code"] = {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "62322"}]}
    check = check_of(run(changed, expected["now"]), "ServiceRequest/req-repeat-tfesi")
    gap = doc_item(check["documentation"], "imaging-guidance")
    assert gap["status"] == "missing" and "62322" in gap["detail"]


# --- outcomes -----------------------------------------------------------------------------------------
def test_diagnostic_blocks_have_no_outcome_and_definitive_procedures_do(run: Run) -> None:
    resources, expected = case("v02-two-concordant-blocks")
    (patient,) = run(resources, expected["now"])["patients"]
    assert patient["outcomes"] == []
    resources, expected = case("f05-outcomes-relief-duration-censoring")
    (patient,) = run(resources, expected["now"])["patients"]
    assert [o["procedure"] for o in patient["outcomes"]] == ["Procedure/rfa-1", "Procedure/rfa-2"]


def test_a_procedure_with_no_reading_after_it_has_no_relief_duration(run: Run) -> None:
    resources, expected = case("f05-outcomes-relief-duration-censoring")
    doc = run(without(resources, "o-5", "o-6"), expected["now"])
    rfa2 = next(o for o in doc["patients"][0]["outcomes"] if o["procedure"] == "Procedure/rfa-2")
    assert (rfa2["reliefDays"], rfa2["censored"]) == (None, False)
    assert [m["pain"] for m in rfa2["milestones"]] == [None, None, None, None]


def test_relief_lost_at_the_first_reading_is_zero_days_uncensored(run: Run) -> None:
    resources, expected = case("f05-outcomes-relief-duration-censoring")
    changed = copy.deepcopy(resources)
    for r in changed:
        if r["id"] == "o-5":
            r["valueInteger"] = 6
    rfa2 = next(
        o
        for o in run(changed, expected["now"])["patients"][0]["outcomes"]
        if o["procedure"] == "Procedure/rfa-2"
    )
    assert (rfa2["reliefDays"], rfa2["censored"]) == (0, False)


# --- instruments in the policy -------------------------------------------------------------------------
def test_instruments_carry_direction_range_mcid_and_a_source() -> None:
    policy = load_policy("cms-lcd")
    for name in ("odi", "ndi", "promis-pi", "promis-pf", "peg", "koos-jr", "koos-adl", "womac"):
        spec = policy.instruments[name]
        assert spec["direction"] in ("higher-worse", "higher-better")
        assert spec["low"] < spec["high"] and spec["mcid"] > 0
        assert spec["source"] in policy.sources


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("instruments:\n  odi: {direction: sideways}\n", "instruments.odi.direction"),
        ("instruments:\n  odi: {mcid: many}\n", "instruments.odi.mcid"),
        ("instruments:\n  hoos: {direction: higher-worse}\n", "instruments.hoos"),
    ],
)
def test_an_invalid_instrument_is_refused_naming_the_key(tmp_path: Path, body: str, message: str) -> None:
    custom = tmp_path / "p.yaml"
    custom.write_text("id: local\nversion: '1'\nextends: cms-lcd\n" + body)
    with pytest.raises(PolicyError, match=message.replace(".", r"\.")):
        load_policy(str(custom))
