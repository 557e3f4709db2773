"""Cards from the CONTRACT §3 assessment document (CONTRACT §2 "Cards", STANDARDS §1.4).

Order hooks: one card per order check — ``supported`` an ``info`` card with what a prior
authorisation reviewer needs; every other verdict a ``warning`` card with the principal reason,
override reasons and one suggestion (``at-most-one``) that deletes the draft order and creates
the right next step. patient-view: one card per assessment (``warning`` for ``needs-review``)
and one ``warning`` card per alert. Every card links to the evidence page (``CardContext.evidence_url``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from services.recommender.engine.wording import (
    ALERTS,
    VERDICTS,
    documentation_gaps,
    pathway_text,
    reason_text,
    sentence,
    summary,
    target_text,
)

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


def _num(value: Any, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value}{suffix}"


def evidence_table(evidence: list[Any]) -> str:
    rows = [e for e in evidence if isinstance(e, dict)]
    if not rows:
        return ""
    lines = [
        "| block | performed | agent | baseline (scale) | peak relief | sustained | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        result = "positive" if e.get("positive") else "not positive"
        if e.get("reasons"):
            result += " (" + "; ".join(reason_text(r) for r in e["reasons"]) + ")"
        lines.append(
            f"| {e.get('procedure', '–')} | {e.get('performed', '–')} | {e.get('agent', '–')} "
            f"| {_num(e.get('baseline'))} ({e.get('scale', '–')}) | {_num(e.get('peakReliefPercent'), ' %')} "
            f"| {_num(e.get('sustainedMinutes'), ' min')} | {result} |"
        )
    return "\n".join(lines)


def _policy_line(ctx: CardContext) -> str:
    return f"Policy: {ctx.policy.get('id', '?')} version {ctx.policy.get('version', '?')}."


def _documentation_md(item: dict[str, Any]) -> list[str]:
    """What the policy asks to be documented and is missing (issue 19); never a verdict."""
    return [f"{gap}." for gap in documentation_gaps(item.get("documentation"))]


def _reasons_md(reasons: list[str]) -> str:
    if not reasons:
        return ""
    text = f"**Why:** {sentence(reason_text(reasons[0]))}."
    if len(reasons) > 1:
        text += " Also: " + "; ".join(reason_text(r) for r in reasons[1:]) + "."
    return text


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
        return f"Reschedule on or after {check['earliestDate']}", moved
    ordered = {c.get("code") for c in _codes(order)}
    assessment = _matching_assessment(patient, check, order)
    if assessment is not None:
        step = assessment["nextStep"]
        if step.get("code") not in ordered:
            n = len((assessment.get("target") or {}).get("joints") or []) or 1
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
    reasons = [str(r) for r in check.get("reasons") or []]
    what = pathway_text(pathway)
    evidence = evidence_table(list(check.get("evidence") or []))
    targets = [target_text(t) for t in check.get("supportedTargets") or []]
    card: dict[str, Any] = {
        "uuid": _uuid(),
        "source": _source(ctx, PATHWAY_TOPIC, pathway, what),
        "links": _links(ctx),
    }
    if verdict == "supported":
        positives = [e for e in check.get("evidence") or [] if isinstance(e, dict) and e.get("positive")]
        where = f" for {'; '.join(targets)}" if targets else ""
        card["indicator"] = "info"
        card["summary"] = summary(
            f"{what} order: criteria met{where}"
            + (f", {len(positives)} positive block(s)" if positives else "")
        )
        parts = [
            f"**Verdict:** {VERDICTS['supported']} for {check.get('order', 'the order')}{where}.",
            _policy_line(ctx),
        ]
        parts += _documentation_md(check)
        if evidence:
            parts += ["**Evidence for prior authorisation:**", evidence]
        card["detail"] = "\n\n".join(parts)
        return RenderedCard(card, pathway, verdict)
    principal = sentence(reason_text(reasons[0])) if reasons else sentence(VERDICTS.get(verdict, verdict))
    card["indicator"] = "warning"
    card["summary"] = summary(f"{what} order: {VERDICTS.get(verdict, verdict)}. {principal}.")
    parts = [f"**Verdict:** {VERDICTS.get(verdict, verdict)} for {check.get('order', 'the order')}."]
    if reasons:
        parts.append(_reasons_md(reasons))
    if targets:
        parts.append("**Supported part:** " + "; ".join(targets) + ".")
    if check.get("earliestDate"):
        parts.append(f"**Earliest date:** {check['earliestDate']}.")
    parts.append(_policy_line(ctx))
    parts += _documentation_md(check)
    if evidence:
        parts += ["**Evidence used:**", evidence]
    card["detail"] = "\n\n".join(parts)
    card["overrideReasons"] = [dict(c) for c in OVERRIDE_REASONS]
    if order is not None and order.get("id"):
        label, create = next_step(check, patient, order)
        actions: list[dict[str, Any]] = [
            {
                "type": "delete",
                "description": f"Remove the draft order ServiceRequest/{order['id']}",
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
    reasons = [str(r) for r in assessment.get("reasons") or []]
    what = pathway_text(pathway)
    where = target_text(assessment.get("target"))
    head = f"{what}{', ' + where if where else ''}: {VERDICTS.get(verdict, verdict)}"
    if reasons:
        head += f" — {reason_text(reasons[0])}"
    parts = [f"**Verdict:** {VERDICTS.get(verdict, verdict)}."]
    if reasons:
        parts.append(_reasons_md(reasons))
    step = assessment.get("nextStep")
    if isinstance(step, dict):
        when = f" (earliest {assessment['earliestDate']})" if assessment.get("earliestDate") else ""
        parts.append(
            f"**Next step:** {step.get('display') or step.get('code')} (CPT {step.get('code')}){when}."
        )
    parts.append(_policy_line(ctx))
    parts += _documentation_md(assessment)
    table = evidence_table(list(assessment.get("evidence") or []))
    if table:
        parts += ["**Evidence:**", table]
    card = {
        "uuid": _uuid(),
        "summary": summary(head),
        "indicator": "warning" if verdict == "needs-review" else "info",
        "detail": "\n\n".join(parts),
        "source": _source(ctx, PATHWAY_TOPIC, pathway, what),
        "links": _links(ctx),
    }
    return RenderedCard(card, pathway, verdict)


def alert_card(alert: dict[str, Any], ctx: CardContext) -> RenderedCard:
    code = str(alert.get("code") or "alert")
    title = ALERTS.get(code, code.replace("-", " "))
    text = str(alert.get("text") or "")
    card = {
        "uuid": _uuid(),
        "summary": summary(title),
        "indicator": "warning",
        "detail": "\n\n".join(p for p in (text, _policy_line(ctx)) if p),
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
    ctx = CardContext(ctx.evidence_url, ctx_policy, ctx.order_hook)
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
