"""Knee pathways: genicular nerve blocks and RFA, intra-articular corticosteroid.

Sources: CRITERIA §4 (knee [S20]-[S22]), §9.1 P5, P6; CONTRACT §6. Every number comes from the
policy's ``genicular-rfa`` and ``knee-steroid`` pathways.
"""

from __future__ import annotations

from datetime import date, timedelta

from services.recommender.engine.model import (
    NOT_MET,
    Detail,
    Finding,
)
from services.recommender.engine.pathways.common import (
    JointEval,
    block_history_findings,
    blocks_at,
    covered_finding,
)
from services.recommender.engine.relief import PatientContext
from services.recommender.engine.sessions import (
    pain_duration_finding,
)
from shared.domain import terminology as t
from shared.domain.facts import Intervention
from shared.humanize import day, days, listing, plural


def is_genicular_block(iv: Intervention) -> bool:
    return iv.kind == t.GENICULAR_BLOCK


def is_knee_steroid(iv: Intervention) -> bool:
    return iv.kind == t.JOINT_INJECTION and iv.region == "knee" and iv.injectate.steroid is not None


def genicular(ctx: PatientContext, side: str, on: date) -> JointEval:
    """Genicular RFA (CRITERIA §4.1, §9.1 P5): ``blocks_required`` genicular nerve block(s) with
    >= ``threshold`` % for the agent's minimum; pain >= ``pain_months``. Under ``cms-lcd`` judged on
    these defaults (no Medicare LCD) unless a policy sets ``covered: false``."""
    pathway = "genicular-rfa"
    p = ctx.policy
    e = JointEval("knee", side, pathway=pathway)
    covered_finding(ctx, pathway, e)
    block_history_findings(ctx, is_genicular_block, "knee", side, on, pathway, e)
    e.add(pain_duration_finding(ctx.facts, "knee", on, p.opt(pathway, "pain_months"), None, pathway))
    return e


def knee_steroid(ctx: PatientContext, side: str, on: date) -> JointEval:
    """Knee intra-articular corticosteroid (CRITERIA §4.2, §9.1 P6; McAlindon 2017 [S21], expert
    opinion [S22]): a harm criterion — another injection when ``max_injections`` were given in the
    last ``window_days`` or under ``min_interval_days`` after the last is ``not-met``,
    ``steroid-frequency``; the suggestion is to avoid it."""
    pathway = "knee-steroid"
    p = ctx.policy
    e = JointEval("knee", side, pathway=pathway)
    covered_finding(ctx, pathway, e)
    window = p.num(pathway, "window_days")
    prior = [
        iv for iv in blocks_at(ctx, is_knee_steroid, "knee", side, on) if (on - iv.end.date()).days <= window
    ]
    for iv in prior:
        e.evidence.append(
            {
                "procedure": iv.ref,
                "performed": iv.end.isoformat(),
                "agent": iv.injectate.agent,
                "scale": None,
                "baseline": None,
                "peakReliefPercent": None,
                "sustainedMinutes": None,
                "positive": False,
                "reasons": ["steroid-frequency"],
            }
        )
    cap = p.opt(pathway, "max_injections")
    gap = p.opt(pathway, "min_interval_days")
    too_many = cap is not None and len(prior) >= cap
    too_soon = gap is not None and bool(prior) and (on - prior[-1].end.date()).days < gap
    if too_many or too_soon:
        e.add(
            Finding(NOT_MET, "steroid-frequency", None, steroid_detail(prior, cap, gap, window, on, pathway))
        )
    return e


def earliest_allowed(
    prior: list[Intervention], cap: float | None, gap: float | None, window: float
) -> date | None:
    """The first day another injection keeps both limits: the (k − cap + 1)-th most recent leaves
    the window, and ``gap`` days after the last."""
    if not prior:
        return None
    dates = sorted(iv.end.date() for iv in prior)
    out = dates[-1] + timedelta(days=int(gap)) if gap is not None else dates[-1]
    if cap is not None and len(dates) >= cap:
        out = max(out, dates[len(dates) - int(cap)] + timedelta(days=int(window) + 1))
    return out


def steroid_detail(
    prior: list[Intervention], cap: float | None, gap: float | None, window: float, on: date, pathway: str
) -> Detail:
    """``3 injections in 365 days (12 Jan, 3 Apr, 1 Aug 2025) — limit 3; earliest 2 Jan 2026``."""
    dates = [iv.end.date() for iv in prior]
    when = listing([day(d) for d in dates])
    earliest = earliest_allowed(prior, cap, gap, window)
    after = f"; earliest {day(earliest)}" if earliest else ""
    if cap is not None and len(prior) >= cap:
        return Detail(
            "steroid-frequency",
            len(prior),
            int(cap),
            "injections",
            f"pathways.{pathway}.max_injections",
            f"limit of {plural(cap, 'injection')} in {days(window)} reached ({when}){after}",
            tuple(dates),
            earliest,
            f"{plural(len(prior), 'injection')} in {days(window)} — limit {plural(cap, 'injection')}{after}",
        )
    apart = (on - dates[-1]).days
    return Detail(
        "steroid-frequency",
        apart,
        gap,
        "days",
        f"pathways.{pathway}.min_interval_days",
        f"last injection {day(dates[-1])}, {days(apart)} before < {days(gap)} required{after}",
        tuple(dates),
        earliest,
        f"last injection {days(apart)} ago < {days(gap)}{after}",
    )
