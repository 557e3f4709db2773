"""Text PostgreSQL cannot store (NUL, lone surrogates) is refused alike on both backends: 400,
an OperationOutcome naming where, the raw bytes kept as a dead letter, nothing stored, and no
payload text in the log (issue 18, finding 1)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from services.ingest.bulk import import_paths
from shared.db.session import make_engine
from shared.logging import configure_logging
from shared.settings import Source
from tests.api.ingest.helpers import FHIR, body, bundle, dead_letters, mbb, pain, patient, stored

CANARY = "MRN-CANARY-7731 12 Elm Street"


def _with_note(text: str) -> dict[str, Any]:
    return {**mbb(), "note": [{"text": text}]}


def _with_display(text: str) -> dict[str, Any]:
    proc = mbb()
    proc["code"]["coding"][0]["display"] = text
    return proc


NUL = f"{CANARY}\u0000 apt 4"

CASES = [
    pytest.param(
        "/fhir",
        patient(address=[{"line": [NUL]}]),
        "Patient.address[0].line[0]",
        id="patient-address",
    ),
    pytest.param("/fhir/Procedure", _with_note(NUL), "Procedure.note[0].text", id="procedure-note"),
    pytest.param("/fhir", _with_display(NUL), "Procedure.code.coding[0].display", id="code-display"),
    pytest.param(
        "/fhir",
        bundle("transaction", patient(), _with_note(NUL)),
        "Bundle.entry[1].resource.note[0].text",
        id="transaction",
    ),
    pytest.param(
        "/fhir", bundle("batch", patient(), pain(), _with_display(NUL)), "Bundle.entry[2]", id="batch"
    ),
    pytest.param(
        "/fhir", {**patient(), "extension\u0000": []}, "Patient (a property name)", id="property-name"
    ),
]


@pytest.mark.parametrize(("path", "resource", "where"), CASES)
async def test_nul_is_refused_named_and_kept(
    client: httpx.AsyncClient,
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
    path: str,
    resource: dict[str, Any],
    where: str,
) -> None:
    raw = body(resource)
    assert b"\\u0000" in raw
    r = await client.post(path, content=raw, headers=FHIR)
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    issue = out["issue"][0]
    assert issue["expression"][0].startswith(where)
    assert "NUL" in issue["diagnostics"]
    assert stored(engine) == {}
    [dl] = dead_letters(engine)
    assert dl.payload == raw and dl.source == "default" and dl.kind == "push"
    assert "NUL" in dl.reason and dl.outcome == out
    assert CANARY not in capsys.readouterr().err


async def test_put_with_a_nul_is_refused_like_a_post(client: httpx.AsyncClient, engine: Engine) -> None:
    raw = body(_with_note(NUL))
    r = await client.put("/fhir/Procedure/proc-1", content=raw, headers=FHIR)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Procedure.note[0].text"]
    assert [d.payload for d in dead_letters(engine)] == [raw]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"resourceType": "Patient", "id": "p", "name": [{"text": "\\ud800"}]}', id="escaped"),
        pytest.param(
            '{"resourceType": "Patient", "name": [{"text": "\ud800"}]}'.encode("utf-8", "surrogatepass"),
            id="raw",
        ),
        pytest.param(b'{"resourceType": "Patient", "name": [{"text": "a\x00b"}]}', id="raw-nul-byte"),
        pytest.param(b'{"resourceType": "Patient", "name": [{"text": "\xff\xfe"}]}', id="invalid-utf8"),
    ],
)
async def test_bytes_that_are_not_storable_text_are_refused_and_kept_verbatim(
    client: httpx.AsyncClient, engine: Engine, raw: bytes
) -> None:
    r = await client.post("/fhir", content=raw, headers=FHIR)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    assert stored(engine) == {}
    assert [d.payload for d in dead_letters(engine)] == [raw]


async def test_text_quoting_the_payload_is_stored_without_the_nul(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    """A PUT whose body id differs from the URL's is refused with a message quoting both ids: a
    NUL in the body's id still leaves a dead letter, on PostgreSQL too."""
    raw = body(pain("obs\u0000x"))
    r = await client.put("/fhir/Observation/obs-1", content=raw, headers=FHIR)
    assert r.status_code == 400
    [dl] = dead_letters(engine)
    assert dl.payload == raw
    assert "\x00" not in dl.reason


