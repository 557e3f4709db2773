"""The assessment document (CONTRACT §3) and its plain-language rendering (``--format text``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from services.recommender.engine.model import Assessment, OrderCheck, PatientResult
from services.recommender.engine.policy import Policy
from services.recommender.engine.wording import (
    VERDICTS,
    documentation_gaps,
    pathway_text,
    reason_text,
    target_text,
)


def _assessment(a: Assessment) -> dict[str, Any]:
    return {
        "pathway": a.pathway,
        "target": a.target.as_json(),
        "verdict": a.verdict,
        "reasons": list(a.reasons),
        "earliestDate": a.earliest_date.isoformat() if a.earliest_date else None,
        "nextStep": dict(a.next_step) if a.next_step else None,
        "evidence": [dict(e) for e in a.evidence],
        "documentation": [dict(d) for d in a.documentation],
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
        "documentation": [dict(d) for d in o.documentation],
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
                "outcomes": [dict(o) for o in r.outcomes],
            }
            for r in sorted(results, key=lambda r: r.patient)
        ],
    }


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


def _outcome_text(o: Mapping[str, Any]) -> str:
    name = pathway_text(o.get("pathway", "")).lower()
    parts = [f"{name} {target_text(o.get('target'))} ({o.get('procedure')}, {str(o.get('performed'))[:10]})"]
    for m in o.get("milestones") or []:
        pain = m.get("pain")
        if pain is not None:
            parts.append(f"{m['months']} mo {pain['reliefPercent']}% relief")
    days = o.get("reliefDays")
    if days is not None:
        more = " and counting" if o.get("censored") else ""
        parts.append(f"at least {o.get('reliefThresholdPercent')}% relief for {days} days{more}")
    if o.get("daysToNextProcedure") is not None:
        parts.append(f"next procedure on the same target after {o['daysToNextProcedure']} days")
    return ", ".join(parts)


def _why(reasons: Sequence[str]) -> str:
    return "; ".join(reason_text(r) for r in reasons)


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
            name = pathway_text(o["pathway"]).lower()
            line = f"  Order {o['order']} ({name}): {VERDICTS.get(o['verdict'], o['verdict'])}"
            if o.get("earliestDate"):
                line += f" until {o['earliestDate']}"
            lines.append(line + ".")
            if o["reasons"]:
                lines.append(f"    Why: {_why(o['reasons'])}.")
            if o["verdict"] == "partially-supported":
                targets = "; ".join(target_text(t) for t in o["supportedTargets"])
                lines.append(f"    Supported: {targets}.")
            for e in o["evidence"]:
                lines.append(f"    Evidence: {_evidence_text(e)}.")
            for gap in documentation_gaps(o.get("documentation")):
                lines.append(f"    {gap}.")
        for a in patient["assessments"]:
            name = pathway_text(a["pathway"]).lower()
            verdict = VERDICTS.get(a["verdict"], a["verdict"])
            line = f"  Next step {name}, {target_text(a['target'])}: {verdict}"
            lines.append(line + ".")
            if a["reasons"]:
                lines.append(f"    Why: {_why(a['reasons'])}.")
            if a.get("nextStep"):
                step = a["nextStep"]
                when = f" from {a['earliestDate']}" if a.get("earliestDate") else ""
                lines.append(f"    Suggested: {step.get('display')} (CPT {step.get('code')}){when}.")
            for e in a["evidence"]:
                lines.append(f"    Evidence: {_evidence_text(e)}.")
            for gap in documentation_gaps(a.get("documentation")):
                lines.append(f"    {gap}.")
        for o in patient.get("outcomes") or []:
            lines.append(f"  Outcome: {_outcome_text(o)}.")
        for alert in patient["alerts"]:
            lines.append(f"  Alert ({alert['code']}): {alert['text']}")
    return "\n".join(lines) + "\n"
