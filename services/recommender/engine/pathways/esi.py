"""Epidural steroid injections.

Sources: CRITERIA §3 (ESI LCDs [S19]), §9.1 P4; CONTRACT §6. Every number comes from the
policy's ``esi`` pathway.
"""

from __future__ import annotations

from datetime import date

from services.recommender.engine import why
from services.recommender.engine.model import (
    NOT_MET,
    Finding,
)
from services.recommender.engine.pathways.common import (
    JointEval,
    covered_finding,
    repeat_finding,
)
from services.recommender.engine.relief import PatientContext
from services.recommender.engine.sessions import (
    cap_finding,
    conservative_care_finding,
    pain_duration_finding,
    regions_of_group,
    session_dates,
)
from shared.domain import terminology as t
from shared.domain.facts import Intervention

ESI_KINDS = (t.ESI_INTERLAMINAR, t.ESI_TRANSFORAMINAL)


def is_esi(iv: Intervention) -> bool:
    return iv.kind in ESI_KINDS


def _radicular_indication(ctx: PatientContext, region: str, on: date) -> bool:
    group = regions_of_group(region)
    return any(
        c.active
        and any(x.startswith(t.RADICULAR_INDICATION) for x in c.codes)
        and (c.region is None or c.region in group)
        and (c.onset is None or c.onset <= on)
        for c in ctx.facts.conditions
    )


def esi(ctx: PatientContext, region: str, level: str, side: str, on: date) -> JointEval:
    """Epidural steroid injection (CRITERIA §3, §9.1 P4): a radicular indication (M54.1x, M51.1x,
    M48.06x, M96.1; else ``indication-missing``); pain >= ``pain_days``; for the first ESI of an
    episode (none in ``episode_lookback_days``) conservative care >= ``conservative_care_days``;
    a repeat after >= ``repeat_threshold`` % for ``repeat_months``; <= ``session_cap`` sessions per
    spinal region in 12 months."""
    pathway = "esi"
    p = ctx.policy
    e = JointEval(level, side, pathway=pathway)
    covered_finding(ctx, pathway, e)
    if not _radicular_indication(ctx, region, on):
        detail = why.rule(
            "indication-missing",
            "no radicular diagnosis documented",
            "a radicular indication required (M54.1x, M51.1x, M48.06x or M96.1)",
        )
        e.add(Finding(NOT_MET, "indication-missing", None, detail))
    e.add(pain_duration_finding(ctx.facts, region, on, None, p.opt(pathway, "pain_days"), pathway))
    group = regions_of_group(region)
    lookback = p.num(pathway, "episode_lookback_days")
    prior = [
        iv
        for iv in ctx.completed
        if is_esi(iv) and iv.region in group and 0 <= (on - iv.end.date()).days <= lookback
    ]
    if prior:
        repeat_finding(ctx, pathway, prior[-1], side if side != "bilateral" else None, e)
    else:
        e.add(
            conservative_care_finding(ctx.facts, on, None, p.opt(pathway, "conservative_care_days"), pathway)
        )
    dates = session_dates(ctx.completed, pathway, region, side, on, p)
    e.add(cap_finding(dates, p.opt(pathway, "session_cap"), "esi-session-cap", p, pathway))
    return e
