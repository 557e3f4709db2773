"""The assessment document (CONTRACT §3) and its plain-language rendering (``--format text``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from services.recommender.engine.model import Assessment, OrderCheck, PatientResult
from services.recommender.engine.policy import Policy


def _assessment(a: Assessment) -> dict[str, Any]:
    return {
        "pathway": a.pathway,
        "target": a.target.as_json(),
        "verdict": a.verdict,
        "reasons": list(a.reasons),
        "earliestDate": a.earliest_date.isoformat() if a.earliest_date else None,
        "nextStep": dict(a.next_step) if a.next_step else None,
        "evidence": [dict(e) for e in a.evidence],
    }


def _order_check(o: OrderCheck) -> dict[str, Any]:
    return {
        "order": o.order,
        "pathway": o.pathway,
        "verdict": o.verdict,
        "reasons": list(o.reasons),
        "earliestDate": o.earliest_date.isoformat() if o.earliest_date and o.verdict == "deferred" else None,
        "supportedTargets": [t.as_json() for t in o.supported_targets],
        "evidence": [dict(e) for e in o.evidence],
    }


def assessment_document(results: Sequence[PatientResult], policy: Policy, now: datetime) -> dict[str, Any]:
    """Exactly the CONTRACT §3 JSON: policy id and version, evaluatedAt, one entry per patient."""
    return {
        "policy": {"id": policy.id, "version": policy.version},
        "evaluatedAt": now.isoformat(),
        "patients": [
            {
                "patient": r.patient,
                "assessments": [_assessment(a) for a in r.assessments],
                "orderChecks": [_order_check(o) for o in r.order_checks],
                "alerts": [{"code": a.code, "severity": a.severity, "text": a.text} for a in r.alerts],
            }
            for r in sorted(results, key=lambda r: r.patient)
        ],
    }


PATHWAY_TEXT = {
    "facet-diagnostic": "diagnostic facet (medial branch) block",
    "facet-rfa": "facet radiofrequency ablation",
    "facet-rfa-repeat": "repeat facet radiofrequency ablation",
    "facet-therapeutic": "therapeutic facet joint injection",
    "sij-diagnostic": "diagnostic sacroiliac joint injection",
    "sij-therapeutic": "therapeutic sacroiliac joint injection",
    "sij-rfa": "sacroiliac joint radiofrequency ablation",
    "esi": "epidural steroid injection",
    "genicular-rfa": "genicular nerve radiofrequency ablation",
    "knee-steroid": "knee corticosteroid injection",
}
VERDICT_TEXT = {
    "supported": "criteria met",
    "partially-supported": "supported for part of the order only",
    "not-met": "criteria not met",
    "not-evaluable": "cannot be decided from the data",
    "needs-review": "needs a clinician's review",
    "not-covered": "not covered by this policy",
    "deferred": "criteria met, but not yet",
}
REASON_TEXT = {
    "second-block-required": "a second positive confirmatory block at the same joints and side is required",
    "relief-below-threshold": "relief after the block stayed below the required threshold",
    "duration-inconsistent-with-agent": "relief did not last as long as the local anaesthetic acts",
    "sedation-confounded": "the block was done under IV sedation, which confounds the response",
    "not-confirmed-same-side": "the positive blocks were on the other side",
    "not-confirmed-same-joint": "the positive blocks were at other joints",
    "levels-exceed-session-limit": "more joints per side than one session allows",
    "diagnostic-interval-too-short": "the second diagnostic block comes too soon after the first",
    "diagnostic-session-cap": "the yearly limit of diagnostic sessions is reached",
    "rfa-session-cap": "the yearly limit of ablation sessions is reached",
    "therapeutic-session-cap": "the yearly limit of therapeutic sessions is reached",
    "esi-session-cap": "the yearly limit of epidural sessions is reached",
    "prior-relief-insufficient": "the previous procedure did not give lasting relief",
    "repeat-diagnostics-required": (
        "the pain source is in question after 2 years: repeat the diagnostic blocks"
    ),
    "no-baseline": "no pain score before the procedure",
    "scale-mismatch": "the pain scores after the block use another scale than the baseline",
    "low-baseline": "the baseline pain score was low (mild pain)",
    "no-follow-up": "no pain scores after the procedure",
    "pain-duration-too-short": "the pain has not lasted long enough yet",
    "conservative-care-too-short": "conservative care has not been tried long enough",
    "untreated-radiculopathy": "an untreated radiculopathy must be addressed first",
    "indication-missing": "no radicular diagnosis supports it",
    "rfa-alternative-undocumented": "no documented reason why ablation is not possible",
    "joint-not-blocked": "a joint in the order was never blocked",
    "relief-period-not-ended": "the relief period after the last procedure has not ended yet",
    "level-previously-ablated": "this joint was ablated successfully before",
    "not-covered-by-policy": "the policy does not cover this procedure",
    "steroid-frequency": "steroid injections into this joint are too frequent",
    "discordant-blocks": "comparative blocks disagree",
    "prolonged-response": "relief lasted far longer than the anaesthetic acts",
}


def _target_text(target: Mapping[str, Any]) -> str:
    joints = ", ".join(j for j in target.get("joints") or [] if j not in ("knee", "hip"))
    return f"{target.get('side')} {target.get('region')} {joints}".strip()


def _evidence_text(e: Mapping[str, Any]) -> str:
    if "steroid-frequency" in (e.get("reasons") or []):
        return f"{e.get('procedure')} ({e.get('performed')}): corticosteroid injection into this joint"
    if e.get("baseline") is None:
        return f"{e.get('procedure')} ({e.get('performed')}): no baseline pain score"
    parts = [
        f"{e.get('procedure')} ({e.get('performed')}, {e.get('agent')})",
        f"baseline {e.get('baseline')}",
    ]
    if e.get("peakReliefPercent") is not None:
        parts.append(f"peak relief {e['peakReliefPercent']}%")
    if e.get("sustainedMinutes") is not None:
        parts.append(f"sustained {e['sustainedMinutes']} min")
    parts.append("positive" if e.get("positive") else "not positive")
    return ", ".join(parts)


def _why(reasons: Sequence[str]) -> str:
    return "; ".join(REASON_TEXT.get(r, r) for r in reasons)


def render_text(document: Mapping[str, Any]) -> str:
    """A short plain-language explanation of the document for a pain physician."""
    pol = document.get("policy", {})
    lines = [
        f"Policy {pol.get('id')} (version {pol.get('version')}), evaluated at {document.get('evaluatedAt')}."
    ]
    for patient in document.get("patients", []):
        lines.append("")
        lines.append(f"{patient['patient']}")
        if not (patient["assessments"] or patient["orderChecks"] or patient["alerts"]):
            lines.append("  Nothing to assess.")
        for o in patient["orderChecks"]:
            name = PATHWAY_TEXT.get(o["pathway"], o["pathway"])
            line = f"  Order {o['order']} ({name}): {VERDICT_TEXT.get(o['verdict'], o['verdict'])}"
            if o.get("earliestDate"):
                line += f" until {o['earliestDate']}"
            lines.append(line + ".")
            if o["reasons"]:
                lines.append(f"    Why: {_why(o['reasons'])}.")
            if o["verdict"] == "partially-supported":
                targets = "; ".join(_target_text(t) for t in o["supportedTargets"])
                lines.append(f"    Supported: {targets}.")
            for e in o["evidence"]:
                lines.append(f"    Evidence: {_evidence_text(e)}.")
        for a in patient["assessments"]:
            name = PATHWAY_TEXT.get(a["pathway"], a["pathway"])
            verdict = VERDICT_TEXT.get(a["verdict"], a["verdict"])
            line = f"  Next step {name}, {_target_text(a['target'])}: {verdict}"
            lines.append(line + ".")
            if a["reasons"]:
                lines.append(f"    Why: {_why(a['reasons'])}.")
            if a.get("nextStep"):
                step = a["nextStep"]
                when = f" from {a['earliestDate']}" if a.get("earliestDate") else ""
                lines.append(f"    Suggested: {step.get('display')} (CPT {step.get('code')}){when}.")
            for e in a["evidence"]:
                lines.append(f"    Evidence: {_evidence_text(e)}.")
        for alert in patient["alerts"]:
            lines.append(f"  Alert ({alert['code']}): {alert['text']}")
    return "\n".join(lines) + "\n"
