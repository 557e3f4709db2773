"""Cards from the CONTRACT §3 assessment document (CONTRACT §2 "Cards", STANDARDS §1.4).

Order hooks: one card per order check — ``supported`` an ``info`` card with what a prior
authorisation reviewer needs; every other verdict a ``warning`` card with the principal reason,
override reasons and one suggestion (``at-most-one``) that deletes the draft order and creates
the right next step. patient-view: one card per assessment (``warning`` for ``needs-review``)
and one ``warning`` card per alert. Every card links to the evidence page (``CardContext.evidence_url``;
through the service, :func:`~services.recommender.cds_hooks.service.handle_call` replaces it with
the card's own link, ``EvidenceLinks.card_link``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from services.recommender.engine import explain
from services.recommender.engine.wording import (
    ALERTS,
    documentation_gaps,
    pathway_text,
    reason_text,
    sentence,
    summary,
    target_text,
)
from shared.humanize import day, listing

SPINAL_JOINT = "urn:pinpoint:spinal-joint"
CPT = "http://www.ama-assn.org/go/cpt"
PATHWAY_TOPIC = "urn:pinpoint:pathway"
ALERT_TOPIC = "urn:pinpoint:alert"
OVERRIDE_SYSTEM = "urn:pinpoint:cds-override-reason"
LATERALITY = {
    "right": ("419465000", "Unilateral right"),
    "left": ("419161000", "Unilateral left"),
    "bilateral": ("51440002", "Bilateral"),
}

OVERRIDE_REASONS = [
    {
        "system": OVERRIDE_SYSTEM,
        "code": "evidence-elsewhere",
        "display": "Qualifying evidence is documented elsewhere",
    },
    {
        "system": OVERRIDE_SYSTEM,
        "code": "prior-authorisation",
        "display": "Prior authorisation already granted",
    },
    {"system": OVERRIDE_SYSTEM, "code": "data-incorrect", "display": "The data Pinpoint used is incorrect"},
    {
        "system": OVERRIDE_SYSTEM,
        "code": "clinical-judgement",
        "display": "Clinical judgement: proceed as ordered",
    },
]

# Reasons whose cure is another diagnostic block at the ordered joints.
BLOCK_REASONS = frozenset(
    {
        "second-block-required",
        "relief-below-threshold",
        "duration-inconsistent-with-agent",
        "sedation-confounded",
        "not-confirmed-same-side",
        "not-confirmed-same-joint",
        "no-baseline",
        "scale-mismatch",
        "low-baseline",
        "joint-not-blocked",
        "discordant-blocks",
        "repeat-diagnostics-required",
    }
)
# CPT add-on codes (each additional level/joint): dropped when an order is reduced to one joint.
ADD_ON_CODES = frozenset({"64491", "64492", "64494", "64495", "64634", "64636", "64480", "64484"})
CERVICAL_THORACIC_CODES = frozenset({"64490", "64491", "64492", "64633", "64634", "0213T", "0214T", "0215T"})


@dataclass(frozen=True)
class CardContext:
    """What every card needs besides the document."""

    evidence_url: str
    policy: dict[str, Any]
    order_hook: bool
    #: the document's ``sources`` by id (docs/assessment-document.md)
    sources: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedCard:
    card: dict[str, Any]
    pathway: str
    verdict: str


def _uuid() -> str:
    return str(uuid.uuid4())


def _source(ctx: CardContext, topic_system: str, code: str, display: str) -> dict[str, Any]:
    policy = ctx.policy
    label = f"Pinpoint ({policy.get('id', 'policy')} {policy.get('version', '')})".replace(" )", ")")
    return {"label": label, "topic": {"system": topic_system, "code": code, "display": display}}


def _links(ctx: CardContext) -> list[dict[str, Any]]:
    return [{"label": "Evidence in Pinpoint", "url": ctx.evidence_url, "type": "absolute"}]


_BLOCK_PATHWAYS = frozenset(
    {
        "facet-diagnostic",
        "facet-rfa",
        "facet-rfa-repeat",
        "facet-therapeutic",
        "sij-diagnostic",
        "sij-therapeutic",
        "sij-rfa",
        "genicular-rfa",
    }
)


def _cite_md(source_id: Any, ctx: CardContext) -> str:
    """``[LCD L38773](https://…)``; the label alone when the source has no web address."""
    label = explain.cite(source_id, ctx.sources)
    url = str((ctx.sources.get(str(source_id)) or {}).get("url") or "")
    return f"[{label}]({url})" if url.startswith("https://") else label


def _because_md(detail: dict[str, Any], ctx: CardContext) -> str:
    text = str(detail.get("text") or reason_text(str(detail.get("code") or "")))
    if explain.uncited(detail):
        return text
    return f"{text} ({_cite_md(detail.get('source'), ctx)})"


def block_table(evidence: list[Any]) -> str:
    """Blocks as a short markdown table: date, agent, pain before (scale), best relief, sustained
    time, result — no resource ids, no raw codes."""
    rows = explain.block_rows([e for e in evidence if isinstance(e, dict)])
    if not rows:
        return ""
    lines = [
        "| date | agent | pain before | best relief | sustained | result |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['date']} | {r['agent']} | {r['before']} | {r['relief']} | {r['sustained']} | {r['result']} |"
        for r in rows
    ]
    return "\n".join(lines)


def evidence_md(item: dict[str, Any], pathway: str, ctx: CardContext) -> list[str]:
    """The evidence laid out for the pathway: blocks for diagnostic pathways; the injections
    counted with their dates, the limit and the earliest allowed date for knee steroid and
    epidural injections (from the reason's numbers)."""
    evidence = [e for e in item.get("evidence") or [] if isinstance(e, dict)]
    details = {str(d.get("code")): d for d in item.get("reasonDetails") or [] if isinstance(d, dict)}
    out: list[str] = []
    if pathway == "knee-steroid":
        dates = explain.injection_dates(evidence)
        freq = details.get("steroid-frequency")
        if freq:
            counted = listing([day(d) for d in freq.get("counted") or []])
            earliest = f"; earliest allowed {day(freq['earliest'])}" if freq.get("earliest") else ""
            limit = (
                f"limit {freq['required']:g} in 12 months"
                if freq.get("unit") == "injections"
                else (f"at least {freq['required']:g} days apart")
            )
            cited = _cite_md(freq.get("source"), ctx)
            out.append(f"**Injections counted:** {counted} — {limit}{earliest} ({cited}).")
        elif dates:
            out.append(f"**Injections in the window:** {listing(dates)} (within the limit).")
        else:
            out.append("**Injections in the window:** none.")
        return out
    if pathway == "esi":
        cap = details.get("esi-session-cap")
        if cap:
            counted = listing([day(d) for d in cap.get("counted") or []])
            out.append(f"**Sessions counted in 12 months:** {counted} — {_because_md(cap, ctx)}.")
        table = block_table(evidence)
        if table:
            out += ["**Previous injections:**", table]
        return out
    table = block_table(evidence)
    if table:
        threshold = item.get("reliefThreshold") or {}
        need = ""
        if threshold.get("required") is not None:
            need = (
                f" (positive: ≥ {threshold['required']:g} % relief, {_cite_md(threshold.get('source'), ctx)})"
            )
        label = "Blocks" if pathway in _BLOCK_PATHWAYS else "Procedures"
        out += [f"**{label}**{need}:", table]
    return out


def _policy_line(ctx: CardContext) -> str:
    return f"Policy: {ctx.policy.get('id', 'unnamed')} version {ctx.policy.get('version', 'unknown')}."


def _documentation_md(item: dict[str, Any]) -> list[str]:
    """What the policy asks to be documented and is missing (issue 19); never a verdict."""
    return [f"{gap}." for gap in documentation_gaps(item.get("documentation"))]


def _reasons_md(item: dict[str, Any], ctx: CardContext) -> str:
    """**Why:** the principal reason with its numbers and source; then the others."""
    reasons = [str(r) for r in item.get("reasons") or []]
    if not reasons:
        return ""
    details = {str(d.get("code")): d for d in item.get("reasonDetails") or [] if isinstance(d, dict)}

    def one(code: str) -> str:
        d = details.get(code)
        return _because_md(d, ctx) if d else reason_text(code)

    text = f"**Why:** {sentence(one(reasons[0]))}."
    if len(reasons) > 1:
        text += "\n\n**Also:** " + "; ".join(one(r) for r in reasons[1:]) + "."
    return text


def _cautions_md(item: dict[str, Any], ctx: CardContext) -> list[str]:
    """A standing alert the next step must be weighed against, said before anything else."""
    out = []
    for c in item.get("cautions") or []:
        if isinstance(c, dict):
            name = explain.ALERT_NAMES.get(str(c.get("code")), "alert").lower()
            out.append(f"**Caution — {name}:** {_because_md(c, ctx)}.")
    return out


def _ordered_target(order: dict[str, Any] | None) -> dict[str, Any] | None:
    """The joints and side the draft order names (for its card's summary), if it names joints."""
    if not order:
        return None
    sites = [s for s in order.get("bodySite") or [] if isinstance(s, dict)]
    joints = [j for j in (_site_joint(s) for s in sites) if j]
    by_code = {code: side for side, (code, _) in LATERALITY.items()}
    if not joints:
        named = {"72696002": "knee", "39723000": "SIJ"}
        joints = [
            named[str(c.get("code"))]
            for s in sites
            for c in s.get("coding") or []
            if str(c.get("code")) in named
        ]
    sides = {
        by_code[str(c.get("code"))]
        for s in sites
        for c in s.get("coding") or []
        if isinstance(c, dict) and str(c.get("code")) in by_code
    }
    if not joints:
        return None
    side = sides.pop() if len(sides) == 1 else ("bilateral" if sides else "")
    return {"region": "", "joints": sorted(set(joints)), "side": side}


def _order_name(order: dict[str, Any] | None, pathway: str) -> str:
    """The draft order as the clinician wrote it (its text or first display), else the pathway."""
    if order:
        code = order.get("code") or {}
        if code.get("text"):
            return str(code["text"])
        for c in _codes(order):
            if c.get("display"):
                return str(c["display"])
    return pathway_text(pathway).lower()


# ------------------------------------------------------------------------------------ order checks


def _codes(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in (resource.get("code") or {}).get("coding") or [] if isinstance(c, dict)]


def _site_joint(site: dict[str, Any]) -> str | None:
    for c in site.get("coding") or []:
        if isinstance(c, dict) and c.get("system") == SPINAL_JOINT:
            return str(c.get("code"))
    return None


def _site_for(joint: str, side: str | None) -> dict[str, Any]:
    coding = [{"system": SPINAL_JOINT, "code": joint, "display": f"{joint} facet joint"}]
    if side in LATERALITY:
        code, display = LATERALITY[side]
        coding.append({"system": "http://snomed.info/sct", "code": code, "display": display})
    return {"coding": coding, "text": f"{sentence(side or '')} {joint}".strip()}


def _new_request(order: dict[str, Any], *, same_procedure: bool = True, **changes: Any) -> dict[str, Any]:
    """A draft ServiceRequest in the place of ``order``: same patient, reason, requester, sites
    (and category when it is the same procedure, reduced or moved)."""
    new: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order"}
    keys = ["subject", "encounter", "requester", "reasonCode", "reasonReference", "bodySite"]
    if same_procedure:
        keys.insert(0, "category")
    for key in keys:
        if order.get(key):
            new[key] = order[key]
    new.update({k: v for k, v in changes.items() if v is not None})
    return new


def _reduced(order: dict[str, Any], targets: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The order reduced to its supported joints (body sites and add-on codes trimmed)."""
    joints = {(j, t.get("side")) for t in targets for j in t.get("joints") or []}
    if not joints:
        return None
    names = {j for j, _ in joints}
    sites = [s for s in order.get("bodySite") or [] if isinstance(s, dict) and _site_joint(s) in names]
    if len(sites) != len(names):
        sites = [_site_for(j, side) for j, side in sorted(joints)]
    codes = _codes(order)
    if len(names) == 1:
        codes = [c for c in codes if c.get("code") not in ADD_ON_CODES] or codes
    code = {**(order.get("code") or {}), "coding": codes}
    code.pop("text", None)
    return _new_request(order, code=code, bodySite=sites, occurrenceDateTime=order.get("occurrenceDateTime"))


def _confirmatory_code(order: dict[str, Any], pathway: str, joints: int) -> list[dict[str, Any]]:
    ordered = {c.get("code") for c in _codes(order)}
    if pathway.startswith("facet"):
        upper = bool(ordered & CERVICAL_THORACIC_CODES)
        first, more = ("64490", "64491") if upper else ("64493", "64494")
        region = "Cervical/thoracic" if upper else "Lumbar/sacral"
        codes = [
            {"system": CPT, "code": first, "display": f"{region} facet joint or nerve injection, first level"}
        ]
        if joints > 1:
            codes.append(
                {
                    "system": CPT,
                    "code": more,
                    "display": f"{region} facet joint or nerve injection, second level",
                }
            )
        return codes
    if pathway.startswith("sij"):
        return [{"system": CPT, "code": "27096", "display": "Sacroiliac joint injection, image-guided"}]
    if pathway == "genicular-rfa":
        return [{"system": CPT, "code": "64454", "display": "Genicular nerve block"}]
    return []


def _matching_assessment(
    patient: dict[str, Any], check: dict[str, Any], order: dict[str, Any]
) -> dict[str, Any] | None:
    """The patient's assessment of the same pathway with a next step, preferring ordered joints."""
    ordered = {_site_joint(s) for s in order.get("bodySite") or [] if isinstance(s, dict)} - {None}
    candidates = [
        a
        for a in patient.get("assessments") or []
        if isinstance(a, dict)
        and a.get("pathway") == check.get("pathway")
        and isinstance(a.get("nextStep"), dict)
    ]
    candidates.sort(key=lambda a: -len(ordered & set((a.get("target") or {}).get("joints") or [])))
    return dict(candidates[0]) if candidates else None


def next_step(
    check: dict[str, Any], patient: dict[str, Any], order: dict[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    """(label, resource to create or None) replacing a draft order that is not supported."""
    what = pathway_text(str(check.get("pathway") or "")).lower()
    verdict = check.get("verdict")
    reasons = list(check.get("reasons") or [])
    pathway = str(check.get("pathway") or "")
    if verdict == "partially-supported" and check.get("supportedTargets"):
        reduced = _reduced(order, check["supportedTargets"])
        if reduced is not None:
            where = "; ".join(target_text(t) for t in check["supportedTargets"])
            return f"Reduce the order to the supported joints: {where}", reduced
    if verdict == "deferred" and check.get("earliestDate"):
        moved = _new_request(
            order,
            code=order.get("code"),
            occurrenceDateTime=check["earliestDate"],
            bodySite=order.get("bodySite"),
        )
        return f"Reschedule on or after {day(check['earliestDate'])}", moved
    ordered = {c.get("code") for c in _codes(order)}
    assessment = _matching_assessment(patient, check, order)
    if assessment is not None:
        step = assessment["nextStep"]
        if step.get("code") not in ordered:
            step_targets = assessment.get("nextStepTargets") or [assessment.get("target") or {}]
            n = max((len(t.get("joints") or []) for t in step_targets), default=0) or 1
            coding = [step]
            display = str(step.get("display") or step.get("code"))
            if reasons and reasons[0] in BLOCK_REASONS:
                coding = (_confirmatory_code(order, pathway, n) if n > 1 else []) or coding
                display = f"confirmatory {display[:1].lower()}{display[1:]}".split(",")[0]
            new = _new_request(
                order,
                same_procedure=False,
                code={"coding": coding, "text": sentence(display)},
                occurrenceDateTime=assessment.get("earliestDate"),
                note=[{"text": f"Proposed by Pinpoint instead of the {what} order"}],
            )
            return f"Order a {display[:1].lower()}{display[1:]} at the same joints instead", new
    if reasons and reasons[0] in BLOCK_REASONS:
        joints = len([s for s in order.get("bodySite") or [] if _site_joint(s)]) or 1
        coding = _confirmatory_code(order, pathway, joints)
        if coding:
            note = "Confirmatory diagnostic block"
            if "sedation-confounded" in reasons:
                note += ", without sedation"
            new = _new_request(
                order,
                same_procedure=False,
                code={"coding": coding, "text": "Confirmatory diagnostic block"},
                note=[{"text": f"{note}; proposed by Pinpoint instead of the {what} order"}],
            )
            return "Order a confirmatory diagnostic block at the same joints instead", new
    return "Remove this order", None


def order_card(
    check: dict[str, Any], patient: dict[str, Any], order: dict[str, Any] | None, ctx: CardContext
) -> RenderedCard:
    pathway = str(check.get("pathway") or "")
    verdict = str(check.get("verdict") or "")
    what = pathway_text(pathway)
    targets = [target_text(t) for t in check.get("supportedTargets") or []]
    supported = list(check.get("supportedTargets") or [])
    target = supported[0] if len(supported) == 1 and verdict == "supported" else _ordered_target(order)
    name = _order_name(order, pathway)
    card: dict[str, Any] = {
        "uuid": _uuid(),
        "source": _source(ctx, PATHWAY_TOPIC, pathway, what),
        "links": _links(ctx),
        "summary": explain.headline(pathway, target, check, ctx.sources),
    }
    parts: list[str] = []
    if verdict == "supported":
        card["indicator"] = "info"
        where = f" for {'; '.join(targets)}" if targets else ""
        decisive = explain.decisive(check, ctx.sources)
        threshold = check.get("reliefThreshold") or {}
        cited = f" ({_cite_md(threshold.get('source'), ctx)})" if decisive and threshold.get("source") else ""
        parts.append(f"**Supported**{where}: the {name} order meets the policy's criteria.")
        parts += _cautions_md(check, ctx)
        if decisive:
            parts.append(f"**Met:** {decisive}{cited}.")
        parts += evidence_md(check, pathway, ctx)
        parts += _documentation_md(check)
        parts.append(_policy_line(ctx))
        card["detail"] = "\n\n".join(parts)
        return RenderedCard(card, pathway, verdict)
    card["indicator"] = "warning"
    verdict_word = sentence(explain.VERDICT_WORDS.get(verdict, verdict))
    parts.append(f"**{verdict_word}** for the {name} order.")
    parts += _cautions_md(check, ctx)
    parts.append(_reasons_md(check, ctx))
    if targets:
        parts.append("**Supported part:** " + "; ".join(targets) + ".")
    if check.get("earliestDate"):
        parts.append(f"**Earliest date:** {day(check['earliestDate'])}.")
    parts += evidence_md(check, pathway, ctx)
    parts.append(_policy_line(ctx))
    parts += _documentation_md(check)
    card["detail"] = "\n\n".join(p for p in parts if p)
    card["overrideReasons"] = [dict(c) for c in OVERRIDE_REASONS]
    no_data = (check.get("reasons") or [None])[0] == "data-unavailable"
    if order is not None and order.get("id") and not no_data:  # no advice on the order without its data
        label, create = next_step(check, patient, order)
        actions: list[dict[str, Any]] = [
            {
                "type": "delete",
                "description": f"Remove the draft {name} order",
                "resourceId": f"ServiceRequest/{order['id']}",
            }
        ]
        if create is not None:
            actions.append({"type": "create", "description": label, "resource": create})
        card["suggestions"] = [
            {"label": summary(label), "uuid": _uuid(), "isRecommended": True, "actions": actions}
        ]
        card["selectionBehavior"] = "at-most-one"
    return RenderedCard(card, pathway, verdict)


# ------------------------------------------------------------------------------------ patient-view


def assessment_card(assessment: dict[str, Any], ctx: CardContext) -> RenderedCard:
    pathway = str(assessment.get("pathway") or "")
    verdict = str(assessment.get("verdict") or "")
    what = pathway_text(pathway)
    verdict_word = sentence(explain.VERDICT_WORDS.get(verdict, verdict))
    parts = [f"**{verdict_word}:** {what.lower()}, {target_text(assessment.get('target'))}."]
    parts += _cautions_md(assessment, ctx)
    if verdict == "supported":
        decisive = explain.decisive(assessment, ctx.sources)
        threshold = assessment.get("reliefThreshold") or {}
        if decisive:
            cited = f" ({_cite_md(threshold.get('source'), ctx)})" if threshold.get("source") else ""
            parts.append(f"**Met:** {decisive}{cited}.")
    parts.append(_reasons_md(assessment, ctx))
    step = assessment.get("nextStep")
    if isinstance(step, dict):
        when = f", from {day(assessment['earliestDate'])}" if assessment.get("earliestDate") else ""
        name = step.get("display") or "the next procedure"
        where = "; ".join(target_text(t) for t in assessment.get("nextStepTargets") or [])
        at = f" at {where}" if where and assessment.get("nextStepLimit") else ""
        parts.append(f"**Next step:** {name} (CPT {step.get('code')}){at}{when}.")
        limit = assessment.get("nextStepLimit")
        if isinstance(limit, dict):
            parts.append(f"**Per session:** {_because_md(limit, ctx)}.")
        note = assessment.get("nextStepNote")
        if note:
            parts.append(f"**Note:** {note}")
    parts += evidence_md(assessment, pathway, ctx)
    parts.append(_policy_line(ctx))
    parts += _documentation_md(assessment)
    card = {
        "uuid": _uuid(),
        "summary": explain.headline(pathway, assessment.get("target"), assessment, ctx.sources),
        "indicator": "warning" if verdict == "needs-review" else "info",
        "detail": "\n\n".join(p for p in parts if p),
        "source": _source(ctx, PATHWAY_TOPIC, pathway, what),
        "links": _links(ctx),
    }
    return RenderedCard(card, pathway, verdict)


def alert_card(alert: dict[str, Any], ctx: CardContext) -> RenderedCard:
    code = str(alert.get("code") or "alert")
    title = ALERTS.get(code, code.replace("-", " "))
    text = str(alert.get("text") or "")
    detail = alert.get("detail")
    head = title
    numbers = ""
    if isinstance(detail, dict):
        numbers = f"**Why:** {sentence(_because_md(detail, ctx))}."
        short = f"{explain.ALERT_NAMES.get(code, title)}: {detail.get('text')}"
        head = short if len(short) <= 140 else title
    card = {
        "uuid": _uuid(),
        "summary": summary(head),
        "indicator": "warning",
        "detail": "\n\n".join(p for p in (numbers, text, _policy_line(ctx)) if p),
        "source": _source(ctx, ALERT_TOPIC, code, title),
        "links": _links(ctx),
    }
    return RenderedCard(card, f"alert:{code}", str(alert.get("severity") or "warning"))


# ------------------------------------------------------------------------------------ per hook


def cards_for(
    document: dict[str, Any],
    *,
    patient_ref: str,
    hook: str,
    drafts: dict[str, dict[str, Any]],
    selections: list[str] | None,
    ctx: CardContext,
) -> list[RenderedCard]:
    """The cards for one hook call from the §3 document (the patient's entry only)."""
    ctx_policy = {**ctx.policy, **(document.get("policy") or {})}
    ctx = replace(ctx, policy=ctx_policy, sources={**ctx.sources, **explain.sources_of(document)})
    patient = next((p for p in document.get("patients") or [] if p.get("patient") == patient_ref), None)
    if patient is None:
        return []
    out: list[RenderedCard] = []
    if hook == "patient-view":
        out += [assessment_card(a, ctx) for a in patient.get("assessments") or [] if isinstance(a, dict)]
        out += [alert_card(a, ctx) for a in patient.get("alerts") or [] if isinstance(a, dict)]
        return out
    wanted = set(selections) if selections else None
    for check in patient.get("orderChecks") or []:
        ref = str(check.get("order") or "")
        if ref not in drafts or (wanted is not None and ref not in wanted):
            continue
        out.append(order_card(check, patient, drafts[ref], ctx))
    return out
