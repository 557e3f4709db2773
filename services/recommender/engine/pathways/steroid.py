"""Cumulative corticosteroid exposure across every injection.

Sources: CRITERIA §8 (Brown-Beresford 2022 [S25]), §9.7; CONTRACT §6. Every number comes from
the policy's ``steroid`` section.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from services.recommender.engine.model import (
    Alert,
    Detail,
)
from services.recommender.engine.relief import PatientContext
from shared.domain import terminology as t
from shared.humanize import day, days, number, plural


def _high_risk(ctx: PatientContext, on: date) -> bool:
    """Post-menopausal (female aged ``postmenopausal_age`` or more, or Z78.0, M80-M81, M85.8x) or
    diabetic (E10-E11): the lower threshold applies (CONTRACT §6)."""
    facts = ctx.facts
    if facts.sex == "female" and facts.birth_date is not None:
        age = (
            on.year
            - facts.birth_date.year
            - ((on.month, on.day) < (facts.birth_date.month, facts.birth_date.day))
        )
        if age >= ctx.policy.steroid["postmenopausal_age"]:
            return True
    return any(
        c.active and any(x.startswith(t.POSTMENOPAUSAL + t.DIABETES) for x in c.codes)
        for c in facts.conditions
    )


def cumulative_steroid_alert(ctx: PatientContext, now: datetime) -> Alert | None:
    """Methylprednisolone-equivalent mg over the ``window_days`` up to ``now``, every route but
    oral, exact factors; an undocumented dose counts ``assumed_dose_mg`` and is marked assumed.
    Fires strictly above ``threshold_mg_high_risk`` / ``threshold_mg_default`` (CONTRACT §6;
    CRITERIA §8, Brown-Beresford 2022 [S25])."""
    s = ctx.policy.steroid
    factors = ctx.policy.steroid_factors
    since = now - timedelta(days=s["window_days"])
    total = 0.0
    assumed = 0
    refs: list[str] = []
    parts: list[str] = []
    for exp in ctx.facts.steroids:
        if not since <= exp.time <= now:
            continue
        mg = exp.mg
        if mg is None:
            mg = s["assumed_dose_mg"]
            assumed += 1
        mpde = mg * factors.get(exp.steroid, 1.0)
        total += mpde
        refs.append(exp.ref)
        flag = " (dose not documented, assumed)" if exp.mg is None else ""
        equivalent = "" if exp.steroid in ("methylprednisolone", "triamcinolone") else f" = {number(mpde)} mg"
        parts.append(f"{day(exp.time)} {exp.steroid} {number(mg)} mg{flag}{equivalent}")
    high = _high_risk(ctx, now.date())
    key = "threshold_mg_high_risk" if high else "threshold_mg_default"
    limit = s[key]
    if total <= limit:
        return None
    who = "a post-menopausal or diabetic patient" if high else "this patient"
    measured = (
        f"{number(total)} mg methylprednisolone-equivalent in {days(s['window_days'])} > {number(limit)} mg "
        f"threshold for {who}"
    )
    text = (
        f"Cumulative corticosteroid {measured}"
        + (
            f" ({plural(assumed, 'undocumented dose')} assumed {number(s['assumed_dose_mg'])} mg)"
            if assumed
            else ""
        )
        + ": "
        + "; ".join(parts)
        + "."
    )
    detail = Detail("cumulative-steroid", round(total, 1), limit, "mg", f"steroid.{key}", measured)
    return Alert("cumulative-steroid", "warning", text, tuple(refs), detail)
