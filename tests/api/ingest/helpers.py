"""Small builders for ingest tests: resources, Bundles, and database look-ups."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from shared.db.models import DeadLetter, EvaluationQueue, Resource

FHIR = {"content-type": "application/fhir+json"}
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"


def patient(pid: str = "P-1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, **extra}


def pain(oid: str = "obs-1", value: int = 7, subject: str = "Patient/P-1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2025-02-03T09:00:00-05:00",
        "valueInteger": value,
        **extra,
    }


def weight(oid: str = "w-1", subject: str = "Patient/P-1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 80, "unit": "kg"},
    }


def encounter(eid: str = "enc-1") -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": eid, "status": "finished", "class": {"code": "AMB"}}


def mbb(pid: str = "proc-1", subject: str = "Patient/P-1") -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": pid,
        "status": "completed",
        "code": {"coding": [{"system": CPT, "code": "64493"}]},
        "subject": {"reference": subject},
        "performedDateTime": "2025-02-03T09:20:00-05:00",
    }


def bundle(btype: str, *resources: dict[str, Any], full_urls: list[str] | None = None) -> dict[str, Any]:
    entries = []
    for i, r in enumerate(resources):
        entry: dict[str, Any] = {"resource": r}
        if full_urls:
            entry["fullUrl"] = full_urls[i]
        if btype in ("transaction", "batch"):
            entry["request"] = {"method": "POST", "url": r["resourceType"]}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": btype, "entry": entries}


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def stored(engine: Engine) -> dict[tuple[str, str], Resource]:
    with Session(engine) as s:
        return {(r.resource_type, r.resource_id): r for r in s.exec(select(Resource))}


def dirty(engine: Engine) -> list[str]:
    with Session(engine) as s:
        return sorted(q.patient_key for q in s.exec(select(EvaluationQueue)))


def dead_letters(engine: Engine) -> list[DeadLetter]:
    with Session(engine) as s:
        return list(s.exec(select(DeadLetter).order_by(DeadLetter.id)))  # type: ignore[arg-type]
