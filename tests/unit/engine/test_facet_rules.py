"""Facet pathway rules, one clinical case per test id (CRITERIA §1, §9; CONTRACT §6)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.fhirfactory import (
    base_l,
    block,
    condition,
    order,
    patient,
    pt,
    reading,
    rfa_order,
    scored_block,
    v2_pair,
)

NOW = "2025-03-10T08:00:00-05:00"


def check_of(doc: dict[str, Any], ref: str = "ServiceRequest/req-rfa") -> dict[str, Any]:
    for p in doc["patients"]:
        for o in p["orderChecks"]:
            if o["order"] == ref:
                return o
    raise AssertionError(f"no order check {ref}: {doc}")


def alerts_of(doc: dict[str, Any]) -> set[str]:
    return {a["code"] for p in doc["patients"] for a in p["alerts"]}


def rfa_history(pid: str = "P-1") -> list[dict[str, Any]]:
    """A completed RFA right L4-5/L5-S1 on 2024-09-02, NRS 8 before, readings given per case."""
    return [
        block(
            "rfa-1",
            "2024-09-02 08:30",
            codes=("64635", "64636"),
            agent=None,
            category="277132007",
            minutes=45,
        ),
        reading("rfa-1-pre", "2024-09-02 08:30", 8, part_of="rfa-1", minutes=-40),
    ]


CASES = [
    pytest.param(
        base_l() + v2_pair() + [rfa_order()], "supported", None, None, id="two-concordant-mbbs-supported"
    ),
    pytest.param(
        base_l() + v2_pair()[:6] + [rfa_order()],
        "not-met",
        "second-block-required",
        None,
        id="one-block-only",
    ),
    pytest.param(
        base_l()
        + scored_block("mbb-0", "2025-01-10 09:00", 7, [(15, 5), (60, 5)])
        + v2_pair()
        + [rfa_order()],
        "supported",
        None,
        None,
        id="failed-block-then-two-positive-confirms",
    ),
    pytest.param(
        base_l()
        + v2_pair()[:6]
        + scored_block("mbb-2", "2025-02-24 09:00", 7, [(20, 1), (120, 1), (240, 1)], agent="bupivacaine")
        + [reading("late", "2025-02-24 09:00", 1, minutes=60 * 80)]
        + [rfa_order()],
        "supported",
        None,
        None,
        id="reading-after-72h-ignored",
    ),
    pytest.param(
        base_l()
        + v2_pair()[:6]
        + scored_block("mbb-2", "2025-02-24 09:00", 7, [(20, 1), (60, 1), (120, 1)], agent="bupivacaine")
        + [rfa_order()],
        "not-met",
        "duration-inconsistent-with-agent",
        None,
        id="bupivacaine-relief-120-min-under-180",
    ),
    pytest.param(
        base_l()
        + v2_pair()[:6]
        + scored_block("mbb-2", "2025-02-24 09:00", 7, [(90, 1), (240, 1)], agent="bupivacaine")
        + [rfa_order()],
        "not-met",
        "duration-inconsistent-with-agent",
        None,
        id="relief-run-starting-after-60-min-counts-0",
    ),
    pytest.param(
        base_l() + v2_pair()[:6] + [block("mbb-2", "2025-02-24 09:00", agent="bupivacaine")] + [rfa_order()],
        "not-evaluable",
        "no-baseline",
        None,
        id="latest-block-without-baseline",
    ),
    pytest.param(
        base_l()
        + v2_pair()[:6]
        + scored_block("mbb-2", "2025-02-24 09:00", 7, [], agent="bupivacaine")
        + [reading("vas", "2025-02-24 09:00", 10, scale="38214-3", part_of="mbb-2", minutes=40)]
        + [rfa_order()],
        "not-evaluable",
        "scale-mismatch",
        None,
        id="post-readings-on-another-scale",
    ),
    pytest.param(
        base_l()
        + v2_pair()[:6]
        + scored_block("mbb-2", "2025-02-24 09:00", 0, [(20, 0)], agent="bupivacaine")
        + [rfa_order()],
        "not-evaluable",
        "low-baseline",
        None,
        id="baseline-zero-unevaluable",
    ),
    pytest.param(
        base_l()
        + scored_block("mbb-1", "2025-02-03 09:00", 3, [(15, 0), (60, 0)])
        + scored_block("mbb-2", "2025-02-24 09:00", 3, [(20, 0), (240, 0)], agent="bupivacaine")
        + [rfa_order()],
        "needs-review",
        "low-baseline",
        None,
        id="baseline-3-of-10-needs-review",
    ),
    pytest.param(
        base_l()
        + scored_block("mbb-1", "2025-02-03 09:00", 7, [(15, 1), (60, 1), (60 * 30, 1)])
        + scored_block("mbb-2", "2025-02-24 09:00", 7, [(20, 0), (240, 1)], agent="bupivacaine")
        + [rfa_order()],
        "needs-review",
        "prolonged-response",
        None,
        id="lidocaine-relief-30-hours-prolonged",
    ),
    pytest.param(
        base_l()
        + scored_block("mbb-1", "2025-02-17 09:00", 7, [(15, 1), (60, 1)])
        + scored_block("mbb-2", "2025-02-24 09:00", 7, [(20, 0), (240, 1)], agent="bupivacaine")
        + [rfa_order()],
        "needs-review",
        "diagnostic-interval-too-short",
        None,
        id="second-block-7-days-after-first",
    ),
    pytest.param(
        base_l(onset="2025-01-15T09:00:00-05:00") + v2_pair() + [rfa_order()],
        "deferred",
        "pain-duration-too-short",
        "2025-04-15",
        id="pain-since-2025-01-15-three-calendar-months",
    ),
    pytest.param(
        [*base_l(), condition("radic", "M54.16", "2024-12-01", "right"), *v2_pair(), rfa_order()],
        "not-met",
        "untreated-radiculopathy",
        None,
        id="active-lumbar-radiculopathy-untreated",
    ),
    pytest.param(
        base_l()
        + v2_pair()
        + [
            block("rfa-a", "2024-06-10 09:00", codes=("64635",), joints=("L2-L3",), agent=None),
            block("rfa-b", "2024-11-04 09:00", codes=("64635",), joints=("L2-L3",), side="left", agent=None),
            rfa_order(),
        ],
        "deferred",
        "rfa-session-cap",
        "2025-06-11",
        id="third-lumbar-rfa-session-in-12-months",
    ),
    pytest.param(
        base_l() + v2_pair() + [rfa_order(joints=("L3-L4", "L4-L5", "L5-S1"))],
        "partially-supported",
        "levels-exceed-session-limit",
        None,
        id="three-level-rfa-order",
    ),
    pytest.param(
        base_l() + v2_pair() + [rfa_order(joints=("L2-L3",))],
        "not-met",
        "joint-not-blocked",
        None,
        id="ordered-joint-never-blocked",
    ),
    pytest.param(
        base_l() + v2_pair(side="left") + [rfa_order()],
        "not-met",
        "joint-not-blocked",
        None,
        id="blocks-only-on-the-left",
    ),
]


@pytest.mark.parametrize(("resources", "verdict", "reason", "earliest"), CASES)
def test_facet_rfa_order(
    run: Any, resources: list[dict[str, Any]], verdict: str, reason: str | None, earliest: str | None
) -> None:
    check = check_of(run(resources, NOW))
    assert check["verdict"] == verdict, check
    if reason:
        assert check["reasons"][0] == reason, check
    else:
        assert check["reasons"] == [], check
    assert check["earliestDate"] == earliest, check


def test_bilateral_blocks_with_right_sided_pain_confirm_the_right_only(run: Any) -> None:
    doc = run(base_l() + v2_pair(side="bilateral") + [rfa_order(side="bilateral")], NOW)
    check = check_of(doc)
    assert check["verdict"] == "partially-supported"
    assert check["supportedTargets"] == [{"region": "lumbar", "joints": ["L4-L5", "L5-S1"], "side": "right"}]


def test_bilateral_blocks_with_bilateral_pain_confirm_both_sides(run: Any) -> None:
    doc = run(base_l(side="bilateral") + v2_pair(side="bilateral") + [rfa_order(side="bilateral")], NOW)
    check = check_of(doc)
    assert check["verdict"] == "supported"
    assert check["supportedTargets"] == [
        {"region": "lumbar", "joints": ["L4-L5", "L5-S1"], "side": "bilateral"}
    ]


def test_sedated_block_confounds_and_alerts(run: Any) -> None:
    sedation = {
        "resourceType": "MedicationAdministration",
        "id": "midazolam",
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6960"}]
        },
        "subject": {"reference": "Patient/P-1"},
        "effectiveDateTime": "2025-02-24T08:30:00-05:00",
    }
    doc = run(base_l() + v2_pair() + [sedation, rfa_order()], NOW)
    check = check_of(doc)
    assert (check["verdict"], check["reasons"][0]) == ("not-met", "sedation-confounded")
    assert "sedation" in alerts_of(doc)


def test_oral_midazolam_is_anxiolysis_not_sedation(run: Any) -> None:
    oral = {
        "resourceType": "MedicationAdministration",
        "id": "midazolam-po",
        "status": "completed",
        "medicationCodeableConcept": {"text": "midazolam 7.5 mg"},
        "subject": {"reference": "Patient/P-1"},
        "effectiveDateTime": "2025-02-24T08:30:00-05:00",
        "dosage": {"route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]}},
    }
    doc = run(base_l() + v2_pair() + [oral, rfa_order()], NOW)
    assert check_of(doc)["verdict"] == "supported"
    assert "sedation" not in alerts_of(doc)


def test_discordant_comparative_blocks_raise_alert(run: Any) -> None:
    resources = (
        base_l()
        + scored_block("mbb-1", "2025-02-03 09:00", 7, [(15, 1), (60, 1), (300, 1)])
        + scored_block("mbb-2", "2025-02-24 09:00", 7, [(20, 0), (200, 1)], agent="bupivacaine")
        + [rfa_order()]
    )
    doc = run(resources, NOW)
    assert "discordant-blocks" in alerts_of(doc)
    assert check_of(doc)["verdict"] == "supported"


def test_consensus_2020_one_block_at_50_percent_is_enough(run: Any) -> None:
    resources = [
        *base_l(),
        pt("P-1", "2024-09-15", "pt-early"),
        *scored_block("mbb-1", "2025-02-03 09:00", 8, [(15, 4), (60, 4), (120, 6)]),
        rfa_order(),
    ]
    assert check_of(run(resources, NOW))["verdict"] == "not-met"
    assert check_of(run(resources, NOW, "consensus-2020"))["verdict"] == "supported"


def test_consensus_2020_requires_three_months_of_conservative_care(run: Any) -> None:
    resources = [patient(), condition("c", "M47.816", "2024-09-01"), *v2_pair(), rfa_order()]
    check = check_of(run(resources, NOW, "consensus-2020"))
    assert (check["verdict"], check["reasons"][0]) == ("not-met", "conservative-care-too-short")


def test_intra_articular_blocks_do_not_confirm_rfa(run: Any) -> None:
    pair = v2_pair()
    for res in pair:
        if res["resourceType"] == "Procedure":
            res["code"]["text"] = "Lumbar facet intra-articular injection"
    check = check_of(run(base_l() + pair + [rfa_order()], NOW))
    assert check["verdict"] == "not-met"


def test_therapeutic_ia_without_rfa_contraindication_needs_review(run: Any) -> None:
    req = order(
        "req-ia", ("64493", "64494"), "2025-03-17", detail="triamcinolone 40 mg", category="277132007"
    )
    doc = run(base_l() + v2_pair() + [req], NOW)
    check = check_of(doc, "ServiceRequest/req-ia")
    assert check["pathway"] == "facet-therapeutic"
    assert (check["verdict"], check["reasons"][0]) == ("needs-review", "rfa-alternative-undocumented")
    req2 = order("req-ia", ("64493", "64494"), "2025-03-17", detail="triamcinolone 40 mg", reason="M96.0")
    assert (
        check_of(run(base_l() + v2_pair() + [req2], NOW), "ServiceRequest/req-ia")["verdict"] == "supported"
    )


def test_ultrasound_guided_facet_block_not_covered(run: Any) -> None:
    req = order("req-us", ("0216T",), "2025-03-17", category="103693007")
    check = check_of(run([*base_l(), req], NOW), "ServiceRequest/req-us")
    assert (check["pathway"], check["verdict"], check["reasons"][0]) == (
        "facet-diagnostic",
        "not-covered",
        "not-covered-by-policy",
    )


def test_fifth_diagnostic_session_deferred_until_cap_release(run: Any) -> None:
    blocks = [
        block(f"mbb-{i}", day, joints=("L4-L5",))
        for i, day in enumerate(
            ["2024-04-01 09:00", "2024-06-01 09:00", "2024-08-01 09:00", "2024-10-01 09:00"]
        )
    ]
    req = order("req-mbb", ("64493",), "2025-03-17", joints=("L4-L5",), category="103693007")
    check = check_of(run(base_l(onset="2023-01-01") + blocks + [req], NOW), "ServiceRequest/req-mbb")
    assert (check["verdict"], check["reasons"][0], check["earliestDate"]) == (
        "deferred",
        "diagnostic-session-cap",
        "2025-04-02",
    )


def test_second_diagnostic_block_ordered_within_14_days_needs_review(run: Any) -> None:
    req = order("req-mbb", ("64493", "64494"), "2025-02-10", category="103693007")
    check = check_of(run(base_l() + v2_pair()[:6] + [req], NOW), "ServiceRequest/req-mbb")
    assert (check["verdict"], check["reasons"][0]) == ("needs-review", "diagnostic-interval-too-short")


def repeat_case(follow_ups: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return (
        base_l(onset="2023-09-01T09:00:00-05:00")
        + rfa_history()
        + [reading(f"fu-{i}", day + " 10:00", value) for i, (day, value) in enumerate(follow_ups)]
        + [order("req-repeat", ("64635", "64636"), "2025-04-07")]
    )


@pytest.mark.parametrize(
    ("follow_ups", "verdict", "reason", "earliest"),
    [
        pytest.param(
            [("2024-10-01", 3), ("2024-12-02", 3), ("2025-03-03", 3)],
            "supported",
            None,
            None,
            id="62pct-for-6-months-and-a-day",
        ),
        pytest.param(
            [("2024-10-01", 3), ("2024-12-02", 6), ("2025-01-02", 3), ("2025-03-03", 3)],
            "supported",
            None,
            None,
            id="one-isolated-dip-that-recovers",
        ),
        pytest.param(
            [("2024-10-01", 3), ("2024-12-02", 6), ("2025-01-02", 6), ("2025-03-03", 3)],
            "not-met",
            "prior-relief-insufficient",
            None,
            id="two-dips-fail",
        ),
        pytest.param(
            [("2024-10-01", 3), ("2025-03-03", 6)],
            "not-met",
            "prior-relief-insufficient",
            None,
            id="relief-gone-at-6-months",
        ),
        pytest.param([], "not-evaluable", "no-follow-up", None, id="no-follow-up-after-rfa"),
    ],
)
def test_repeat_rfa(
    run: Any, follow_ups: list[tuple[str, int]], verdict: str, reason: str | None, earliest: str | None
) -> None:
    check = check_of(run(repeat_case(follow_ups), "2025-04-02T09:00:00-05:00"), "ServiceRequest/req-repeat")
    assert check["pathway"] == "facet-rfa-repeat"
    assert check["verdict"] == verdict, check
    if reason:
        assert check["reasons"][0] == reason
    assert check["earliestDate"] == earliest


def test_repeat_rfa_before_six_months_deferred_while_relief_holds(run: Any) -> None:
    resources = repeat_case([("2024-10-01", 3), ("2024-12-02", 3)])
    resources[-1] = order("req-repeat", ("64635", "64636"), "2025-01-15")
    check = check_of(run(resources, "2025-01-10T09:00:00-05:00"), "ServiceRequest/req-repeat")
    assert (check["verdict"], check["reasons"][0], check["earliestDate"]) == (
        "deferred",
        "relief-period-not-ended",
        "2025-03-02",
    )


def test_repeat_rfa_after_two_years_with_new_left_pain_needs_new_blocks(run: Any) -> None:
    resources = repeat_case([("2024-10-01", 3), ("2024-12-02", 3), ("2025-03-03", 3)])
    resources.append(condition("new-left", "M54.50", "2026-06-01", "left"))
    resources[-2] = order("req-repeat", ("64635", "64636"), "2026-10-01")
    check = check_of(run(resources, "2026-09-20T09:00:00-05:00"), "ServiceRequest/req-repeat")
    assert (check["verdict"], check["reasons"][0]) == ("not-met", "repeat-diagnostics-required")


def test_assessment_groups_joints_by_verdict(run: Any) -> None:
    resources = (
        base_l()
        + v2_pair()
        + scored_block("mbb-3", "2025-03-03 09:00", 7, [(15, 1), (60, 1)], joints=("L3-L4",))
    )
    doc = run(resources, NOW)
    got = {(a["verdict"], tuple(a["target"]["joints"])) for a in doc["patients"][0]["assessments"]}
    assert got == {("supported", ("L4-L5", "L5-S1")), ("not-met", ("L3-L4",))}
