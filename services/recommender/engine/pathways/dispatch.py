"""Which non-facet pathway judges an order, and which proactive assessments a patient gets.

The rules themselves live one pathway per file (``sij``, ``esi``, ``knee``); this module only
routes orders and recent procedures to them (CONTRACT §4 codes → pathway, §6 "Which
assessments"), and names the suggested next step.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from services.recommender.engine.model import (
    NOT_MET,
    SUPPORTED,
    Assessment,
    OrderCheck,
    Target,
    dedupe_evidence,
)
from services.recommender.engine.pathways.common import (
    JointEval,
    combine_order,
    group_assessments,
    limit_step,
    order_sides,
    sides_of,
)
from services.recommender.engine.pathways.esi import ESI_KINDS, esi, is_esi
from services.recommender.engine.pathways.knee import (
    genicular,
    is_genicular_block,
    is_knee_steroid,
    knee_steroid,
)
from services.recommender.engine.pathways.sij import is_sij_diagnostic, is_sij_therapeutic, sij
from services.recommender.engine.relief import PatientContext
from shared.domain import terminology as t
from shared.domain._json import add_months
from shared.domain.facts import Order
from shared.domain.normalize import joint_region

CPT = t.CPT
_SIJ_KINDS = (t.SIJ_BLOCK, t.SIJ_NERVE_BLOCK)
_ESI_KINDS = (t.ESI_INTERLAMINAR, t.ESI_TRANSFORAMINAL)
_STEPS = {
    "sij-therapeutic": ("27096", "Sacroiliac joint injection with imaging guidance"),
    "sij-diagnostic": ("27096", "Diagnostic sacroiliac joint injection with imaging guidance"),
    "genicular-rfa": ("64624", "Genicular nerve radiofrequency ablation"),
    "genicular-block": ("64454", "Genicular nerve block"),
    "knee-steroid": ("20610", "Knee intra-articular corticosteroid injection"),
    "esi-lumbar": ("64483", "Transforaminal epidural injection, lumbar/sacral"),
    "esi-cervical": ("64479", "Transforaminal epidural injection, cervical/thoracic"),
}


def _step(key: str) -> dict[str, str]:
    code, display = _STEPS[key]
    return {"system": CPT, "code": code, "display": display}


def order_pathway(order: Order) -> str | None:
    """CONTRACT §4 "Procedure and order codes → pathway" for the non-facet codes."""
    if order.kind == t.SIJ_BLOCK:
        return "sij-diagnostic" if order.diagnostic else "sij-therapeutic"
    if order.kind == t.SIJ_NERVE_BLOCK:
        return "sij-diagnostic"
    if order.kind == t.SIJ_RFA:
        return "sij-rfa"
    if order.kind in ESI_KINDS:
        return "esi"
    if order.kind == t.GENICULAR_RFA:
        return "genicular-rfa"
    if order.kind == t.JOINT_INJECTION and order.region == "knee" and order.injectate.steroid:
        return "knee-steroid"
    return None


def order_check(ctx: PatientContext, order: Order, now: datetime) -> OrderCheck | None:
    """Judge an SIJ, epidural or knee order at its requested date (CONTRACT §1, §6)."""
    pathway = order_pathway(order)
    if pathway is None:
        return None
    p = ctx.policy
    on = order.requested or now.date()
    evals: list[JointEval] = []
    limit: float | None = None
    limit_key = ""
    region = order.region
    if pathway == "esi":
        side = order.side or "bilateral"
        key = "max_levels_transforaminal" if order.kind == t.ESI_TRANSFORAMINAL else "max_levels_interlaminar"
        limit = p.opt(pathway, key)
        limit_key = f"pathways.{pathway}.{key}"
        levels = order.joints or ("",)
        for level in levels:
            e = esi(ctx, joint_region(level) if level else region, level, side, on)
            evals.append(e)
        if region == "other" and order.joints:
            region = joint_region(order.joints[0])
    else:
        for side in order_sides(ctx, order.side, order.region):
            if pathway.startswith("sij"):
                evals.append(sij(ctx, pathway, side, on))
            elif pathway == "genicular-rfa":
                evals.append(genicular(ctx, side, on))
            else:
                evals.append(knee_steroid(ctx, side, on))
    combined = combine_order(evals, region, limit, limit_key)
    suggestion = None
    if pathway == "knee-steroid" and combined.verdict == NOT_MET:
        suggestion = {
            "text": "Avoid another steroid injection: exercise, weight loss, topical NSAID, referral.",
            "doNotPerform": "true",
        }
    return OrderCheck(
        order=order.ref,
        pathway=pathway,
        verdict=combined.verdict,
        reasons=combined.reasons,
        earliest_date=combined.earliest,
        supported_targets=combined.supported,
        evidence=dedupe_evidence([ev for e in evals for ev in e.evidence]),
        suggestion=suggestion,
        details=combined.details,
    )


def assessments(ctx: PatientContext, now: datetime) -> list[Assessment]:
    """Proactive assessments (CONTRACT §6 "Which assessments"): SIJ diagnostic block →
    ``sij-therapeutic``; genicular block → ``genicular-rfa``; ESI → ``esi``; knee steroid injection
    → ``knee-steroid`` — for each region × side with one in ``assessment_lookback_months`` or a
    pending order."""
    p = ctx.policy
    on = now.date()
    since = add_months(on, -int(p.g("assessment_lookback_months")))
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)  # (pathway, side) → joints/levels
    regions: dict[tuple[str, str], str] = {}
    items: list[tuple[str, str | None, str, tuple[str, ...]]] = []
    for iv in ctx.completed:
        if not since <= iv.end.date() <= on:
            continue
        if is_sij_diagnostic(iv) or is_sij_therapeutic(iv):
            items.append(("sij-therapeutic", iv.side, "sacroiliac", ("SIJ",)))
        elif is_genicular_block(iv) or iv.kind == t.GENICULAR_RFA:
            items.append(("genicular-rfa", iv.side, "knee", ("knee",)))
        elif is_esi(iv):
            items.append(("esi", iv.side, iv.region, iv.joints))
        elif is_knee_steroid(iv):
            items.append(("knee-steroid", iv.side, "knee", ("knee",)))
    for order in ctx.facts.orders:
        pathway = order_pathway(order)
        if pathway in ("sij-therapeutic", "sij-diagnostic", "sij-rfa"):
            items.append(("sij-therapeutic", order.side, "sacroiliac", ("SIJ",)))
        elif pathway in ("genicular-rfa", "knee-steroid", "esi"):
            items.append((pathway, order.side, order.region, order.joints))
    for pathway, side, region, joints in items:
        sides = (side or "bilateral",) if pathway == "esi" else sides_of(ctx, side, region)
        for s in sides:
            wanted[(pathway, s)].update(joints)
            regions[(pathway, s)] = region
    out: list[Assessment] = []
    for (pathway, side), joint_set in sorted(wanted.items()):
        evals: list[JointEval] = []
        joints_sorted = sorted(joint_set)
        for joint in joints_sorted:
            if pathway == "sij-therapeutic":
                e = sij(ctx, pathway, side, on)
            elif pathway == "genicular-rfa":
                e = genicular(ctx, side, on)
            elif pathway == "knee-steroid":
                e = knee_steroid(ctx, side, on)
            else:
                e = esi(ctx, joint_region(joint), joint, side, on)
            evals.append(e)
        region = regions[(pathway, side)]
        if pathway == "esi" and joints_sorted:
            region = joint_region(joints_sorted[0])
        for pw, target, outcome, evidence in group_assessments(evals, region):
            step = None
            if outcome.verdict in (SUPPORTED, "deferred", "needs-review"):
                key = (
                    pw
                    if pw != "esi"
                    else ("esi-cervical" if region in ("cervical", "thoracic") else "esi-lumbar")
                )
                step = _step(key)
            elif pw == "genicular-rfa" and outcome.reasons[:1] == ("joint-not-blocked",):
                step = _step("genicular-block")
            elif pw == "sij-therapeutic" and outcome.reasons[:1] == ("joint-not-blocked",):
                step = _step("sij-diagnostic")
            step_targets: tuple[Target, ...] = ()
            step_limit = None
            if step is not None and pw == "esi" and step["code"] in ("64483", "64479"):
                key = "pathways.esi.max_levels_transforaminal"
                limit = p.opt("esi", "max_levels_transforaminal")
                step_targets, step_limit = limit_step(target, limit, key, "levels")
            out.append(
                Assessment(
                    pw,
                    target,
                    outcome.verdict,
                    outcome.reasons,
                    outcome.earliest,
                    step,
                    dedupe_evidence(evidence),
                    details=outcome.details,
                    step_targets=step_targets,
                    step_limit=step_limit,
                )
            )
    return out
