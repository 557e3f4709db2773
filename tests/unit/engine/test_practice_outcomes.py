"""``pinpoint outcomes``' arithmetic (issue 19): Kaplan–Meier with censoring, shares, medians."""

from __future__ import annotations

from typing import Any

from services.recommender.outcomes.summary import Row, kaplan_meier, render, summarize


def test_kaplan_meier_honours_censoring() -> None:
    steps, median = kaplan_meier([(10, True), (20, False), (30, True), (40, True)])
    assert steps == [(0, 1.0), (10, 0.75), (30, 0.375), (40, 0.0)]
    assert median == 30  # a naive median of the four durations would say 25
    assert kaplan_meier([(91, False), (120, False)]) == ([(0, 1.0)], None)  # never fell: not reached


def outcome(
    performed: str, days: int | None, censored: bool, three: float | None, change: float | None
) -> dict[str, Any]:
    milestone: dict[str, Any] = {"months": 3, "status": "due", "pain": None, "function": []}
    if three is not None:
        milestone["pain"] = {"value": 2, "reliefPercent": three}
    if change is not None:
        milestone["function"] = [
            {"instrument": "odi", "value": 20, "change": change, "meetsMcid": change >= 10}
        ]
    return {"pathway": "facet-rfa", "performed": performed, "reliefThresholdPercent": 50,
            "reliefDays": days, "censored": censored, "milestones": [milestone]}  # fmt: skip


def test_summary_per_pathway_and_since() -> None:
    rows = [
        Row(outcome("2024-01-08T09:00:00-05:00", 182, False, 62.5, 18), True),
        Row(outcome("2024-10-21T09:00:00-05:00", 91, True, 71.4, 4), False),
        Row(outcome("2023-05-01T09:00:00-05:00", 10, False, 20.0, None), None),
    ]
    summary = summarize(rows)
    [p] = summary["pathways"]
    assert p["procedures"] == 3
    assert p["criteriaMetBefore"] == {"n": 2, "share": 0.5}
    assert p["relief3Months"] == {"n": 3, "share": 0.667}
    assert p["medianReliefDays"] == 182  # 10 (lost), 91 (censored), 182 (lost): S falls to 0 at 182
    assert p["function"] == [
        {"instrument": "odi", "n": 2, "medianChange3Months": 11.0, "shareReachingMcid": 0.5}
    ]
    from datetime import date

    later = summarize(rows, date(2024, 1, 1))
    assert later["pathways"][0]["procedures"] == 2
    text = render(summary, "text")
    assert "Facet radiofrequency ablation: 3 procedures" in text and "median relief: 182 days" in text
    assert render(summary, "csv").splitlines()[1] == "facet-rfa,3,0.5,0.667,,182"
