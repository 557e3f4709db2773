"""Relief arithmetic, sustained relief, precedence and calendar rules (CRITERIA §9.2, §9.4;
CONTRACT §6 "Readings and relief", "Verdicts", "Time")."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.recommender.engine.model import Finding, combine
from services.recommender.engine.relief import relief_percent, sustained_minutes
from services.recommender.engine.sessions import cap_finding
from services.recommender.policies import load_policy
from shared.domain._json import add_months
from shared.domain.facts import PainReading

END = datetime(2025, 2, 3, 9, 20, tzinfo=UTC)


def posts(*pairs: tuple[int, float]) -> list[PainReading]:
    return [
        PainReading(f"Observation/{i}", "72514-3", v, END + timedelta(minutes=m))
        for i, (m, v) in enumerate(pairs)
    ]


@pytest.mark.parametrize(
    ("baseline", "post", "relief"),
    [
        pytest.param(7, 1, 85.7, id="baseline-7-post-1-is-85.7"),
        pytest.param(7, 2, 71.4, id="baseline-7-post-2-is-71.4"),
        pytest.param(8, 2, 75.0, id="baseline-8-post-2-is-75-exactly"),
        pytest.param(10, 2, 80.0, id="baseline-10-post-2-is-80-exactly"),
        pytest.param(5, 7, 0.0, id="worse-pain-is-0-not-negative"),
    ],
)
def test_relief_percent(baseline: float, post: float, relief: float) -> None:
    assert relief_percent(baseline, post) == pytest.approx(relief, abs=0.05)


@pytest.mark.parametrize(
    ("readings", "minutes"),
    [
        pytest.param(posts((15, 1), (60, 1), (120, 2)), 60, id="lidocaine-run-ends-at-60-min"),
        pytest.param(posts((20, 0), (120, 1), (240, 1), (360, 3)), 240, id="bupivacaine-run-240-min"),
        pytest.param(posts((90, 1), (240, 1)), 0, id="run-must-start-within-60-min"),
        pytest.param(posts((10, 3), (45, 1), (100, 1)), 100, id="run-may-start-after-an-early-low-reading"),
        pytest.param(posts((15, 1), (30, 5), (60, 1)), 15, id="a-reading-below-threshold-breaks-the-run"),
        pytest.param(posts((15, 4)), 0, id="never-reaches-threshold"),
    ],
)
def test_sustained_minutes(readings: list[PainReading], minutes: int) -> None:
    assert sustained_minutes(END, readings, 7, 80, 60) == minutes


def test_precedence_and_principal_reason() -> None:
    out = combine(
        [
            Finding("deferred", "pain-duration-too-short", date(2025, 4, 15)),
            Finding("needs-review", "low-baseline"),
            Finding("not-met", "second-block-required"),
        ]
    )
    assert (out.verdict, out.reasons) == (
        "not-met",
        ("second-block-required", "low-baseline", "pain-duration-too-short"),
    )


def test_deferral_binding_date_first() -> None:
    out = combine(
        [
            Finding("deferred", "pain-duration-too-short", date(2025, 5, 29)),
            Finding("deferred", "conservative-care-too-short", date(2025, 6, 9)),
        ]
    )
    assert (out.reasons[0], out.earliest) == ("conservative-care-too-short", date(2025, 6, 9))


@pytest.mark.parametrize(
    ("sessions", "cap", "release"),
    [
        pytest.param(
            [date(2024, 6, 10), date(2024, 11, 4)], 2, date(2025, 6, 11), id="k-equals-c-oldest-plus-366"
        ),
        pytest.param(
            [date(2024, 6, 10), date(2024, 9, 1), date(2024, 11, 4)],
            2,
            date(2025, 9, 2),
            id="k-3-c-2-second-oldest-plus-366",
        ),
        pytest.param([date(2024, 6, 10)], 2, None, id="under-cap"),
    ],
)
def test_cap_release(sessions: list[date], cap: int, release: date | None) -> None:
    finding = cap_finding(sessions, cap, "rfa-session-cap", load_policy("cms-lcd"))
    assert (finding.until if finding else None) == release


@pytest.mark.parametrize(
    ("start", "months", "due"),
    [
        pytest.param(date(2025, 1, 15), 3, date(2025, 4, 15), id="jan-15-plus-3-months"),
        pytest.param(date(2024, 11, 30), 3, date(2025, 2, 28), id="nov-30-clamped-to-feb-28"),
        pytest.param(date(2024, 9, 2), 6, date(2025, 3, 2), id="rfa-plus-6-months"),
        pytest.param(date(2025, 3, 10), -24, date(2023, 3, 10), id="24-months-back"),
    ],
)
def test_calendar_months(start: date, months: int, due: date) -> None:
    assert add_months(start, months) == due
