"""Issue 19: functional Observations and QuestionnaireResponses are kept by push (minimum
necessary: only the functional instruments), readable back, and mark their patient dirty."""

from __future__ import annotations

import json

import httpx
from sqlalchemy.engine import Engine

from tests.api.ingest.helpers import FHIR, body, bundle, dirty, patient, stored
from tests.conftest import FIXTURES


def _odi_response() -> dict:
    qr = json.loads((FIXTURES / "function" / "pacio-odi-example2.json").read_text())
    qr["subject"] = {"reference": "Patient/P-1"}
    qr["author"] = {"reference": "Patient/P-1"}
    return qr


def _phq9() -> dict:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "phq9-1",
        "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/PHQ9Questionnaire",
        "subject": {"reference": "Patient/P-1"},
        "authored": "2025-01-20T10:00:00Z",
        "item": [{"linkId": "phq9-1", "answer": [{"valueInteger": 2}]}],
    }


def _odi_text_observation() -> dict:
    return {
        "resourceType": "Observation",
        "id": "odi-baseline",
        "status": "final",
        "code": {"text": "Oswestry Disability Index (ODI) total score"},
        "subject": {"reference": "Patient/P-1"},
        "effectiveDateTime": "2025-01-20T10:00:00-05:00",
        "valueQuantity": {"value": 44, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }


async def test_batch_keeps_functional_instruments_and_drops_other_questionnaires(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    payload = bundle("batch", patient(), _odi_response(), _phq9(), _odi_text_observation())
    r = await client.post("/fhir", content=body(payload), headers=FHIR)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "201 Created", "200 OK", "201 Created"]
    rows = stored(engine)
    assert set(rows) == {
        ("Patient", "P-1"),
        ("QuestionnaireResponse", "OswestryDisabilityIndexExample2"),
        ("Observation", "odi-baseline"),
    }
    assert dirty(engine) == ["default:P-1"]

    read = await client.get("/fhir/QuestionnaireResponse/OswestryDisabilityIndexExample2")
    assert read.status_code == 200 and read.json()["item"][0]["linkId"] == "odi-1"
    search = await client.get("/fhir/QuestionnaireResponse", params={"patient": "P-1"})
    assert search.status_code == 200 and search.json()["total"] == 1
    meta = await client.get("/fhir/metadata")
    assert "QuestionnaireResponse" in {res["type"] for res in meta.json()["rest"][0]["resource"]}


async def test_single_pushed_response_of_another_questionnaire_is_200_informational(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    r = await client.post("/fhir/QuestionnaireResponse", content=body(_phq9()), headers=FHIR)
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert stored(engine) == {}
