"""Function in the repeat criteria (issue 19): a functional improvement on the same instrument as
baseline, sustained for the period, meets a repeat criterion that accepts pain *or* function.

Sources: L38773 [S2] (repeat RFA: "consistent improvement in previously painful movements / ADLs
vs baseline on the same scale", no percentage; therapeutic facet: >= 50 % ADL improvement for
>= 3 months); SIJ LCDs [S18] and ESI LCDs [S19] (>= 50 % sustained pain or functional
improvement for >= 3 months on the same scale); CRITERIA §9.2 long-term relief (c). Instruments'
direction, range and MCID come from the policy's ``instruments`` section.

Percent improvement is defined only where an instrument has a natural floor of no disability:
for a higher-is-worse instrument (ODI, NDI, PEG, WOMAC) (baseline − follow-up) / (baseline − the
best value); for a higher-is-better one (KOOS JR, KOOS ADL) (follow-up − baseline) / (the best
value − baseline). PROMIS T-scores are centred on the population mean, so a percentage of them
means nothing: they never carry a repeat criterion (they still show in outcomes with their MCID).
That is the reading that protects the patient: no repeat procedure on an improvement that the
instrument cannot express.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from services.recommender.engine.policy import Policy
from shared.domain import terminology as t
from shared.domain._json import add_months
from shared.domain.facts import FunctionScore, Intervention, PatientFacts

MET, FAILED, PENDING, NO_BASELINE, NO_FOLLOW_UP = "met", "failed", "pending", "no-baseline", "no-follow-up"


@dataclass(frozen=True, slots=True)
class Instrument:
    id: str
    direction: str  # higher-worse | higher-better
    low: float
    high: float
    mcid: float
    percent_improvement: bool
    source: str

    @property
    def best(self) -> float:
        return self.low if self.direction == "higher-worse" else self.high

    def change(self, baseline: float, value: float) -> float:
        """Improvement in the instrument's points (positive = better)."""
        return baseline - value if self.direction == "higher-worse" else value - baseline

    def improvement_percent(self, baseline: float, value: float) -> float | None:
        if not self.percent_improvement:
            return None
        room = abs(baseline - self.best)
        if room <= 0:
            return None
        return max(0.0, self.change(baseline, value) / room * 100.0)


def instrument(policy: Policy, instrument_id: str) -> Instrument | None:
    spec = policy.instruments.get(instrument_id)
    if spec is None:
        return None
    return Instrument(
        instrument_id,
        str(spec["direction"]),
        float(spec["low"]),
        float(spec["high"]),
        float(spec["mcid"]),
        bool(spec.get("percent_improvement", False)),
        str(spec.get("source", "")),
    )


def _side_ok(score_side: str | None, side: str | None) -> bool:
    return score_side is None or side is None or score_side == "bilateral" or score_side == side


def baseline_score(
    facts: PatientFacts, policy: Policy, before: datetime, side: str | None, *, eligible_only: bool
) -> FunctionScore | None:
    """The latest function score in ``function_baseline_days`` before ``before`` (on the side)."""
    lo = before - timedelta(days=policy.g("function_baseline_days"))
    best = None
    for score in facts.function_scores:
        if score.time > before:
            break
        if score.time < lo or not _side_ok(score.side, side):
            continue
        spec = instrument(policy, score.instrument)
        if spec is None or (eligible_only and not spec.percent_improvement):
            continue
        best = score
    return best


def sustained(
    series: Sequence[tuple[datetime, float]], threshold: float, period_end: date
) -> tuple[str, datetime | None]:
    """CONTRACT §6 "Repeat RFA" applied to any series of improvement percentages: every value from
    the start to ``period_end`` at or above the threshold (one isolated dip allowed when the next
    value recovers) and one at or after ``period_end`` → met; a failing value → failed; the
    period not yet over → pending. Returns (status, time of the last value at or above)."""
    dip_used = False
    last_ok: datetime | None = None
    for i, (when, value) in enumerate(series):
        if value >= threshold:
            last_ok = when
            if when.date() >= period_end:
                return MET, last_ok
            continue
        recovers = i + 1 < len(series) and series[i + 1][1] >= threshold
        if dip_used or not recovers:
            return FAILED, last_ok
        dip_used = True
    return PENDING, last_ok


def long_term_function(
    facts: PatientFacts,
    policy: Policy,
    procedure: Intervention,
    threshold: float,
    months: int,
    side: str | None,
) -> tuple[str, dict[str, Any] | None]:
    """Functional improvement after ``procedure`` on the baseline's instrument, sustained for
    ``months`` (same rules as pain). Returns (status, the evidence's ``function`` object or None
    when no eligible baseline exists)."""
    base = baseline_score(facts, policy, procedure.start, side, eligible_only=True)
    if base is None:
        return NO_BASELINE, None
    spec = instrument(policy, base.instrument)
    assert spec is not None
    start = procedure.end + timedelta(days=policy.g("follow_up_start_days"))
    follow = [
        s for s in facts.function_scores
        if s.instrument == base.instrument and s.time >= start and _side_ok(s.side, side)
    ]  # fmt: skip
    evidence: dict[str, Any] = {
        "instrument": base.instrument,
        "instrumentName": t.FUNCTION_NAMES.get(base.instrument, base.instrument),
        "baseline": _num(base.value),
        "baselineObservation": base.ref,
        "baselineDate": base.time.isoformat(),
        "followUp": None,
        "followUpDate": None,
        "improvementPercent": None,
        "threshold": threshold,
        "met": False,
    }
    series = []
    for s in follow:
        pct = spec.improvement_percent(base.value, s.value)
        if pct is not None:
            series.append((s, pct))
    if not series:
        return NO_FOLLOW_UP, evidence
    status, _ = sustained(
        [(s.time, pct) for s, pct in series], threshold, add_months(procedure.end.date(), months)
    )
    shown = series[-1]
    if status == MET:
        shown = next(x for x in series if x[0].time.date() >= add_months(procedure.end.date(), months))
    elif status == FAILED:
        shown = next(x for x in series if x[1] < threshold)
    evidence.update(
        followUp=_num(shown[0].value),
        followUpDate=shown[0].time.isoformat(),
        improvementPercent=round(shown[1], 1),
        met=status == MET,
    )
    return status, evidence


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)
