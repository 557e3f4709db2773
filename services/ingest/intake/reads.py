"""What is stored for a source, read back through its FHIR base (CONTRACT §2)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from services.ingest.intake.repository import read_resource, search_by_patient
from shared.db.session import session_scope
from shared.domain.relevance import KEPT_TYPES
from shared.errors import Gone, InvalidInput, NotFound
from shared.settings import Settings, Source


def read(engine: Engine, source: Source, rtype: str, rid: str) -> dict[str, Any]:
    with session_scope(engine) as session:
        row = read_resource(session, source.id, rtype, rid)
    if row is None:
        raise NotFound(f"{rtype}/{rid} is not stored")
    if row.deleted or row.raw is None:
        raise Gone(f"{rtype}/{rid} was deleted")
    return row.raw


def search(engine: Engine, source: Source, rtype: str, patient: str | None, count: int) -> dict[str, Any]:
    if not patient:
        raise InvalidInput("Search needs the patient parameter: ?patient=<id>", code="not-supported")
    pid = patient.removeprefix("Patient/")
    with session_scope(engine) as session:
        rows = search_by_patient(session, source.id, rtype, pid, count)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(rows),
        "entry": [
            {"fullUrl": f"{rtype}/{r.resource_id}", "resource": r.raw, "search": {"mode": "match"}}
            for r in rows
        ],
    }


def capability_statement(settings: Settings, source: Source) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2025-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "software": {"name": "Pinpoint ingest"},
        "implementation": {
            "description": f"Pinpoint FHIR base of source {source.id}",
            "url": settings.base_url + ("/fhir" if source.id == "default" else f"/sources/{source.id}/fhir"),
        },
        "rest": [
            {
                "mode": "server",
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "resource": [
                    {
                        "type": t,
                        "interaction": [
                            {"code": c} for c in ("read", "create", "update", "delete", "search-type")
                        ],
                        "searchParam": [{"name": "patient", "type": "reference"}],
                    }
                    for t in KEPT_TYPES
                ],
            }
        ],
    }