def test_a_nul_in_an_import_is_a_dead_letter(engine: Engine, tmp_path: Path) -> None:
    good = pain()
    bad = copy.deepcopy(pain("obs-2"))
    bad["note"] = [{"text": NUL}]
    ndjson = tmp_path / "obs.ndjson"
    ndjson.write_bytes(body(patient()) + b"\n" + body(good) + b"\n" + body(bad) + b"\n")
    single = tmp_path / "proc.json"
    single.write_bytes(body(_with_note(NUL)))
    report = import_paths(engine, Source(id="default"), [ndjson, single])
    assert set(stored(engine)) == {("Patient", "P-1"), ("Observation", "obs-1")}
    letters = dead_letters(engine)
    assert report.dead_letters == 2
    assert sorted(d.payload for d in letters) == sorted([body(bad), body(_with_note(NUL))])
    assert all(
        "Observation.note[0].text" in d.reason or "Procedure.note[0].text" in d.reason for d in letters
    )


@pytest.fixture
def json_logs() -> Iterator[None]:
    """Production logging (JSON) for one test; the previous configuration restored after."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("info", "json")
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.postgres
@pytest.mark.usefixtures("json_logs")
def test_a_database_error_is_logged_by_class_and_sqlstate_only(
    pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What PostgreSQL says about a value it refuses quotes the value; none of it is logged."""
    eng = make_engine(pg_database)
    try:
        with eng.connect() as conn:
            conn.execute(sa.text("SELECT CAST(:doc AS jsonb)"), {"doc": f'{{"line": "{CANARY}\\u0000"}}'})
    except sa.exc.DBAPIError:
        structlog.get_logger("pinpoint.test").exception("db.failed")
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    finally:
        eng.dispose()
    err = capsys.readouterr().err
    assert err.count("22P05") >= 2
    assert "22P05" in err and "DataError" in err
    assert CANARY not in err and "MRN" not in err


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/fhir/Patient/a%00b"),
        ("GET", "/fhir/Procedure?patient=a%00b"),
        ("DELETE", "/fhir/Procedure/a%00b"),
        ("PUT", "/sources/a%00b/fhir/Patient/p"),
        ("GET", "/patients/a%00b/assessment"),
        ("GET", "/patients/a%00b/evidence"),
        ("GET", "/suggestions/fhir/ServiceRequest?patient=a%00b"),
    ],
)
async def test_a_nul_in_the_url_is_400(client: httpx.AsyncClient, method: str, url: str) -> None:
    r = await client.request(method, url, content=body(patient("p")), headers=FHIR)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "NUL" in r.json()["issue"][0]["diagnostics"]


async def test_a_nul_in_an_admin_command_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/admin/reevaluate", json={"patient": "a\u0000b"})
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["$.patient"]


def test_a_fetched_resource_with_a_nul_is_rejected_not_a_database_error(engine: Engine) -> None:
    """Resources read from a source (subscription fetches) arrive parsed, without bytes to scan:
    intake's check refuses the one holding a NUL and stores the others, on both backends."""
    from services.ingest.intake.bundles import explode, process_entries
    from shared.db.session import session_scope

    fetched = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient()}, {"resource": _with_note(NUL)}, {"resource": pain()}],
    }
    with session_scope(engine) as session:
        result = process_entries(session, Source(id="default"), explode(fetched))
    assert set(stored(engine)) == {("Patient", "P-1"), ("Observation", "obs-1")}
    [rejection] = result.rejections
    assert "Procedure.note[0].text" in rejection.reason
    assert rejection.outcome["issue"][0]["expression"] == ["Procedure.note[0].text"]
