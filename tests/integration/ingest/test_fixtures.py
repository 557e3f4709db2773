"""The copied real payloads and FHIR vectors (tests/fixtures/ingest) POSTed to /fhir."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from tests.api.ingest.helpers import FHIR, dead_letters, stored
from tests.conftest import FIXTURES

FILES = sorted((FIXTURES / "ingest").glob("*/*.json"))


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
async def test_every_fixture_is_taken_without_a_server_error(client: httpx.AsyncClient, path: Path) -> None:
    r = await client.post("/fhir", content=path.read_bytes(), headers=FHIR)
    assert r.status_code in (200, 201), r.text[:500]
    assert r.headers["content-type"].startswith("application/fhir+json")


async def test_synthea_transaction_keeps_pain_scores_not_encounters(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = (
        FIXTURES / "ingest" / "vectors" / "synthea-r4-transaction-bundle-procedures-observations.json"
    ).read_bytes()
    r = await client.post("/fhir", content=raw, headers=FHIR)
    assert r.status_code == 200
    assert r.json()["type"] == "transaction-response"
    rows = stored(engine)
    types = {t for t, _ in rows}
    assert "Encounter" not in types and "Claim" not in types
    for (rtype, _), row in rows.items():
        if rtype == "Observation":
            assert row.raw is not None
            codes = {c["code"] for c in row.raw["code"]["coding"]}
            assert codes & {"72514-3", "38208-5", "38214-3"}


async def test_message_with_labour_epidural_and_invalid_patient_id(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    """The birth-record message nests Bundles; its labour epidural is never a pain intervention,
    and its Patient with id ``urn:uuid:…`` is invalid FHIR: a 400 entry and a dead letter."""
    raw = (FIXTURES / "ingest" / "realdata" / "nightingale-birth-submission-message.json").read_bytes()
    r = await client.post("/fhir", content=raw, headers=FHIR)
    assert r.status_code == 200
    assert not any(t == "Procedure" for t, _ in stored(engine))
    assert "400 Bad Request" in [e["response"]["status"] for e in r.json()["entry"]]
    assert dead_letters(engine)


async def test_cardiac_ablation_is_not_kept(client: httpx.AsyncClient, engine: Engine) -> None:
    raw = (FIXTURES / "ingest" / "realdata" / "r4-procedure-f001-heart.json").read_bytes()
    r = await client.post("/fhir", content=raw, headers=FHIR)
    assert r.status_code == 200
    assert stored(engine) == {}
