"""CONTRACT §2 single resources, reads, pings, non-FHIR bodies, sources and their credentials."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.server import Role, build_app
from shared.db.models import DeadLetter
from shared.settings import ConfigFile, Settings
from tests.api.ingest.helpers import FHIR, body, dead_letters, dirty, encounter, pain, patient, stored


async def test_post_single_resource_to_base_and_type(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.post("/fhir", content=body(patient()), headers=FHIR)
    assert r.status_code == 201
    assert r.headers["location"] == "Patient/P-1"
    r = await client.post("/fhir/Observation", content=body(pain()), headers=FHIR)
    assert r.status_code == 201
    assert r.json()["valueInteger"] == 7
    assert dirty(engine) == ["default:P-1"]


async def test_post_to_the_wrong_type_is_400(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.post("/fhir/Procedure", content=body(pain()), headers=FHIR)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    assert stored(engine) == {}


async def test_put_echoes_the_stored_resource(client: httpx.AsyncClient) -> None:
    obs = pain()
    del obs["id"]
    r = await client.put("/fhir/Observation/obs-7", content=body(obs), headers=FHIR)
    assert r.status_code == 201
    echoed = r.json()
    assert echoed["id"] == "obs-7" and echoed["resourceType"] == "Observation"
    r = await client.put("/fhir/Observation/obs-7", content=body(pain("obs-7", value=2)), headers=FHIR)
    assert r.status_code == 200 and r.json()["valueInteger"] == 2
    r = await client.put("/fhir/Observation/other", content=body(pain("obs-7")), headers=FHIR)
    assert r.status_code == 400


async def test_irrelevant_single_resource_is_200_informational(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    r = await client.post("/fhir", content=body(encounter()), headers=FHIR)
    assert r.status_code == 200
    issue = r.json()["issue"][0]
    assert issue["severity"] == "information"
    assert stored(engine) == {}


async def test_delete_then_read_is_410(client: httpx.AsyncClient, engine: Engine) -> None:
    await client.post("/fhir", content=body(patient()), headers=FHIR)
    await client.post("/fhir", content=body(pain()), headers=FHIR)
    r = await client.delete("/fhir/Observation/obs-1")
    assert r.status_code == 200
    r = await client.get("/fhir/Observation/obs-1")
    assert r.status_code == 410
    assert r.json()["issue"][0]["code"] == "deleted"
    # a late re-delivery of the older version does not bring it back
    old = pain(meta={"lastUpdated": "2020-01-01T00:00:00Z"})
    await client.put("/fhir/Observation/obs-1", content=body(old), headers=FHIR)
    assert (await client.get("/fhir/Observation/obs-1")).status_code == 410


def _invalid_pain() -> bytes:
    broken = pain()
    broken["effectiveDateTime"] = "yesterday"
    return body(broken)


async def test_invalid_single_resource_is_400_and_a_dead_letter(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = _invalid_pain()
    r = await client.post("/fhir", content=raw, headers=FHIR)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    [dl] = dead_letters(engine)
    assert dl.payload == raw


async def test_a_rejected_payload_sent_again_is_counted_on_its_dead_letter(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = _invalid_pain()
    for _ in range(3):  # a sender retrying its rejected push
        assert (await client.post("/fhir", content=raw, headers=FHIR)).status_code == 400
    [dl] = dead_letters(engine)
    assert (dl.payload, dl.occurrences) == (raw, 3)
    assert dl.last_seen_at is not None and dl.last_seen_at >= dl.created_at
    with Session(engine) as s:  # once dealt with (replayed or failed), a new rejection is news
        row = s.get(DeadLetter, dl.id)
        assert row is not None
        row.status = "failed"
        s.add(row)
        s.commit()
    assert (await client.post("/fhir", content=raw, headers=FHIR)).status_code == 400
    assert sorted((d.status, d.occurrences) for d in dead_letters(engine)) == [("failed", 3), ("new", 1)]


@pytest.mark.parametrize(
    ("payload", "why"),
    [(b"{not json", "not valid JSON"), (b'{"hello": "world"}', "not a FHIR resource"), (b"[1, 2]", "FHIR")],
    ids=["not-json", "json-not-fhir", "json-array"],
)
async def test_not_json_or_not_fhir_is_400_and_kept(
    client: httpx.AsyncClient, engine: Engine, payload: bytes, why: str
) -> None:
    r = await client.post("/fhir", content=payload, headers=FHIR)
    assert r.status_code == 400
    assert why in r.json()["issue"][0]["diagnostics"]
    [dl] = dead_letters(engine)
    assert dl.payload == payload


async def test_empty_post_is_a_ping(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.post("/fhir", content=b"")
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert dead_letters(engine) == []


async def test_search_by_patient_and_metadata(client: httpx.AsyncClient) -> None:
    await client.post("/fhir", content=body(patient()), headers=FHIR)
    await client.post("/fhir", content=body(pain("a")), headers=FHIR)
    await client.post("/fhir", content=body(pain("b", subject="Patient/P-2")), headers=FHIR)
    r = await client.get("/fhir/Observation", params={"patient": "P-1"})
    assert r.status_code == 200
    found = r.json()
    assert found["type"] == "searchset"
    assert [e["resource"]["id"] for e in found["entry"]] == ["a"]
    r = await client.get("/fhir/Observation", params={"patient": "Patient/P-2"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["b"]
    meta = await client.get("/fhir/metadata")
    assert meta.status_code == 200 and meta.json()["resourceType"] == "CapabilityStatement"


async def test_unknown_source_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/sources/nowhere/fhir", content=body(patient()), headers=FHIR)
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def _secured_app(db_url: str, engine: Engine):  # type: ignore[no-untyped-def]
    config = ConfigFile.model_validate(
        {
            "sources": [
                {"id": "default", "inbound": {"bearer": "push-token"}},
                {"id": "medplum", "inbound": {"hmac_secret": "s3cret", "header": "X-Signature"}},
                {"id": "open", "open": True},  # says so: writes without a credential
            ]
        }
    )
    settings = Settings(
        database_url=db_url,
        api_tokens=["read-token"],
        admin_tokens=["admin-token"],
        config=config,
        _env_file=None,
    )  # type: ignore[call-arg]
    return build_app(settings, Role.all, engine)


@pytest.fixture
async def secured(db_url: str, engine: Engine):  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=_secured_app(db_url, engine), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint.test") as c:
        yield c


async def test_bearer_source_credential(secured: httpx.AsyncClient, engine: Engine) -> None:
    raw = body(patient())
    r = await secured.post("/fhir", content=raw, headers=FHIR)
    assert r.status_code == 401 and r.json()["issue"][0]["code"] == "login"
    r = await secured.post("/fhir", content=raw, headers={**FHIR, "authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert stored(engine) == {} and dead_letters(engine) == []
    r = await secured.post("/fhir", content=raw, headers={**FHIR, "authorization": "Bearer push-token"})
    assert r.status_code == 201
    assert stored(engine)[("Patient", "P-1")].resource_id == "P-1"


async def test_hmac_source_credential(secured: httpx.AsyncClient, engine: Engine) -> None:
    raw = body(patient("M-1"))
    good = hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    r = await secured.post("/sources/medplum/fhir", content=raw, headers={**FHIR, "x-signature": "00" * 32})
    assert r.status_code == 401
    r = await secured.post(
        "/sources/medplum/fhir", content=b"not json", headers={**FHIR, "x-signature": good}
    )
    assert r.status_code == 401
    assert stored(engine) == {} and dead_letters(engine) == []
    r = await secured.post("/sources/medplum/fhir", content=raw, headers={**FHIR, "x-signature": good})
    assert r.status_code == 201
    raw2 = body(patient("M-2"))
    hub = "sha256=" + hmac.new(b"s3cret", raw2, hashlib.sha256).hexdigest()
    r = await secured.post("/sources/medplum/fhir", content=raw2, headers={**FHIR, "x-hub-signature": hub})
    assert r.status_code == 201
    rows = stored(engine)
    assert rows[("Patient", "M-1")].source == "medplum"
    assert rows[("Patient", "M-1")].patient_key == "medplum:M-1"


async def test_reads_need_the_api_token(secured: httpx.AsyncClient) -> None:
    await secured.post("/sources/open/fhir", content=body(patient()), headers=FHIR)
    assert (await secured.get("/sources/open/fhir/Patient/P-1")).status_code == 401
    assert (await secured.get("/sources/open/fhir/metadata")).status_code == 401
    ok = await secured.get("/sources/open/fhir/Patient/P-1", headers={"authorization": "Bearer read-token"})
    assert ok.status_code == 200 and ok.json()["id"] == "P-1"
    # sources are separate id spaces
    other = await secured.get("/fhir/Patient/P-1", headers={"authorization": "Bearer read-token"})
    assert other.status_code == 404


async def test_dead_letter_replay_endpoint(secured: httpx.AsyncClient, engine: Engine) -> None:
    orphan_tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {**pain(), "status": None}, "request": {"method": "POST", "url": "Observation"}}
        ],
    }
    r = await secured.post("/sources/open/fhir", content=body(orphan_tx), headers=FHIR)
    assert r.status_code == 400
    [dl] = dead_letters(engine)
    url = f"/admin/dead-letters/{dl.id}/replay"
    assert (await secured.post(url)).status_code == 401
    assert (await secured.post(url, headers={"authorization": "Bearer read-token"})).status_code == 403
    r = await secured.post(url, headers={"authorization": "Bearer admin-token"})
    assert r.status_code == 200
    assert r.json()["status"] == "failed"
    assert len(dead_letters(engine)) == 1
    missing = await secured.post(
        "/admin/dead-letters/999/replay", headers={"authorization": "Bearer admin-token"}
    )
    assert missing.status_code == 404
