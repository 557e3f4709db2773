"""CONTRACT §2 Bundles: transaction all-or-nothing, batch entry by entry, nested unwrapping."""

from __future__ import annotations

import httpx
from sqlalchemy.engine import Engine

from tests.api.ingest.helpers import (
    FHIR,
    body,
    bundle,
    dead_letters,
    dirty,
    encounter,
    mbb,
    pain,
    patient,
    stored,
    weight,
)


async def test_transaction_keeps_relevant_and_answers_transaction_response(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    payload = bundle("transaction", patient(), pain(), weight(), encounter(), mbb())
    r = await client.post("/fhir", content=body(payload), headers=FHIR)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created", "201 Created", "200 OK", "200 OK", "201 Created"]
    assert answer["entry"][2]["response"]["outcome"]["issue"][0]["severity"] == "information"
    assert set(stored(engine)) == {("Patient", "P-1"), ("Observation", "obs-1"), ("Procedure", "proc-1")}
    assert dirty(engine) == ["default:P-1"]


async def test_transaction_with_an_invalid_kept_entry_stores_nothing(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    broken = pain("obs-2")
    del broken["status"]
    payload = bundle("transaction", patient(), pain(), broken)
    raw = body(payload)
    r = await client.post("/fhir", content=raw, headers=FHIR)
    assert r.status_code == 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("status" in i["diagnostics"] for i in outcome["issue"])
    assert stored(engine) == {}
    assert dirty(engine) == []
    [dl] = dead_letters(engine)
    assert dl.payload == raw and dl.kind == "push" and dl.source == "default"
    assert "status" in dl.reason


async def test_invalid_irrelevant_entry_does_not_fail_a_transaction(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    """Relevance is decided on the raw JSON before validation: a broken Encounter is just dropped."""
    bad_encounter = {"resourceType": "Encounter", "id": "e", "status": 42}
    r = await client.post(
        "/fhir", content=body(bundle("transaction", patient(), bad_encounter)), headers=FHIR
    )
    assert r.status_code == 200
    assert set(stored(engine)) == {("Patient", "P-1")}


async def test_batch_is_entry_by_entry(client: httpx.AsyncClient, engine: Engine) -> None:
    broken = pain("obs-2")
    broken["valueInteger"] = "seven"
    payload = bundle("batch", patient(), broken, pain(), encounter())
    r = await client.post("/fhir", content=body(payload), headers=FHIR)
    assert r.status_code == 200
    answer = r.json()
    assert answer["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in answer["entry"]] == ["201", "400", "201", "200"]
    assert answer["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert set(stored(engine)) == {("Patient", "P-1"), ("Observation", "obs-1")}
    [dl] = dead_letters(engine)
    assert b'"seven"' in dl.payload and dl.context == {"entry": 1}


async def test_collection_and_searchset_answer_batch_response(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    for btype in ("collection", "searchset"):
        r = await client.post("/fhir", content=body(bundle(btype, patient(), pain())), headers=FHIR)
        assert r.status_code == 200
        assert r.json()["type"] == "batch-response"
    assert len(stored(engine)) == 2


async def test_nested_message_bundle_is_unwrapped(client: httpx.AsyncClient, engine: Engine) -> None:
    inner = bundle("collection", patient(), pain())
    message = {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [
            {"resource": {"resourceType": "MessageHeader", "id": "h", "eventUri": "urn:x", "source": {}}},
            {"resource": inner},
        ],
    }
    r = await client.post("/fhir", content=body(message), headers=FHIR)
    assert r.status_code == 200
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "201"]
    assert set(stored(engine)) == {("Patient", "P-1"), ("Observation", "obs-1")}


async def test_urn_uuid_identity_and_references(client: httpx.AsyncClient, engine: Engine) -> None:
    pid = "0b1f7c1e-0000-4000-8000-000000000001"
    oid = "0b1f7c1e-0000-4000-8000-000000000002"
    p = patient()
    del p["id"]
    o = pain(subject=f"urn:uuid:{pid}")
    del o["id"]
    payload = bundle("transaction", p, o, full_urls=[f"urn:uuid:{pid}", f"urn:uuid:{oid}"])
    r = await client.post("/fhir", content=body(payload), headers=FHIR)
    assert r.status_code == 200
    rows = stored(engine)
    assert set(rows) == {("Patient", pid), ("Observation", oid)}
    obs = rows[("Observation", oid)]
    assert obs.raw is not None and obs.raw["subject"]["reference"] == f"Patient/{pid}"
    assert obs.patient_key == f"default:{pid}"


async def test_conditional_patient_reference_resolved_against_the_store(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    mrn = {"system": "urn:mrn", "value": "12345"}
    r = await client.post("/fhir", content=body(patient("P-9", identifier=[mrn])), headers=FHIR)
    assert r.status_code == 201
    later = pain("obs-9", subject="Patient?identifier=urn:mrn|12345")
    r = await client.post("/fhir", content=body(bundle("batch", later)), headers=FHIR)
    assert r.json()["entry"][0]["response"]["status"] == "201 Created"
    obs = stored(engine)[("Observation", "obs-9")]
    assert obs.patient_key == "default:P-9"
    assert obs.raw is not None and obs.raw["subject"]["reference"] == "Patient/P-9"


async def test_unresolvable_patient_is_dropped_and_counted(client: httpx.AsyncClient, engine: Engine) -> None:
    orphan = pain("obs-x", subject="Patient?identifier=urn:mrn|nobody")
    no_subject = pain("obs-y")
    del no_subject["subject"]
    r = await client.post("/fhir", content=body(bundle("batch", orphan, no_subject)), headers=FHIR)
    assert r.status_code == 200
    for entry in r.json()["entry"]:
        assert entry["response"]["status"] == "200 OK"
        assert "patient" in entry["response"]["outcome"]["issue"][0]["diagnostics"]
    assert stored(engine) == {}


async def test_pinpoint_own_proposals_are_never_ingested(client: httpx.AsyncClient, engine: Engine) -> None:
    proposal = {
        "resourceType": "ServiceRequest",
        "id": "sr-own",
        "status": "draft",
        "intent": "proposal",
        "identifier": [{"system": "urn:pinpoint:recommendation", "value": "default:P-1:facet-rfa:x"}],
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "64635"}]},
        "subject": {"reference": "Patient/P-1"},
    }
    r = await client.post("/fhir", content=body(proposal), headers=FHIR)
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert stored(engine) == {}


async def test_same_bundle_twice_is_harmless(client: httpx.AsyncClient, engine: Engine) -> None:
    raw = body(bundle("transaction", patient(), pain(), mbb()))
    first = await client.post("/fhir", content=raw, headers=FHIR)
    second = await client.post("/fhir", content=raw, headers=FHIR)
    assert [e["response"]["status"] for e in first.json()["entry"]] == ["201 Created"] * 3
    assert [e["response"]["status"] for e in second.json()["entry"]] == ["200 OK"] * 3
    assert len(stored(engine)) == 3


async def test_newer_last_updated_wins_whatever_the_arrival_order(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    v2 = pain(value=3, meta={"versionId": "2", "lastUpdated": "2025-02-03T12:00:00Z"})
    v1 = pain(value=8, meta={"versionId": "1", "lastUpdated": "2025-02-03T10:00:00Z"})
    await client.post("/fhir", content=body(patient()), headers=FHIR)
    r2 = await client.put("/fhir/Observation/obs-1", content=body(v2), headers=FHIR)
    r1 = await client.put("/fhir/Observation/obs-1", content=body(v1), headers=FHIR)
    assert r2.status_code == 201 and r1.status_code == 200
    obs = stored(engine)[("Observation", "obs-1")]
    assert obs.raw is not None and obs.raw["valueInteger"] == 3
    assert obs.version_id == "2"
    # same versionId with other content is a duplicate, not an update
    same_version = pain(value=1, meta={"versionId": "2", "lastUpdated": "2025-02-03T12:00:00Z"})
    await client.put("/fhir/Observation/obs-1", content=body(same_version), headers=FHIR)
    obs = stored(engine)[("Observation", "obs-1")]
    assert obs.raw is not None and obs.raw["valueInteger"] == 3


async def test_notification_bundle_is_acknowledged(client: httpx.AsyncClient, engine: Engine) -> None:
    status = {
        "resourceType": "Parameters",
        "parameter": [{"name": "type", "valueCode": "event-notification"}],
    }
    note = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": status}, {"fullUrl": "Observation/obs-1", "resource": pain()}],
    }
    r = await client.post("/fhir", content=body(note), headers=FHIR)
    assert r.status_code == 200
    assert r.content == b""  # senders want a fast, empty 2xx (STANDARDS §2.4)
    assert ("Observation", "obs-1") in stored(engine)
