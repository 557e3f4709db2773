"""Worklist rows from one patient's assessment entry (pure: no database, no web)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from services.recommender.engine import wording

#: No earliest date: sorts after every real one (keyset paging needs a total order).
NO_DATE = date(9999, 12, 31)

#: What needs a clinician first: 0 needs review (or carries an alert), 1 ready to act, 2 missing
#: data, 3 waiting for a date, 4 criteria not met, 5 not covered.
ATTENTION = {
    "needs-review": 0,
    "supported": 1,
    "partially-supported": 1,
    "not-evaluable": 2,
    "deferred": 3,
    "not-met": 4,
    "not-covered": 5,
}

ATTENTION_WORDS = {
    0: "needs a clinician",
    1: "ready",
    2: "missing data",
    3: "waiting",
    4: "criteria not met",
    5: "not covered",
}


@dataclass(frozen=True)
class Row:
    key: str
    patient_key: str
    source: str
    patient_id: str
    name: str | None
    search: str
    pathway: str
    target: str
    verdict: str
    reason: str
    attention: int
    due: date
    alerts: str


def patient_name(patient: Mapping[str, Any] | None) -> str | None:
    """``Margaret A. Lindqvist`` from a FHIR Patient (the official name first), else None."""
    if not patient:
        return None
    names = [n for n in patient.get("name") or [] if isinstance(n, Mapping)]
    names.sort(key=lambda n: 0 if n.get("use") == "official" else 1 if n.get("use") in (None, "usual") else 2)
    for n in names:
        if n.get("text"):
            return str(n["text"])[:300]
        parts = [*(str(g) for g in n.get("given") or []), str(n.get("family") or "")]
        text = " ".join(p for p in parts if p).strip()
        if text:
            return text[:300]
    return None


def identifiers(patient: Mapping[str, Any] | None) -> list[str]:
    if not patient:
        return []
    return [
        str(i["value"]) for i in patient.get("identifier") or [] if isinstance(i, Mapping) and i.get("value")
    ]


def principal_reason(assessment: Mapping[str, Any]) -> str:
    """The first reason in plain words; for a met verdict, what to do next."""
    reasons = [str(r) for r in assessment.get("reasons") or []]
    verdict = str(assessment.get("verdict"))
    if reasons:
        return wording.sentence(wording.reason_text(reasons[0]))[:300]
    step = assessment.get("nextStep") or {}
    if verdict in ("supported", "partially-supported") and step.get("display"):
        return f"Next step: {step['display']}"[:300]
    return wording.sentence(wording.VERDICTS.get(verdict, verdict.replace("-", " ")))[:300]


def _due(value: Any) -> date:
    if not value:
        return NO_DATE
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return NO_DATE


def rows_for(
    patient_key: str,
    assessment_keys: Sequence[str],
    assessments: Sequence[Mapping[str, Any]],
    alerts: Sequence[Mapping[str, Any]],
    patient: Mapping[str, Any] | None,
) -> list[Row]:
    """One row per assessment (``assessment_keys[i]`` is the stored key of ``assessments[i]``)."""
    source, _, pid = patient_key.partition(":")
    name = patient_name(patient)
    search = " ".join([name or "", *identifiers(patient), pid]).lower()[:1000]
    codes = sorted({str(a.get("code")) for a in alerts if a.get("code")})
    alert_text = f",{','.join(codes)}," if codes else ""
    out = []
    for key, a in zip(assessment_keys, assessments, strict=True):
        verdict = str(a.get("verdict"))
        attention = 0 if codes else ATTENTION.get(verdict, 2)
        out.append(
            Row(
                key=key,
                patient_key=patient_key,
                source=source,
                patient_id=pid,
                name=name,
                search=search,
                pathway=str(a.get("pathway")),
                target=wording.target_text(a.get("target"))[:200],
                verdict=verdict,
                reason=principal_reason(a),
                attention=attention,
                due=_due(a.get("earliestDate")),
                alerts=alert_text[:400],
            )
        )
    return out
