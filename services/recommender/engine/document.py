"""The assessment document (CONTRACT §3) and its plain-language rendering (``--format text``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from services.recommender.engine import explain
from services.recommender.engine.model import Alert, Assessment, Detail, OrderCheck, PatientResult
from services.recommender.engine.policy import Policy
from services.recommender.engine.wording import (
    VERDICTS,
    documentation_gaps,
    pathway_text,
    reason_text,
    target_text,
)
from shared.humanize import day, days, listing, percent, plural


def cited(detail: Detail, policy: Policy) -> dict[str, Any]:
    """A detail's JSON with the id and short label of the source the policy names for its key."""
    source = policy.source(detail.policy_key)
    return detail.as_json(source.id if source else None, source.label if source else None)


def reason_details(reasons: Sequence[str], details: Sequence[Detail], policy: Policy) -> list[dict[str, Any]]:
    """``reasonDetails``: one per reason, in the reasons' order — measured, required, unit, the
    policy key and the id of the source the policy names for it (docs/assessment-document.md)."""
    by_code = {d.code: d for d in details}
    out = []
    for code in reasons:
        detail = by_code.get(code) or Detail(code, None, None, "", f"rules.{code}", reason_text(code))
        out.append(cited(detail, policy))
    return out


def relief_threshold(pathway: str, policy: Policy) -> dict[str, Any] | None:
    """``reliefThreshold``: the relief a block of this pathway must give, with its source."""
    value = policy.pathways.get(pathway, {}).get("threshold")
    if value is None:
        return None
    key = f"pathways.{pathway}.threshold"
    source = policy.source(key)
    return {
        "required": value,
        "unit": "%",
        "policyKey": key,
        "source": source.id if source else None,
        "sourceLabel": source.label if source else None,
    }


def _assessment(a: Assessment, policy: Policy) -> dict[str, Any]:
    return {
        "pathway": a.pathway,
        "target": a.target.as_json(),
        "verdict": a.verdict,
        "reasons": list(a.reasons),
        "earliestDate": a.earliest_date.isoformat() if a.earliest_date else None,
        "nextStep": dict(a.next_step) if a.next_step else None,
        "evidence": [dict(e) for e in a.evidence],
        "documentation": [dict(d) for d in a.documentation],
        "reasonDetails": reason_details(a.reasons, a.details, policy),
        "reliefThreshold": relief_threshold(a.pathway, policy),
        "cautions": [cited(c, policy) for c in a.cautions],
        "nextStepTargets": [t.as_json() for t in a.step_targets] if a.next_step else [],
        "nextStepLimit": cited(a.step_limit, policy) if a.step_limit else None,
    }


def _order_check(o: OrderCheck, policy: Policy) -> dict[str, Any]:
    return {
        "order": o.order,
        "pathway": o.pathway,
        "verdict": o.verdict,
        "reasons": list(o.reasons),
        "earliestDate": o.earliest_date.isoformat() if o.earliest_date and o.verdict == "deferred" else None,
        "supportedTargets": [t.as_json() for t in o.supported_targets],
        "evidence": [dict(e) for e in o.evidence],
        "documentation": [dict(d) for d in o.documentation],
        "reasonDetails": reason_details(o.reasons, o.details, policy),
        "reliefThreshold": relief_threshold(o.pathway, policy),
        "cautions": [cited(c, policy) for c in o.cautions],
    }


def _alert(alert: Alert, policy: Policy) -> dict[str, Any]:
    out: dict[str, Any] = {"code": alert.code, "severity": alert.severity, "text": alert.text}
    if alert.detail is not None:
        out["detail"] = cited(alert.detail, policy)
    return out


def used_sources(document: Mapping[str, Any], policy: Policy) -> list[dict[str, str]]:
    """The policy's sources that the document's reasons cite, in first-use order."""
    ids: dict[str, None] = {}
    for patient in document.get("patients", []):
        for item in (*patient.get("assessments", []), *patient.get("orderChecks", [])):
            for d in item.get("reasonDetails") or []:
                if d.get("source"):
                    ids[d["source"]] = None
            threshold = item.get("reliefThreshold") or {}
            if threshold.get("source"):
                ids[threshold["source"]] = None
            for c in item.get("cautions") or []:
                if c.get("source"):
                    ids[c["source"]] = None
        for alert in patient.get("alerts", []):
            if (alert.get("detail") or {}).get("source"):
                ids[alert["detail"]["source"]] = None
    return [policy.sources[i].as_json() for i in ids if i in policy.sources]


def assessment_document(results: Sequence[PatientResult], policy: Policy, now: datetime) -> dict[str, Any]:
    """The CONTRACT §3 JSON (policy id and version, evaluatedAt, one entry per patient) with the
    extensions of docs/assessment-document.md: ``reasonDetails`` per assessment and order check,
    and ``sources``, the public sources those details cite."""
    document: dict[str, Any] = {
        "policy": {"id": policy.id, "version": policy.version},
        "evaluatedAt": now.isoformat(),
        "patients": [patient_entry(r, policy) for r in sorted(results, key=lambda r: r.patient)],
    }
    document["sources"] = used_sources(document, policy)
    return document


