"""Facet pathways: diagnostic blocks, first and repeat RFA, therapeutic IA injections.

Sources: CRITERIA §1 (L38773 [S2], CGS [S3][S5], NGS/CGS sedation [S6][S7]), §9.1 P1, P2, P7,
§9.3, §9.4; CONTRACT §6 "Which assessments", "Blocks toward a procedure", "Verdicts",
"Repeat RFA". Every number comes from the policy's ``facet-*`` pathways.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

from services.recommender.engine import why
from services.recommender.engine.model import (
    NEEDS_REVIEW,
    NOT_COVERED,
    NOT_EVALUABLE,
    NOT_MET,
    SUPPORTED,
    Assessment,
    Detail,
    Finding,
    OrderCheck,
    Target,
    dedupe_evidence,
)
from services.recommender.engine.pathways.common import (
    JointEval,
    blocks_at,
    combine_order,
    confirming_flags,
    group_assessments,
    judge_history,
    limit_step,
    long_term_finding,
    not_covered_detail,
    order_sides,
    repeat_finding,
    sides_of,
)
from services.recommender.engine.relief import POSITIVE, PatientContext
from services.recommender.engine.sessions import (
    cap_finding,
    conservative_care_finding,
    pain_duration_finding,
    session_dates,
    untreated_radiculopathy,
)
from shared.domain import terminology as t
from shared.domain._json import add_months
from shared.domain.facts import Intervention, Order
from shared.domain.normalize import joint_region
from shared.humanize import day, number, plural

CPT = t.CPT
_SPINE = ("cervical", "thoracic", "lumbar")


def is_mbb(iv: Intervention) -> bool:
    """Diagnostic medial branch block: only these confirm toward ``facet-rfa`` (CONTRACT §6)."""
    return iv.kind == t.FACET_BLOCK and iv.diagnostic and not iv.intra_articular


def is_facet_diagnostic(iv: Intervention) -> bool:
    return iv.kind == t.FACET_BLOCK and iv.diagnostic


def is_rfa(iv: Intervention) -> bool:
    return iv.kind == t.FACET_RFA


def is_facet_therapeutic(iv: Intervention) -> bool:
    return iv.kind == t.FACET_BLOCK and not iv.diagnostic


def _step(region: str, kind: str) -> dict[str, str]:
    cervical = region in ("cervical", "thoracic")
    table = {
        "rfa": ("64633", "Cervical/thoracic facet radiofrequency ablation, first joint")
        if cervical
        else ("64635", "Lumbar facet radiofrequency ablation, first joint"),
        "mbb": ("64490", "Cervical/thoracic medial branch block, first level")
        if cervical
        else ("64493", "Lumbar medial branch block, first level"),
    }
    code, display = table[kind]
    return {"system": CPT, "code": code, "display": display}


def _prerequisites(ctx: PatientContext, pathway: str, region: str, on: date, e: JointEval) -> None:
    """General facet criteria (CRITERIA §1.2 items 2-3): pain >= ``pain_months``; conservative care
    >= ``conservative_care_months`` when the policy asks; no untreated radiculopathy."""
    key = ("facet-prerequisites", pathway, region, on)
    found = ctx.memo.get(key)
    if found is None:
        p = ctx.policy
        found = ctx.memo[key] = (
            pain_duration_finding(ctx.facts, region, on, p.opt(pathway, "pain_months"), None, pathway),
            conservative_care_finding(
                ctx.facts, on, p.opt(pathway, "conservative_care_months"), None, pathway
            ),
            untreated_radiculopathy(ctx.facts, region, on),
        )
    for finding in found:
        e.add(finding)


def _missing_positive(
    ctx: PatientContext, joint: str, side: str, region: str, on: date, threshold: float
) -> str:
    """``not-confirmed-same-side`` / ``-same-joint`` when the missing positive block exists on the
    other side / at another joint of the region, else ``second-block-required`` (CONTRACT §6)."""
    for iv in ctx.completed:
        if not is_mbb(iv) or iv.end.date() > on or joint_region(iv.joints[0] if iv.joints else "") != region:
            continue
        if ctx.block(iv, threshold).status != POSITIVE:
            continue
        sides = sides_of(ctx, iv.side, iv.region)
        if joint in iv.joints and side not in sides:
            return "not-confirmed-same-side"
    for iv in ctx.completed:
        if not is_mbb(iv) or iv.end.date() > on:
            continue
        if ctx.block(iv, threshold).status != POSITIVE:
            continue
        if joint not in iv.joints and side in sides_of(ctx, iv.side, iv.region) and iv.region == region:
            return "not-confirmed-same-joint"
    return "second-block-required"


def first_rfa(
    ctx: PatientContext, region: str, joint: str, side: str, on: date, pathway: str = "facet-rfa"
) -> JointEval:
    """Initial thermal RFA (CRITERIA §1.5; §9.1 P1): ``blocks_required`` consecutive positive MBBs
    (>= ``threshold`` % for at least the agent's minimum) at the same joint and side, within the
    RFA session cap. An ordered joint never blocked is ``joint-not-blocked``."""
    p = ctx.policy
    e = JointEval(joint, side, pathway=pathway)
    threshold = p.num(pathway, "threshold")
    needed = p.num(pathway, "blocks_required")
    history = blocks_at(ctx, is_mbb, joint, side, on)
    if not history and not blocks_at(ctx, is_facet_diagnostic, joint, side, on):
        e.add(
            Finding(NOT_MET, "joint-not-blocked", None, why.not_blocked(pathway, needed, f"{side} {joint}"))
        )
        return e
    results = [ctx.block(iv, threshold) for iv in history]
    e.evidence += [ctx.evidence(r) for r in results]
    findings, confirming = judge_history(results, int(needed), pathway, p)
    for f in findings:
        if f.reason == "second-block-required":
            code = _missing_positive(ctx, joint, side, region, on, threshold)
            detail = f.detail
            if code != "second-block-required" and detail is not None:
                where = "on this side" if code == "not-confirmed-same-side" else "at this joint"
                positive = detail.measured
                detail = why.blocks_required(code, positive, needed, pathway, where)
            f = Finding(NOT_MET, code, None, detail)
        e.add(f)
    for f in confirming_flags(confirming, p.opt(pathway, "min_interval_days"), pathway, p):
        e.add(f)
    _prerequisites(ctx, pathway, region, on, e)
    dates = session_dates(ctx.completed, "facet-rfa", region, side, on, p)
    e.add(cap_finding(dates, p.opt(pathway, "session_cap"), "rfa-session-cap", p, pathway))
    return e


def _prior_rfa(ctx: PatientContext, joint: str, side: str, before: date) -> Intervention | None:
    prior = [iv for iv in blocks_at(ctx, is_rfa, joint, side, before) if iv.end.date() <= before]
    return prior[-1] if prior else None


def _source_in_question(ctx: PatientContext, rfa: Intervention, region: str, side: str) -> bool:
    """A pain Condition with onset after the RFA whose side or region differs (CONTRACT §6)."""
    for c in ctx.facts.conditions:
        if not c.active or c.onset is None or c.onset <= rfa.end.date():
            continue
        if not any(x.startswith(t.PAIN_CONDITIONS) for x in c.codes):
            continue
        if (c.region is not None and c.region != region) or (c.side is not None and c.side != side):
            return True
    return False


def repeat_rfa(ctx: PatientContext, region: str, joint: str, side: str, on: date) -> JointEval:
    """Repeat RFA at the same joint and side (CRITERIA §1.5; CONTRACT §6 "Repeat RFA"): the prior
    RFA gave >= ``threshold`` % for ``relief_months`` on the same scale; after
    ``repeat_diagnostics_after_years`` with the pain source in question, new blocks are required."""
    pathway = "facet-rfa-repeat"
    p = ctx.policy
    e = JointEval(joint, side, pathway=pathway)
    rfa = _prior_rfa(ctx, joint, side, on)
    assert rfa is not None
    long_term_finding(
        ctx,
        rfa,
        p.num(pathway, "threshold"),
        int(p.num(pathway, "relief_months")),
        side,
        e,
        (f"pathways.{pathway}.threshold", f"pathways.{pathway}.relief_months"),
        pathway=pathway,
    )
    years = p.opt(pathway, "repeat_diagnostics_after_years")
    if (
        years is not None
        and on >= add_months(rfa.end.date(), int(years * 12))
        and _source_in_question(ctx, rfa, region, side)
    ):
        after = [iv for iv in blocks_at(ctx, is_mbb, joint, side, on) if iv.end > rfa.end]
        results = [ctx.block(iv, p.num("facet-rfa", "threshold")) for iv in after]
        e.evidence += [ctx.evidence(r) for r in results]
        findings, _ = judge_history(results, int(p.num("facet-rfa", "blocks_required")), "facet-rfa", p)
        if findings:
            elapsed = (on - rfa.end.date()).days / 365.25
            detail = Detail(
                "repeat-diagnostics-required",
                round(elapsed, 1),
                years,
                "years",
                f"pathways.{pathway}.repeat_diagnostics_after_years",
                f"{number(elapsed)} years since the ablation on {day(rfa.end)} and the pain source in "
                f"question; new positive blocks required after {plural(years, 'year')}",
            )
            e.add(Finding(NOT_MET, "repeat-diagnostics-required", None, detail))
    e.add(untreated_radiculopathy(ctx.facts, region, on))
    dates = session_dates(ctx.completed, "facet-rfa", region, side, on, p)
    e.add(cap_finding(dates, p.opt(pathway, "session_cap"), "rfa-session-cap", p, pathway))
    return e


def _previously_ablated(ctx: PatientContext, joint: str, side: str, on: date) -> bool:
    """A diagnostic block ordered where an RFA succeeded (CRITERIA §1.3: the LCD contradicts itself)."""
    rfa = _prior_rfa(ctx, joint, side, on)
    if rfa is None:
        return False
    status, *_ = ctx.long_term(
        rfa,
        ctx.policy.num("facet-rfa-repeat", "threshold"),
        int(ctx.policy.num("facet-rfa-repeat", "relief_months")),
        side,
    )
    return status == "met"


def diagnostic_block(ctx: PatientContext, region: str, joint: str, side: str, on: date) -> JointEval:
    """A diagnostic MBB / IA block (CRITERIA §1.3; §9.1 P1, P7): prerequisites, <= ``session_cap``
    diagnostic sessions per region in 12 months, second block >= ``min_interval_days`` after the
    first (else ``needs-review``), ``needs-review`` at a previously successfully ablated joint."""
    pathway = "facet-diagnostic"
    p = ctx.policy
    e = JointEval(joint, side, pathway=pathway)
    _prerequisites(ctx, pathway, region, on, e)
    dates = session_dates(ctx.completed, pathway, region, side, on, p)
    e.add(cap_finding(dates, p.opt(pathway, "session_cap"), "diagnostic-session-cap", p, pathway))
    gap = p.opt(pathway, "min_interval_days")
    prior = blocks_at(ctx, is_facet_diagnostic, joint, side, on)
    if gap is not None and prior and (on - prior[-1].end.date()).days < gap:
        apart = (on - prior[-1].end.date()).days
        detail = why.interval(
            "diagnostic-interval-too-short", apart, gap, f"pathways.{pathway}.min_interval_days"
        )
        e.add(Finding(NEEDS_REVIEW, "diagnostic-interval-too-short", None, detail))
    if _previously_ablated(ctx, joint, side, on):
        detail = why.rule(
            "level-previously-ablated",
            f"a successful ablation at {side} {joint}",
            "a clinician's review before new diagnostic blocks",
        )
        e.add(Finding(NEEDS_REVIEW, "level-previously-ablated", None, detail))
    return e


def therapeutic_injection(
    ctx: PatientContext, region: str, joint: str, side: str, on: date, order: Order | None
) -> JointEval:
    """Therapeutic IA facet injection (CRITERIA §1.4; §9.1 P2): ``blocks_required`` positive
    diagnostic blocks (MBB or IA), a documented reason RFA is not possible (Condition M96.0, Z95.0,
    Z95.810, Z96.82 or the order's reasonCode; else ``needs-review``), a repeat only after
    >= ``repeat_threshold`` % for ``repeat_months``, <= ``session_cap`` sessions."""
    pathway = "facet-therapeutic"
    p = ctx.policy
    e = JointEval(joint, side, pathway=pathway)
    threshold = p.num(pathway, "threshold")
    needed = p.num(pathway, "blocks_required")
    history = blocks_at(ctx, is_facet_diagnostic, joint, side, on)
    if not history:
        e.add(
            Finding(NOT_MET, "joint-not-blocked", None, why.not_blocked(pathway, needed, f"{side} {joint}"))
        )
    else:
        results = [ctx.block(iv, threshold) for iv in history]
        e.evidence += [ctx.evidence(r) for r in results]
        findings, confirming = judge_history(results, int(needed), pathway, p)
        for f in findings:
            e.add(f)
        for f in confirming_flags(confirming, None, pathway, p):
            e.add(f)
    codes = {c for cond in ctx.facts.conditions if cond.active for c in cond.codes}
    if order is not None:
        codes |= set(order.reason_codes)
    if not any(c.startswith(t.RFA_NOT_POSSIBLE) for c in codes):
        detail = why.rule(
            "rfa-alternative-undocumented",
            "no reason documented why ablation is not possible",
            "a documented reason required (M96.0, Z95.0, Z95.810, Z96.82 or the order's reason)",
        )
        e.add(Finding(NEEDS_REVIEW, "rfa-alternative-undocumented", None, detail))
    prior = blocks_at(ctx, is_facet_therapeutic, joint, side, on)
    if prior:
        repeat_finding(ctx, pathway, prior[-1], side, e)
    _prerequisites(ctx, pathway, region, on, e)
    dates = session_dates(ctx.completed, pathway, region, side, on, p)
    e.add(cap_finding(dates, p.opt(pathway, "session_cap"), "therapeutic-session-cap", p, pathway))
    return e


def _rfa_or_repeat(ctx: PatientContext, region: str, joint: str, side: str, on: date) -> JointEval:
    """A fresh copy each call (callers add findings); computed once per joint, side and date
    (the proactive assessment and a pending order of the same joint ask the same question)."""
    key = ("facet-rfa", region, joint, side, on)
    e = ctx.memo.get(key)
    if e is None:
        if _prior_rfa(ctx, joint, side, on) is not None:
            e = repeat_rfa(ctx, region, joint, side, on)
        else:
            e = first_rfa(ctx, region, joint, side, on)
        ctx.memo[key] = e
    return JointEval(e.joint, e.side, list(e.findings), list(e.evidence), e.pathway)


def _covered(ctx: PatientContext, pathway: str, e: JointEval) -> None:
    if not ctx.policy.covered(pathway):
        e.add(Finding(NOT_COVERED, "not-covered-by-policy", None, not_covered_detail(pathway)))


def assessments(ctx: PatientContext, now: datetime) -> list[Assessment]:
    """Proactive facet assessments (CONTRACT §6 "Which assessments"): for each region × side with a
    facet block, RFA or injection in the last ``assessment_lookback_months``, or a pending facet
    order, the natural next step — ``facet-rfa``, or ``facet-rfa-repeat`` once an RFA was done."""
    p = ctx.policy
    on = now.date()
    since = add_months(on, -int(p.g("assessment_lookback_months")))
    joints: dict[tuple[str, str], set[str]] = defaultdict(set)
    for iv in ctx.completed:
        if iv.kind in (t.FACET_BLOCK, t.FACET_RFA, t.FACET_BLOCK_US) and since <= iv.end.date() <= on:
            for side in sides_of(ctx, iv.side, iv.region):
                for joint in iv.joints:
                    joints[(joint_region(joint), side)].add(joint)
    for order in ctx.facts.orders:
        if order.kind in (t.FACET_BLOCK, t.FACET_RFA, t.FACET_BLOCK_US):
            for side in sides_of(ctx, order.side, order.region):
                for joint in order.joints:
                    joints[(joint_region(joint), side)].add(joint)
    evals_by_region: dict[str, list[JointEval]] = defaultdict(list)
    for (region, side), js in sorted(joints.items()):
        if region not in _SPINE:
            continue
        for joint in sorted(js):
            e = _rfa_or_repeat(ctx, region, joint, side, on)
            _covered(ctx, e.pathway, e)
            evals_by_region[region].append(e)
    out: list[Assessment] = []
    for region, evals in sorted(evals_by_region.items()):
        for pathway, target, outcome, evidence in group_assessments(evals, region):
            step, earliest = _next_step(
                ctx, pathway, region, outcome.verdict, outcome.reasons, outcome.earliest, evals
            )
            step_targets: tuple[Target, ...] = ()
            step_limit = None
            if step is not None:
                params = "facet-diagnostic" if step["code"] in ("64490", "64493") else pathway
                step_targets, step_limit = limit_step(
                    target,
                    p.opt(params, "max_joints_per_side"),
                    f"pathways.{params}.max_joints_per_side",
                )
            out.append(
                Assessment(
                    pathway,
                    target,
                    outcome.verdict,
                    outcome.reasons,
                    earliest,
                    step,
                    dedupe_evidence(evidence),
                    details=outcome.details,
                    step_targets=step_targets,
                    step_limit=step_limit,
                )
            )
    return out


def _next_step(
    ctx: PatientContext,
    pathway: str,
    region: str,
    verdict: str,
    reasons: tuple[str, ...],
    earliest: date | None,
    evals: list[JointEval],
) -> tuple[dict[str, str] | None, date | None]:
    """The right next step and, for a timed one, its date (CONTRACT §3 ``earliestDate``)."""
    if verdict in (SUPPORTED, "deferred", NEEDS_REVIEW):
        return _step(region, "rfa"), earliest
    if (
        verdict == NOT_MET
        and reasons
        and reasons[0]
        in (
            "second-block-required",
            "not-confirmed-same-side",
            "not-confirmed-same-joint",
            "sedation-confounded",
            "repeat-diagnostics-required",
        )
    ):
        gap = ctx.policy.opt("facet-diagnostic", "min_interval_days") or 0
        last = max(
            (
                iv.end.date()
                for iv in ctx.completed
                if is_facet_diagnostic(iv) and joint_region(iv.joints[0] if iv.joints else "") == region
            ),
            default=None,
        )
        when = last + timedelta(days=int(gap)) if last is not None else None
        return _step(region, "mbb"), when
    if verdict == NOT_EVALUABLE:
        return _step(region, "mbb"), None
    return None, None


def order_check(ctx: PatientContext, order: Order, now: datetime) -> OrderCheck:
    """Judge a facet order at its requested date, per ordered joint and side (CONTRACT §1, §6)."""
    p = ctx.policy
    on = order.requested or now.date()
    region = order.region
    if order.kind == t.FACET_RFA:
        sides = order_sides(ctx, order.side, region)
        repeat = any(_prior_rfa(ctx, j, s, on) for j in order.joints for s in sides)
        pathway = "facet-rfa-repeat" if repeat else "facet-rfa"
    elif order.diagnostic:
        pathway = "facet-diagnostic"
    else:
        pathway = "facet-therapeutic"
    sides = order_sides(ctx, order.side, region)
    evals: list[JointEval] = []
    for side in sides:
        for joint in order.joints or ("",):
            if not joint:
                e = JointEval("", side, pathway=pathway)
                needed = p.opt(pathway, "blocks_required") or 1
                detail = why.not_blocked(pathway, needed, f"an unnamed joint ({side})")
                e.add(Finding(NOT_MET, "joint-not-blocked", None, detail))
            elif order.kind == t.FACET_RFA:
                e = _rfa_or_repeat(ctx, region, joint, side, on)
            elif pathway == "facet-diagnostic":
                e = diagnostic_block(ctx, region, joint, side, on)
            else:
                e = therapeutic_injection(ctx, region, joint, side, on, order)
            _covered(ctx, pathway, e)
            if order.kind == t.FACET_BLOCK_US and not p.flag("facet-diagnostic", "ultrasound_covered"):
                detail = Detail(
                    "not-covered-by-policy",
                    "ultrasound guidance",
                    False,
                    "",
                    "pathways.facet-diagnostic.ultrasound_covered",
                    "ultrasound-guided facet injection is not covered by this policy",
                )
                e.add(Finding(NOT_COVERED, "not-covered-by-policy", None, detail))
            evals.append(e)
    limit_key = "max_joints_per_side"
    combined = combine_order(evals, region, p.opt(pathway, limit_key), f"pathways.{pathway}.{limit_key}")
    evidence: list[dict[str, Any]] = [ev for e in evals for ev in e.evidence]
    suggestion = None
    if combined.supported and combined.verdict != SUPPORTED:
        suggestion = {"text": "Reduce the order to the supported targets."}
    return OrderCheck(
        order=order.ref,
        pathway=pathway,
        verdict=combined.verdict,
        reasons=combined.reasons,
        earliest_date=combined.earliest,
        supported_targets=combined.supported,
        evidence=dedupe_evidence(evidence),
        suggestion=suggestion,
        details=combined.details,
    )
