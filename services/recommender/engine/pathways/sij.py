"""Sacroiliac joint pathways: diagnostic blocks, therapeutic injections, RFA.

Sources: CRITERIA §2 (SIJ LCDs [S18]), §9.1 P3; CONTRACT §6. Every number comes from the
policy's ``sij-*`` pathways.
"""

from __future__ import annotations

from datetime import date

from services.recommender.engine.pathways.common import (
    JointEval,
    block_history_findings,
    blocks_at,
    covered_finding,
    repeat_finding,
)
from services.recommender.engine.relief import PatientContext
from services.recommender.engine.sessions import (
    cap_finding,
    conservative_care_finding,
    pain_duration_finding,
    session_dates,
)
from shared.domain import terminology as t
from shared.domain.facts import Intervention

_SIJ_KINDS = (t.SIJ_BLOCK, t.SIJ_NERVE_BLOCK)


def is_sij_diagnostic(iv: Intervention) -> bool:
    return iv.kind in _SIJ_KINDS and iv.diagnostic


def is_sij_therapeutic(iv: Intervention) -> bool:
    return iv.kind == t.SIJ_BLOCK and not iv.diagnostic


def sij(ctx: PatientContext, pathway: str, side: str, on: date) -> JointEval:
    """SIJ injections (CRITERIA §2, §9.1 P3): pain >= ``pain_months`` and conservative care >=
    ``conservative_care_days`` for every SIJ injection; a therapeutic one after
    ``blocks_required`` positive diagnostic blocks (>= ``threshold`` %, inclusive, for the agent's
    minimum); repeats after >= ``repeat_threshold`` % for ``repeat_months``; caps per rolling 12
    months. Provocation tests are documentation, never a criterion. ``sij-rfa`` is judged like a
    therapeutic step where a policy covers it (not under ``cms-lcd``: [S18])."""
    p = ctx.policy
    e = JointEval("SIJ", side, pathway=pathway)
    covered_finding(ctx, pathway, e)
    if pathway in ("sij-therapeutic", "sij-rfa"):
        block_history_findings(ctx, is_sij_diagnostic, "SIJ", side, on, "sij-therapeutic", e)
        prior = blocks_at(ctx, is_sij_therapeutic, "SIJ", side, on)
        if prior and pathway == "sij-therapeutic":
            repeat_finding(ctx, pathway, prior[-1], side, e)
    params = "sij-diagnostic" if pathway == "sij-diagnostic" else "sij-therapeutic"
    e.add(pain_duration_finding(ctx.facts, "sacroiliac", on, p.opt(params, "pain_months"), None, params))
    e.add(conservative_care_finding(ctx.facts, on, None, p.opt(params, "conservative_care_days"), params))
    if pathway != "sij-rfa":
        reason = "diagnostic-session-cap" if pathway == "sij-diagnostic" else "therapeutic-session-cap"
        dates = session_dates(ctx.completed, pathway, "sacroiliac", side, on, p)
        e.add(cap_finding(dates, p.opt(pathway, "session_cap"), reason, p, pathway))
    return e