def patient_entry(result: PatientResult, policy: Policy) -> dict[str, Any]:
    """One patient's entry of :func:`assessment_document` (without the document's ``sources``)."""
    return {
        "patient": result.patient,
        "assessments": [_assessment(a, policy) for a in result.assessments],
        "orderChecks": [_order_check(o, policy) for o in result.order_checks],
        "alerts": [_alert(a, policy) for a in result.alerts],
        "outcomes": [dict(o) for o in result.outcomes],
    }


def _evidence_lines(item: Mapping[str, Any]) -> list[str]:
    evidence = [e for e in item.get("evidence") or [] if isinstance(e, Mapping)]
    out = [
        f"    Evidence: procedure on {r['date']} ({r['agent']}): pain before {r['before']}, best relief "
        f"{r['relief']}, sustained {r['sustained']} — {r['result']}."
        for r in explain.block_rows(evidence)
    ]
    injections = explain.injection_dates(evidence)
    if injections:
        out.append(f"    Injections counted: {listing(injections)}.")
    return out


def _outcome_text(o: Mapping[str, Any]) -> str:
    name = pathway_text(o.get("pathway", "")).lower()
    parts = [f"{name} {target_text(o.get('target'))} on {day(o.get('performed'))}"]
    for m in o.get("milestones") or []:
        pain = m.get("pain")
        if pain is not None:
            parts.append(f"at {plural(m['months'], 'month')} {percent(pain['reliefPercent'])} relief")
    relief_days = o.get("reliefDays")
    if relief_days is not None:
        more = " and counting" if o.get("censored") else ""
        threshold = percent(o.get("reliefThresholdPercent"))
        parts.append(f"at least {threshold} relief for {days(relief_days)}{more}")
    if o.get("daysToNextProcedure") is not None:
        parts.append(f"next procedure on the same target after {days(o['daysToNextProcedure'])}")
    return ", ".join(parts)


def render_text(document: Mapping[str, Any]) -> str:
    """A short plain-language explanation of the document for a pain physician: every reason
    with its numbers and source (``71.4 % relief … < 80 % required (LCD L38773)``)."""
    pol = document.get("policy", {})
    sources = explain.sources_of(document)
    when = day(document.get("evaluatedAt"))
    lines = [f"Policy {pol.get('id')} (version {pol.get('version')}), evaluated on {when}."]
    for patient in document.get("patients", []):
        lines.append("")
        lines.append(f"{patient['patient']}")
        if not (patient["assessments"] or patient["orderChecks"] or patient["alerts"]):
            lines.append("  Nothing to assess.")
        for o in patient["orderChecks"]:
            name = pathway_text(o["pathway"]).lower()
            line = f"  Order {o['order']} ({name}): {VERDICTS.get(o['verdict'], o['verdict'])}"
            if o.get("earliestDate"):
                line += f" — earliest {day(o['earliestDate'])}"
            lines.append(line + ".")
            lines += _why_lines(o, sources)
            if o["verdict"] == "partially-supported":
                targets = "; ".join(target_text(t) for t in o["supportedTargets"])
                lines.append(f"    Supported: {targets}.")
            lines += _evidence_lines(o)
            for gap in documentation_gaps(o.get("documentation")):
                lines.append(f"    {gap}.")
        for a in patient["assessments"]:
            name = pathway_text(a["pathway"]).lower()
            verdict = VERDICTS.get(a["verdict"], a["verdict"])
            line = f"  Next step {name}, {target_text(a['target'])}: {verdict}"
            lines.append(line + ".")
            lines += _why_lines(a, sources)
            if a.get("nextStep"):
                step = a["nextStep"]
                when = f" from {day(a['earliestDate'])}" if a.get("earliestDate") else ""
                lines.append(f"    Suggested: {step.get('display')} (CPT {step.get('code')}){when}.")
            lines += _evidence_lines(a)
            for gap in documentation_gaps(a.get("documentation")):
                lines.append(f"    {gap}.")
        for o in patient.get("outcomes") or []:
            lines.append(f"  Outcome: {_outcome_text(o)}.")
        for alert in patient["alerts"]:
            lines.append(f"  Alert ({alert['code']}): {alert['text']}")
            if isinstance(alert.get("detail"), Mapping):
                lines.append(f"    Why: {explain.because(alert['detail'], sources)}.")
    return "\n".join(lines) + "\n"


def _why_lines(item: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    cautions = [f"    Caution: {c}." for c in explain.cautions(item, sources)]
    whys = explain.reasons(item, sources)
    if whys:
        return [*cautions, f"    Why: {whys[0]}.", *(f"    Also: {w}." for w in whys[1:])]
    if item.get("verdict") == "supported":
        decisive = explain.decisive(item, sources)
        threshold = item.get("reliefThreshold") or {}
        if decisive and threshold.get("source"):
            return [*cautions, f"    Met: {decisive} ({explain.cite(threshold['source'], sources)})."]
    return cautions
