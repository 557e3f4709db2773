"""FHIR transaction rules (R4 http.html#trules): a resource appears in a transaction once. A
duplicate fullUrl, or two entries writing or deleting the same Type/id — conditional identities
resolved against the payload and the store — fail the whole transaction with 400 naming the
entries; the Bundle is kept as a dead letter and nothing is stored (issue 18, finding 7)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from tests.api.ingest.helpers import FHIR, body, bundle, dead_letters, mbb, pain, patient, stored

MRN = "http://hospital.example/mrn"


def _entry(
    resource: dict[str, Any], method: str = "POST", url: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "resource": resource,
        "request": {"method": method, "url": url or resource["resourceType"]},
        **extra,
    }


def _tx(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _anonymous_patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "MRN-1"}]}


CASES = [
    pytest.param(
        _tx(
            _entry(patient(), fullUrl="urn:uuid:2d1b8f1e-0000-4000-8000-000000000001"),
            _entry(pain(), fullUrl="urn:uuid:2d1b8f1e-0000-4000-8000-000000000001"),
        ),
        ["Bundle.entry[0]", "Bundle.entry[1]"],
        "same fullUrl",
        id="duplicate-fullUrl",
    ),
    pytest.param(
        _tx(
            _entry(patient()), _entry(pain("obs-1", 3)), _entry(pain("obs-1", 8), "PUT", "Observation/obs-1")
        ),
        ["Bundle.entry[1]", "Bundle.entry[2]"],
        "write Observation/obs-1",
        id="same-type-and-id",
    ),
    pytest.param(
        _tx(_entry(patient()), _entry(mbb()), {"request": {"method": "DELETE", "url": "Procedure/proc-1"}}),
        ["Bundle.entry[1]", "Bundle.entry[2]"],
        "write Procedure/proc-1",
        id="delete-and-write",
    ),
    pytest.param(
        _tx(
            _entry(patient(identifier=[{"system": MRN, "value": "MRN-1"}])),
            _entry(_anonymous_patient(), "PUT", f"Patient?identifier={MRN}|MRN-1"),
        ),
        ["Bundle.entry[0]", "Bundle.entry[1]"],
        "write Patient/P-1",
        id="conditional-update-in-the-payload",
    ),
    pytest.param(
        _tx(
            _entry(patient(identifier=[{"system": MRN, "value": "MRN-1"}])),
            _entry(_anonymous_patient(), ifNoneExist=None)
            | {"request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|MRN-1"}},
        ),
        ["Bundle.entry[0]", "Bundle.entry[1]"],
        "write Patient/P-1",
        id="conditional-create-in-the-payload",
    ),
]


@pytest.mark.parametrize(("tx", "where", "why"), CASES)
async def test_overlapping_identities_fail_the_transaction(
    client: httpx.AsyncClient, engine: Engine, tx: dict[str, Any], where: list[str], why: str
) -> None:
    raw = body(tx)
    r = await client.post("/fhir", content=raw, headers=FHIR)
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    [clash] = [i for i in out["issue"] if i.get("expression")]
    assert clash["expression"] == where and why in clash["diagnostics"]
    assert stored(engine) == {}
    [dl] = dead_letters(engine)
    assert dl.payload == raw and why in dl.reason


async def test_a_conditional_update_resolved_against_the_store_overlaps_too(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    first = await client.post(
        "/fhir", content=body(patient(identifier=[{"system": MRN, "value": "MRN-1"}])), headers=FHIR
    )
    assert first.status_code == 201
    tx = _tx(
        _entry(_anonymous_patient() | {"gender": "female"}, "PUT", f"Patient?identifier={MRN}|MRN-1"),
        _entry(patient(gender="male"), "PUT", "Patient/P-1"),
    )
    r = await client.post("/fhir", content=body(tx), headers=FHIR)
    assert r.status_code == 400, r.text
    assert "write Patient/P-1" in r.text
    assert "gender" not in stored(engine)[("Patient", "P-1")].raw  # type: ignore[operator]


async def test_distinct_identities_and_batches_are_unaffected(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    tx = _tx(
        _entry(patient()),
        _entry(pain("obs-1")),
        _entry(pain("obs-2")),
        _entry(_anonymous_patient()),
        _entry(_anonymous_patient()),
    )
    r = await client.post("/fhir", content=body(tx), headers=FHIR)
    assert r.status_code == 200, r.text
    assert {("Observation", "obs-1"), ("Observation", "obs-2")} <= set(stored(engine))
    # batch entries are independent: FHIR's transaction rule does not apply
    r = await client.post(
        "/fhir", content=body(bundle("batch", pain("obs-3", 2), pain("obs-3", 4))), headers=FHIR
    )
    assert r.status_code == 200
