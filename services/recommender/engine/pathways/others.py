"""Sacroiliac, epidural and knee pathways, and cumulative steroid exposure.

Sources: CRITERIA §2 (SIJ LCDs [S18]), §3 (ESI LCDs [S19]), §4 (knee [S20]-[S22]), §8
(Brown-Beresford 2022 [S25]), §9.1 P3, P3b, P4, P5, P6, §9.4, §9.7; CONTRACT §6. Every number
comes from the policy's ``sij-*``, ``esi``, ``genicular-rfa``, ``knee-steroid`` pathways and
``steroid`` section.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

from services.recommender.engine.model import (
    NOT_COVERED,
    NOT_EVALUABLE,
    NOT_MET,
    SUPPORTED,
    Alert,
    Assessment,
    Finding,
    OrderCheck,
    dedupe_evidence,
)
from services.recommender.engine.pathways.common import (
    JointEval,
    blocks_at,
    combine_order,
    confirming_flags,
    group_assessments,
    judge_history,
    order_sides,
    sides_of,
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
from shared.domain._json import add_months
from shared.domain.facts import Intervention, Order
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


def is_sij_diagnostic(iv: Intervention) -> bool:
    return iv.kind in _SIJ_KINDS and iv.diagnostic


def is_sij_therapeutic(iv: Intervention) -> bool:
    return iv.kind == t.SIJ_BLOCK and not iv.diagnostic


def is_esi(iv: Intervention) -> bool:
    return iv.kind in _ESI_KINDS


def is_genicular_block(iv: Intervention) -> bool:
    return iv.kind == t.GENICULAR_BLOCK


def is_knee_steroid(iv: Intervention) -> bool:
    return iv.kind == t.JOINT_INJECTION and iv.region == "knee" and iv.injectate.steroid is not None


def _covered(ctx: PatientContext, pathway: str, e: JointEval) -> None:
    if not ctx.policy.covered(pathway):
        e.add(Finding(NOT_COVERED, "not-covered-by-policy"))


def _repeat(ctx: PatientContext, pathway: str, prior: Intervention, side: str | None, e: JointEval) -> None:
    """A repeat needs >= ``repeat_threshold`` % for ``repeat_months`` on the same scale after the
    prior one (SIJ [S18], ESI [S19]; CRITERIA §9.2 long-term relief)."""
    p = ctx.policy
    status, reason, until, evidence = ctx.long_term(
        prior, p.num(pathway, "repeat_threshold"), int(p.num(pathway, "repeat_months")), side
    )
    e.evidence.append(evidence)
    if status == "failed":
        e.add(Finding(NOT_MET, "prior-relief-insufficient"))
    elif status in ("no-baseline", "no-follow-up"):
        e.add(Finding(NOT_EVALUABLE, reason or status))
    elif status == "pending":
        e.add(Finding("deferred", "relief-period-not-ended", until))


# --- sacroiliac joint ---------------------------------------------------------------------------
def sij(ctx: PatientContext, pathway: str, side: str, on: date) -> JointEval:
    """SIJ injections (CRITERIA §2, §9.1 P3): pain >= ``pain_months`` and conservative care >=
    ``conservative_care_days`` for every SIJ injection; a therapeutic one after
    ``blocks_required`` positive diagnostic blocks (>= ``threshold`` %, inclusive, for the agent's
    minimum); repeats after >= ``repeat_threshold`` % for ``repeat_months``; caps per rolling 12
    months. Provocation tests are documentation, never a criterion. ``sij-rfa`` is judged like a
    therapeutic step where a policy covers it (not under ``cms-lcd``: [S18])."""
    p = ctx.policy
    e = JointEval("SIJ", side, pathway=pathway)
    _covered(ctx, pathway, e)
    if pathway in ("sij-therapeutic", "sij-rfa"):
        params = "sij-therapeutic"
        history = blocks_at(ctx, is_sij_diagnostic, "SIJ", side, on)
        if not history:
            e.add(Finding(NOT_MET, "joint-not-blocked"))
        else:
            results = [ctx.block(iv, p.num(params, "threshold")) for iv in history]
            e.evidence += [ctx.evidence(r) for r in results]
            findings, confirming = judge_history(results, int(p.num(params, "blocks_required")))
            for f in findings:
                e.add(f)
            for f in confirming_flags(confirming, None):
                e.add(f)
        prior = blocks_at(ctx, is_sij_therapeutic, "SIJ", side, on)
        if prior and pathway == "sij-therapeutic":
            _repeat(ctx, pathway, prior[-1], side, e)
    params = "sij-diagnostic" if pathway == "sij-diagnostic" else "sij-therapeutic"
    e.add(pain_duration_finding(ctx.facts, "sacroiliac", on, p.opt(params, "pain_months"), None))
    e.add(conservative_care_finding(ctx.facts, on, None, p.opt(params, "conservative_care_days")))
    if pathway != "sij-rfa":
        reason = "diagnostic-session-cap" if pathway == "sij-diagnostic" else "therapeutic-session-cap"
        dates = session_dates(ctx.completed, pathway, "sacroiliac", side, on, p)
        e.add(cap_finding(dates, p.opt(pathway, "session_cap"), reason, p))
    return e


# --- epidural ------------------------------------------------------------------------------------
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
    _covered(ctx, pathway, e)
    if not _radicular_indication(ctx, region, on):
        e.add(Finding(NOT_MET, "indication-missing"))
    e.add(pain_duration_finding(ctx.facts, region, on, None, p.opt(pathway, "pain_days")))
    group = regions_of_group(region)
    lookback = p.num(pathway, "episode_lookback_days")
    prior = [
        iv
        for iv in ctx.completed
        if is_esi(iv) and iv.region in group and 0 <= (on - iv.end.date()).days <= lookback
    ]
    if prior:
        _repeat(ctx, pathway, prior[-1], side if side != "bilateral" else None, e)
    else:
        e.add(conservative_care_finding(ctx.facts, on, None, p.opt(pathway, "conservative_care_days")))
    dates = session_dates(ctx.completed, pathway, region, side, on, p)
    e.add(cap_finding(dates, p.opt(pathway, "session_cap"), "esi-session-cap", p))
    return e


# --- knee ------------------------------------------------------------------------------------------
def genicular(ctx: PatientContext, side: str, on: date) -> JointEval:
    """Genicular RFA (CRITERIA §4.1, §9.1 P5): ``blocks_required`` genicular nerve block(s) with
    >= ``threshold`` % for the agent's minimum; pain >= ``pain_months``. Under ``cms-lcd`` judged on
    these defaults (no Medicare LCD) unless a policy sets ``covered: false``."""
    pathway = "genicular-rfa"
    p = ctx.policy
    e = JointEval("knee", side, pathway=pathway)
    _covered(ctx, pathway, e)
    history = blocks_at(ctx, is_genicular_block, "knee", side, on)
    if not history:
        e.add(Finding(NOT_MET, "joint-not-blocked"))
    else:
        results = [ctx.block(iv, p.num(pathway, "threshold")) for iv in history]
        e.evidence += [ctx.evidence(r) for r in results]
        findings, confirming = judge_history(results, int(p.num(pathway, "blocks_required")))
        for f in findings:
            e.add(f)
        for f in confirming_flags(confirming, None):
            e.add(f)
    e.add(pain_duration_finding(ctx.facts, "knee", on, p.opt(pathway, "pain_months"), None))
    return e


def knee_steroid(ctx: PatientContext, side: str, on: date) -> JointEval:
    """Knee intra-articular corticosteroid (CRITERIA §4.2, §9.1 P6; McAlindon 2017 [S21], expert
    opinion [S22]): a harm criterion — another injection when ``max_injections`` were given in the
    last ``window_days`` or under ``min_interval_days`` after the last is ``not-met``,
    ``steroid-frequency``; the suggestion is to avoid it."""
    pathway = "knee-steroid"
    p = ctx.policy
    e = JointEval("knee", side, pathway=pathway)
    _covered(ctx, pathway, e)
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
        e.add(Finding(NOT_MET, "steroid-frequency"))
    return e


# --- dispatch ----------------------------------------------------------------------------------------
def order_pathway(order: Order) -> str | None:
    """CONTRACT §4 "Procedure and order codes → pathway" for the non-facet codes."""
    if order.kind == t.SIJ_BLOCK:
        return "sij-diagnostic" if order.diagnostic else "sij-therapeutic"
    if order.kind == t.SIJ_NERVE_BLOCK:
        return "sij-diagnostic"
    if order.kind == t.SIJ_RFA:
        return "sij-rfa"
    if order.kind in _ESI_KINDS:
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
    region = order.region
    if pathway == "esi":
        side = order.side or "bilateral"
        key = "max_levels_transforaminal" if order.kind == t.ESI_TRANSFORAMINAL else "max_levels_interlaminar"
        limit = p.opt(pathway, key)
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
    combined = combine_order(evals, region, limit)
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
            out.append(
                Assessment(
                    pw,
                    target,
                    outcome.verdict,
                    outcome.reasons,
                    outcome.earliest,
                    step,
                    dedupe_evidence(evidence),
                )
            )
    return out


# --- cumulative steroid ------------------------------------------------------------------------------
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
        flag = " (dose assumed)" if exp.mg is None else ""
        parts.append(f"{exp.ref} {exp.time.date().isoformat()} {exp.steroid} {mg:g} mg{flag} = {mpde:.1f} mg")
    high = _high_risk(ctx, now.date())
    limit = s["threshold_mg_high_risk"] if high else s["threshold_mg_default"]
    if total <= limit:
        return None
    who = "a post-menopausal or diabetic patient" if high else "this patient"
    text = (
        f"Cumulative corticosteroid {total:.1f} mg methylprednisolone-equivalent in the last "
        f"{int(s['window_days'])} days exceeds {limit:g} mg for {who}"
        + (f" ({assumed} undocumented dose(s) assumed {s['assumed_dose_mg']:g} mg)" if assumed else "")
        + ": "
        + "; ".join(parts)
        + "."
    )
    return Alert("cumulative-steroid", "warning", text, tuple(refs))
