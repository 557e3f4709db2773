"""What the worker reads for a batch of patients: each one's kept resources exactly as stored, plus
the patient-less resources they name (a Medication, a BodyStructure) — and nothing else."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.recommender.patients.repository import load_resources
from shared.db.models import Resource, utcnow
from shared.db.session import session_scope
from tests.integration.worker.helpers import seed_store

BODY_EXT = "http://hl7.org/fhir/StructureDefinition/procedure-targetBodyStructure"


def _patient(pid: str, med: str, structure: str) -> list[dict[str, Any]]:
    subject = {"reference": f"Patient/{pid}"}
    return [
        {"resourceType": "Patient", "id": pid, "name": [{"family": "Ñúñez", "given": ["Zoë"]}]},
        {
            "resourceType": "Procedure",
            "id": f"{pid}-mbb",
            "status": "completed",
            "subject": subject,
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "64493"}]},
            "performedDateTime": "2025-01-02T10:00:00+00:00",
            "extension": [{"url": BODY_EXT, "valueReference": {"reference": f"BodyStructure/{structure}"}}],
        },
        {
            "resourceType": "MedicationAdministration",
            "id": f"{pid}-ma",
            "status": "completed",
            "subject": subject,
            "medicationReference": {"reference": f"Medication/{med}"},
            "partOf": [{"reference": f"Procedure/{pid}-mbb"}],
            "effectiveDateTime": "2025-01-02T10:00:00+00:00",
            "dosage": {"dose": {"value": 1.5, "unit": "mL"}},
        },
    ]


def _shared(rtype: str, rid: str) -> dict[str, Any]:
    return {"resourceType": rtype, "id": rid, "code": {"text": f"{rtype} {rid}"}}


def test_a_batch_reads_its_resources_and_the_patient_less_ones_they_name(engine: Engine) -> None:
    patients = [_patient("P-1", "med-1", "bs-1"), _patient("P-2", "med-2", "bs-1")]
    keys = seed_store(engine, patients)
    with session_scope(engine) as s:
        for rtype, rid in [
            ("Medication", "med-1"),
            ("Medication", "med-2"),
            ("Medication", "med-9"),
            ("BodyStructure", "bs-1"),
        ]:
            raw = _shared(rtype, rid)
            s.add(
                Resource(
                    source="default",
                    resource_type=rtype,
                    resource_id=rid,
                    content_hash=rid,
                    raw=raw,
                    received_at=utcnow(),
                )
            )
    with Session(engine) as s:
        loaded = load_resources(s, keys)
    for key, stored in zip(keys, patients, strict=True):
        own = [r for r in loaded[key] if r["resourceType"] not in ("Medication", "BodyStructure")]
        assert sorted(own, key=lambda r: r["id"]) == sorted(stored, key=lambda r: r["id"])  # as stored
    named = {
        k: sorted(f"{r['resourceType']}/{r['id']}" for r in v if r not in patients[i])
        for i, (k, v) in enumerate(loaded.items())
    }
    assert named == {
        "default:P-1": ["BodyStructure/bs-1", "Medication/med-1"],
        "default:P-2": ["BodyStructure/bs-1", "Medication/med-2"],
    }
