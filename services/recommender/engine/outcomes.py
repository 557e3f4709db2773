"""What each definitive or therapeutic procedure achieved (issue 19; CONTRACT §8 ``outcomes``).

For every completed facet or genicular RFA, ESI, therapeutic facet or SIJ injection and knee
corticosteroid injection up to ``--now``:

- baseline: the latest pain score in ``long_term_baseline_days`` before it (its scale is the
  outcome's scale) and the latest score of each functional instrument in
  ``function_baseline_days`` before it;
- at 1, 3, 6 and 12 calendar months: the reading nearest the date within
  ``outcome_window_days_1m`` (1 month) or ``outcome_window_days`` (later), on the same scale or
  instrument and side, before the next procedure on the same target — pain with its relief
  percent, function with its change, improvement percent (where defined) and whether the change
  reaches the instrument's MCID; a milestone after ``--now`` is ``pending``;
- ``reliefDays``: from the procedure to the last reading of the run of readings at or above
  ``outcome_relief_threshold`` % that starts with the first reading after it; ``censored`` when
  no later reading falls below (still relieved at the last reading, or the next procedure came
  first) — the Kaplan–Meier reading of a duration;
- ``daysToNextProcedure``: to the next completed procedure of any kind on the same target
  (region, a shared joint, a compatible side).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from services.recommender.engine.functional import instrument
from services.recommender.engine.relief import PatientContext, relief_percent, sides_compatible
from services.recommender.engine.sessions import family
from shared.domain import terminology as t
from shared.domain._json import add_months
from shared.domain.facts import FunctionScore, Intervention, PainReading

MILESTONES = (1, 3, 6, 12)
_DEFINITIVE = frozenset({"facet-rfa", "facet-therapeutic", "sij-therapeutic", "esi", "genicular-rfa"})


def pathway_of(iv: Intervention) -> str | None:
    """The pathway a definitive or therapeutic procedure belongs to, or None."""
    fam = family(iv)
    if fam in _DEFINITIVE:
        return fam
    if iv.kind == t.JOINT_INJECTION and iv.region == "knee" and iv.injectate.steroid:
        return "knee-steroid"
    return None


def _same_target(a: Intervention, b: Intervention) -> bool:
    if a.region != b.region or not sides_compatible(a.side, b.side):
        return False
    return not a.joints or not b.joints or bool(set(a.joints) & set(b.joints))


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 1)


def _nearest(items: list[Any], target: date, window: int) -> Any | None:
    best, best_gap = None, None
    for item in items:
        gap = abs((item.time.date() - target).days)
        if gap <= window and (best_gap is None or gap < best_gap):
            best, best_gap = item, gap
    return best


def _pain_point(reading: PainReading, baseline: float) -> dict[str, Any]:
    return {
        "value": _num(reading.value),
        "date": reading.time.date().isoformat(),
        "reliefPercent": round(relief_percent(baseline, reading.value), 1),
        "observation": reading.ref,
    }


def _function_point(ctx: PatientContext, score: FunctionScore, base: FunctionScore) -> dict[str, Any]:
    spec = instrument(ctx.policy, score.instrument)
    change = spec.change(base.value, score.value) if spec else None
    pct = spec.improvement_percent(base.value, score.value) if spec else None
    return {
        "instrument": score.instrument,
        "value": _num(score.value),
        "date": score.time.date().isoformat(),
        "change": None if change is None else _num(change),
        "improvementPercent": None if pct is None else round(pct, 1),
        "meetsMcid": None if spec is None or change is None else change >= spec.mcid,
        "observation": score.ref,
    }


def _relief_run(
    readings: list[PainReading], baseline: float, threshold: float, start: datetime
) -> tuple[int | None, bool]:
    if not readings:
        return None, False
    last_ok: datetime | None = None
    for r in readings:
        if relief_percent(baseline, r.value) >= threshold:
            last_ok = r.time
            continue
        return (0 if last_ok is None else (last_ok.date() - start.date()).days), False
    assert last_ok is not None
    return (last_ok.date() - start.date()).days, True


def outcome(ctx: PatientContext, iv: Intervention, pathway: str, now: datetime) -> dict[str, Any]:
    p = ctx.policy
    later = [o for o in ctx.completed if o.end > iv.end and o.ref != iv.ref and _same_target(iv, o)]
    nxt = min(later, key=lambda o: o.end, default=None)
    horizon = min(now, nxt.start) if nxt else now
    base = ctx.baseline(iv, timedelta(days=p.g("long_term_baseline_days")))
    pain = [
        r
        for r in ctx.facts.readings
        if base is not None
        and r.scale == base.scale
        and iv.end < r.time <= horizon
        and sides_compatible(r.side, iv.side)
    ]
    bases: dict[str, FunctionScore] = {}
    lo = iv.start - timedelta(days=p.g("function_baseline_days"))
    for s in ctx.facts.function_scores:
        if lo <= s.time <= iv.start and sides_compatible(s.side, iv.side):
            bases[s.instrument] = s
    follow = {
        k: [s for s in ctx.facts.function_scores
            if s.instrument == k and iv.end < s.time <= horizon and sides_compatible(s.side, iv.side)]
        for k in bases
    }  # fmt: skip
    milestones = []
    for months in MILESTONES:
        when = add_months(iv.end.date(), months)
        window = int(p.g("outcome_window_days_1m") if months == 1 else p.g("outcome_window_days"))
        entry: dict[str, Any] = {"months": months, "date": when.isoformat()}
        if when - timedelta(days=0) > now.date() and not (nxt and nxt.start.date() <= when):
            entry["status"] = "pending"
        elif nxt is not None and nxt.start.date() < when - timedelta(days=window):
            entry["status"] = "after-next-procedure"
        else:
            entry["status"] = "due"
        point = _nearest(pain, when, window) if base is not None else None
        entry["pain"] = (
            _pain_point(point, base.value)
            if point is not None and base is not None and base.value > 0
            else None
        )
        points = []
        for k in sorted(bases):
            nearest = _nearest(follow[k], when, window)
            if nearest is not None:
                points.append(_function_point(ctx, nearest, bases[k]))
        entry["function"] = points
        milestones.append(entry)
    days: int | None = None
    censored = False
    if base is not None and base.value > 0:
        days, censored = _relief_run(pain, base.value, p.g("outcome_relief_threshold"), iv.end)
    return {
        "procedure": iv.ref,
        "pathway": pathway,
        "target": {"region": iv.region, "joints": list(iv.joints), "side": iv.side},
        "performed": iv.end.isoformat(),
        "baseline": {
            "pain": None
            if base is None
            else {
                "scale": base.scale,
                "value": _num(base.value),
                "date": base.time.date().isoformat(),
                "observation": base.ref,
            },
            "function": [
                {
                    "instrument": k,
                    "value": _num(s.value),
                    "date": s.time.date().isoformat(),
                    "observation": s.ref,
                }
                for k, s in sorted(bases.items())
            ],
        },
        "milestones": milestones,
        "reliefThresholdPercent": _num(p.g("outcome_relief_threshold")),
        "reliefDays": days,
        "censored": censored,
        "nextProcedure": nxt.ref if nxt else None,
        "daysToNextProcedure": (nxt.end.date() - iv.end.date()).days if nxt else None,
    }


def outcomes(ctx: PatientContext, now: datetime) -> tuple[dict[str, Any], ...]:
    """One entry per completed definitive or therapeutic procedure up to ``now``, oldest first
    (once per context and ``now``: the worker's entry and its outcome rows both ask)."""
    key = ("outcomes", now)
    found: tuple[dict[str, Any], ...] | None = ctx.memo.get(key)
    if found is None:
        found = ctx.memo[key] = tuple(
            outcome(ctx, iv, pathway, now)
            for iv in ctx.completed
            if (pathway := pathway_of(iv)) is not None and iv.end <= now
        )
    return found
