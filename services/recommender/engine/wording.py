"""Plain words for the §3 vocabularies (pathways, verdicts, reasons, alerts) and targets: the
one wording of cards, the evidence page, CarePlan suggestions and ``pinpoint evaluate --text``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from services.recommender.engine.completeness import unavailable_text

PATHWAYS = {
    "facet-diagnostic": "Diagnostic facet (medial branch) block",
    "facet-rfa": "Facet radiofrequency ablation",
    "facet-rfa-repeat": "Repeat facet radiofrequency ablation",
    "facet-therapeutic": "Therapeutic facet joint injection",
    "sij-diagnostic": "Diagnostic sacroiliac joint block",
    "sij-therapeutic": "Therapeutic sacroiliac joint injection",
    "sij-rfa": "Sacroiliac joint radiofrequency ablation",
    "esi": "Epidural steroid injection",
    "genicular-rfa": "Genicular nerve radiofrequency ablation",
    "knee-steroid": "Knee corticosteroid injection",
}

VERDICTS = {
    "supported": "criteria met",
    "partially-supported": "criteria met for part of the order",
    "not-met": "criteria not met",
    "not-evaluable": "the data cannot decide",
    "needs-review": "needs review by a clinician",
    "not-covered": "not covered by the policy",
    "deferred": "not yet (a waiting time or limit applies)",
}

#: The verdict as the predicate of a sentence about the procedure (CarePlan descriptions).
VERDICT_SENTENCES = {
    "supported": "is supported: the policy's criteria are met",
    "partially-supported": "is supported for part of the joints only",
    "not-met": "is not supported: the policy's criteria are not met",
    "not-evaluable": "cannot be judged from the data available",
    "needs-review": "needs a clinician's review before it is done",
    "not-covered": "is not covered by the policy",
    "deferred": "will be supported once a waiting time or limit has passed",
}

REASONS = {
    "second-block-required": "a second positive confirmatory block at the same joints is required",
    "relief-below-threshold": "the block did not give enough pain relief",
    "duration-inconsistent-with-agent": "the relief did not last as long as the anaesthetic used should give",
    "sedation-confounded": "the most recent block was done under sedation, which invalidates it",
    "not-confirmed-same-side": "the positive blocks were on the other side",
    "not-confirmed-same-joint": "the positive blocks were at other joints",
    "levels-exceed-session-limit": "the order covers more joints or levels than one session allows",
    "diagnostic-interval-too-short": "the diagnostic blocks are less than 14 days apart",
    "diagnostic-session-cap": "the yearly limit of diagnostic block sessions is reached",
    "rfa-session-cap": "the yearly limit of ablation sessions is reached",
    "therapeutic-session-cap": "the yearly limit of therapeutic injection sessions is reached",
    "esi-session-cap": "the yearly limit of epidural injection sessions is reached",
    "prior-relief-insufficient": "the previous ablation did not give lasting relief",
    "repeat-diagnostics-required": "new diagnostic blocks are required before repeating the ablation",
    "no-baseline": "there is no pain score before the block",
    "scale-mismatch": "the pain scores after the block use a different scale than before it",
    "low-baseline": "the pain score before the block was too low to judge relief",
    "no-follow-up": "there are no pain scores to judge the relief",
    "pain-duration-too-short": "the pain has not lasted long enough yet",
    "conservative-care-too-short": "conservative care is not documented for long enough",
    "untreated-radiculopathy": "an untreated radiculopathy must be addressed first",
    "indication-missing": "no radicular indication is documented",
    "rfa-alternative-undocumented": "no reason is documented why ablation is not possible",
    "joint-not-blocked": "an ordered joint was never blocked",
    "relief-period-not-ended": "the relief from the previous procedure has not ended yet",
    "level-previously-ablated": "this level was previously ablated successfully",
    "not-covered-by-policy": "the policy does not cover this procedure",
    "steroid-frequency": "steroid injections into this joint are too frequent",
    "discordant-blocks": "the comparative blocks are discordant",
    "prolonged-response": "the relief lasted much longer than the anaesthetic can explain",
    "data-unavailable": "data the rule needs could not be retrieved from the EHR",
    "function-only-improvement": (
        "only function improved after the previous procedure, and the policy gives no percentage "
        "for function: a clinician decides"
    ),
}

#: A documentation requirement (issue 19) as a gap: "Documentation: <text> — required by <source>".
DOCUMENTATION_GAPS = {
    "baseline-pain-scale": "no baseline pain scale",
    "same-scale-each-block": "not the same pain scale before and after each block",
    "baseline-disability-scale": "no baseline disability scale",
    "imaging-guidance": "no CT or fluoroscopic guidance",
    "no-sedation": "a block was done under sedation",
}

#: LOINC pain scales by name (text a person reads never shows the code alone).
PAIN_SCALES = {
    "72514-3": "the 0-10 numeric pain rating scale",
    "38208-5": "the 0-10 reported pain severity scale",
    "38214-3": "the visual analogue pain scale",
}

ALERTS = {
    "cumulative-steroid": "Cumulative steroid dose over the past year is above the threshold",
    "steroid-frequency": "Steroid injections into one joint are too frequent",
    "sedation": "A diagnostic block was done under sedation",
    "discordant-blocks": "Comparative blocks are discordant",
    "prolonged-response": "A block's relief lasted far longer than its anaesthetic",
}


def documentation_gaps(items: Any) -> list[str]:
    """``Documentation: no baseline disability scale — required by LCD L38773`` for each missing
    requirement of an assessment's or order check's ``documentation`` list (issue 19)."""
    out = []
    for item in items or ():
        if not isinstance(item, dict) or item.get("status") != "missing":
            continue
        requirement = str(item.get("requirement") or "")
        gap = DOCUMENTATION_GAPS.get(requirement, requirement.replace("-", " "))
        who = str(item.get("sourceTitle") or item.get("source") or "")
        out.append(f"Documentation: {gap} — required by {who}" if who else f"Documentation: {gap}")
    return out


def reason_text(code: str, unavailable: Collection[str] | None = None) -> str:
    """The reason in plain words; ``data-unavailable`` names what is missing when the item says
    (its ``unavailable`` list): "pain scores could not be retrieved from the EHR"."""
    if code == "data-unavailable" and unavailable:
        return unavailable_text(unavailable)
    return REASONS.get(code, code.replace("-", " "))


def pathway_text(code: str) -> str:
    return PATHWAYS.get(code, code)


def target_text(target: dict[str, Any] | None) -> str:
    """``right lumbar L4-L5, L5-S1``; ``bilateral SIJ``; ``left knee``."""
    if not target:
        return ""
    side = target.get("side") or ""
    joints = [str(j) for j in target.get("joints") or []]
    region = target.get("region") or ""
    if joints in (["SIJ"], ["knee"]) or not joints:
        return " ".join(p for p in (side, joints[0] if joints else region) if p)
    return " ".join(p for p in (side, region, ", ".join(joints)) if p)


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def summary(text: str) -> str:
    """A card summary is one sentence under 140 characters."""
    return text if len(text) < 140 else text[:136].rstrip() + "…"
