"""The thin end-to-end path: a Bundle POSTed to /fhir is stored, its patients marked dirty."""

from __future__ import annotations

import json

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from shared.db.models import EvaluationQueue, Resource
from tests.conftest import FIXTURES

FHIR = {"content-type": "application/fhir+json"}


def _bundle(*resources: dict) -> bytes:  # type: ignore[type-arg]
    return json.dumps(
        {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": r} for r in resources]}
    ).encode()


PATIENT = {"resourceType": "Patient", "id": "P-1"}
OBS = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
    "subject": {"reference": "Patient/P-1"},
    "effectiveDateTime": "2025-02-03T09:00:00-05:00",
    "valueInteger": 7,
}


async def test_bundle_stored_read_back_and_patient_dirty(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.post("/fhir", content=_bundle(PATIENT, OBS), headers=FHIR)
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in body["entry"]] == ["201", "201"]

    read = await client.get("/fhir/Observation/obs-1")
    assert read.status_code == 200
    assert read.json()["valueInteger"] == 7

    with Session(engine) as s:
        queue = list(s.exec(select(EvaluationQueue)))
    assert [q.patient_key for q in queue] == ["default:P-1"]


async def test_redelivery_is_harmless(client: httpx.AsyncClient, engine: Engine) -> None:
    for _ in range(3):
        r = await client.post("/fhir", content=_bundle(PATIENT, OBS), headers=FHIR)
        assert r.status_code == 200
    with Session(engine) as s:
        rows = list(s.exec(select(Resource)))
        queue = list(s.exec(select(EvaluationQueue)))
    assert len(rows) == 2
    assert len(queue) == 1


async def test_synthea_transaction_bundle_accepted(client: httpx.AsyncClient) -> None:
    body = (FIXTURES / "realdata" / "synthea-weston-fay.json").read_bytes()
    r = await client.post("/fhir", content=body, headers=FHIR)
    assert r.status_code == 200, r.text


async def test_missing_resource_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Procedure/nope")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
