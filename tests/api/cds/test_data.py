"""Data for a hook: prefetch (full / partial / null / OperationOutcome / paged), fetch from an
allow-listed fhirServer only, stored facts in the right id space, 412 vs {"cards": []}."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa

from services.ingest.intake.repository import Prepared, store_resources
from services.recommender.cds_hooks.data import Admission
from services.recommender.cds_hooks.discovery import PREFETCH
from shared.db.models import AuditLog
from shared.db.session import session_scope
from tests.api.cds.conftest import SOURCE_BASE, CdsApp


def _prepared(resource: dict[str, Any], patient_key: str) -> Prepared:
    """A resource as ingest stores it (tests seed the store without the HTTP path)."""
    return Prepared(resource["resourceType"], resource["id"], resource, patient_key)


PV = "/cds-services/pinpoint-patient-view"
TOKEN = "user-token-6f1c2b"


def proc(pid: str, rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "status": "completed",
        "subject": {"reference": f"Patient/{pid}"},
        **extra,
    }


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def call(
    pid: str = "p1", prefetch: dict[str, Any] | None = None, server: str | None = None, token: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/u1", "patientId": pid},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    if server:
        body["fhirServer"] = server
    if token:
        body["fhirAuthorization"] = {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 30,
            "scope": "user/Procedure.read",
            "subject": "pinpoint",
        }
    return body


def store(app: CdsApp, source: str, resource: dict[str, Any], pid: str = "p1") -> None:
    with session_scope(app.engine) as session:
        store_resources(session, source, [_prepared(resource, f"{source}:{pid}")])


def fake_fhir(
    mock: respx.MockRouter, data: dict[str, list[dict[str, Any]]], seen: list[httpx.Request]
) -> None:
    """An allow-listed FHIR server: searches by type, reads Patient; records every request."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path.removeprefix("/R4/")
        if "/" in path:
            rtype, rid = path.split("/")
            found = [r for r in data.get(rtype, []) if r["id"] == rid]
            return (
                httpx.Response(200, json=found[0])
                if found
                else httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
            )
        return httpx.Response(200, json=searchset(*data.get(path, [])))

    mock.route(host="fhir.hospital-a.example").mock(side_effect=handler)


async def test_full_prefetch_is_used_without_any_fetch(cds: CdsApp) -> None:
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "procedures": searchset(proc("p1", "mbb-1")),
        "observations": searchset(),
        "conditions": searchset(),
        "medications": None,
        "medicationStatements": None,
        "medicationRequests": searchset(),
        "questionnaireResponses": searchset(),
    }
    with respx.mock(assert_all_mocked=True) as mock:
        r = await cds.client.post(PV, json=call(prefetch=prefetch, server=SOURCE_BASE, token=True))
    assert r.status_code == 200 and r.json() == {"cards": []}
    assert mock.calls.call_count == 0
    assert cds.assessor.ids() == {"Patient/p1", "Procedure/mbb-1"}


async def test_missing_and_failed_keys_are_fetched_from_an_allow_listed_server_with_the_token(
    cds: CdsApp,
) -> None:
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "procedures": {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "timeout"}],
        },
        "conditions": None,
    }
    seen: list[httpx.Request] = []
    with respx.mock(assert_all_mocked=True) as mock:
        fake_fhir(
            mock,
            {
                "Procedure": [proc("p1", "mbb-9")],
                "Observation": [
                    {
                        "resourceType": "Observation",
                        "id": "o1",
                        "status": "final",
                        "subject": {"reference": "Patient/p1"},
                    }
                ],
            },
            seen,
        )
        r = await cds.client.post(PV, json=call(prefetch=prefetch, server=SOURCE_BASE + "/", token=True))
    assert r.status_code == 200
    fetched = sorted(req.url.path for req in seen)
    # patient and conditions were answered by the client (conditions: null = no data): not refetched
    assert fetched == [
        "/R4/MedicationAdministration",
        "/R4/MedicationRequest",
        "/R4/MedicationStatement",
        "/R4/Observation",
        "/R4/Procedure",
        "/R4/QuestionnaireResponse",
    ]
    assert all(req.headers["authorization"] == f"Bearer {TOKEN}" for req in seen)
    obs = next(req for req in seen if req.url.path.endswith("Observation"))
    assert obs.url.params["patient"] == "p1"
    codes = obs.url.params["code"].split(",")
    assert codes[:3] == ["http://loinc.org|72514-3", "http://loinc.org|38208-5", "http://loinc.org|38214-3"]
    assert "http://loinc.org|97909-6" in codes  # ODI total: function scores come too (issue 19)
    qr = next(req for req in seen if req.url.path.endswith("QuestionnaireResponse"))
    assert qr.url.params["patient"] == "p1" and qr.url.params["status"] == "completed,amended"
    assert cds.assessor.ids() == {"Patient/p1", "Procedure/mbb-9", "Observation/o1"}


async def test_paged_prefetch_is_completed_from_the_server(cds: CdsApp) -> None:
    prefetch = {
        k: None
        for k in (
            "patient",
            "observations",
            "conditions",
            "medications",
            "medicationStatements",
            "medicationRequests",
            "questionnaireResponses",
        )
    }
    prefetch["procedures"] = searchset(proc("p1", "a"), next_url=SOURCE_BASE + "/Procedure?page=2")
    seen: list[httpx.Request] = []
    with respx.mock(assert_all_mocked=True) as mock:
        fake_fhir(mock, {"Procedure": [proc("p1", "a"), proc("p1", "b")]}, seen)
        r = await cds.client.post(PV, json=call(prefetch=prefetch, server=SOURCE_BASE, token=True))
    assert r.status_code == 200
    assert [req.url.path for req in seen] == ["/R4/Procedure"]
    assert cds.assessor.ids() == {"Procedure/a", "Procedure/b"}


async def test_paged_prefetch_without_a_usable_server_keeps_the_first_page(cds: CdsApp) -> None:
    prefetch = {
        "procedures": searchset(proc("p1", "a"), next_url="https://public.example/fhir/Procedure?page=2")
    }
    with respx.mock(assert_all_mocked=True) as mock:
        r = await cds.client.post(
            PV, json=call(prefetch=prefetch, server="https://public.example/fhir", token=True)
        )
    assert r.status_code == 200
    assert mock.calls.call_count == 0
    assert cds.assessor.ids() == {"Procedure/a"}


async def test_a_non_listed_fhir_server_is_never_called(cds: CdsApp) -> None:
    store(cds, "default", proc("p1", "stored-1"))
    with respx.mock(assert_all_mocked=True) as mock:
        r = await cds.client.post(
            PV, json=call(server="https://fhir.hospital-a.example.evil.com/R4", token=True)
        )
        r2 = await cds.client.post(PV, json=call(server="https://fhir.hospital-a.example/other", token=True))
    assert mock.calls.call_count == 0
    assert r.status_code == r2.status_code == 200
    assert cds.assessor.ids() == {"Procedure/stored-1"}


async def test_no_source_at_all_is_412(cds: CdsApp) -> None:
    r = await cds.client.post(PV, json=call())
    assert r.status_code == 412
    assert r.json()["issue"][0]["code"] == "processing"
    assert cds.assessor.seen == []


async def test_all_null_prefetch_is_an_empty_answer_not_412(cds: CdsApp) -> None:
    r = await cds.client.post(PV, json=call(prefetch={"procedures": None}))
    assert r.status_code == 200 and r.json() == {"cards": []}


async def test_allow_listed_server_down_and_nothing_else_is_412(cds: CdsApp) -> None:
    with respx.mock(assert_all_mocked=True) as mock:
        mock.route(host="fhir.hospital-a.example").respond(500)
        r = await cds.client.post(PV, json=call(server=SOURCE_BASE, token=True))
    assert r.status_code == 412


async def test_allow_listed_server_holding_nothing_is_empty_cards(cds: CdsApp) -> None:
    with respx.mock(assert_all_mocked=True) as mock:
        fake_fhir(mock, {}, [])
        r = await cds.client.post(PV, json=call(server=SOURCE_BASE, token=True))
    assert r.status_code == 200 and r.json() == {"cards": []}


async def test_stored_facts_are_merged_and_the_ehr_version_wins(cds: CdsApp) -> None:
    store(cds, "hospital-a", proc("p1", "mbb-1", note=[{"text": "stored"}]))
    store(cds, "hospital-a", proc("p1", "mbb-0"))
    store(cds, "default", proc("p1", "other-space"))
    prefetch = {"procedures": searchset(proc("p1", "mbb-1", note=[{"text": "ehr"}]))}
    seen: list[httpx.Request] = []
    with respx.mock(assert_all_mocked=True) as mock:
        fake_fhir(mock, {}, seen)  # an open source: the missing keys are read without a token
        r = await cds.client.post(PV, json=call(prefetch=prefetch, server=SOURCE_BASE))
    assert r.status_code == 200
    assert len(seen) == len(PREFETCH) - 1 and all("authorization" not in q.headers for q in seen)
    assert cds.assessor.ids() == {"Procedure/mbb-1", "Procedure/mbb-0"}
    mbb1 = next(r for r in cds.assessor.seen[-1] if r["id"] == "mbb-1")
    assert mbb1["note"] == [{"text": "ehr"}]


async def test_the_stored_read_leaves_its_pooled_connection_transactional(cds: CdsApp) -> None:
    """The read runs in autocommit on the driver's connection; the next user of that pooled
    connection gets transactions again: a write it rolls back is not kept."""
    store(cds, "default", proc("p1", "d-0"))
    r = await cds.client.post(PV, json=call())
    assert r.status_code == 200 and cds.assessor.ids() == {"Procedure/d-0"}
    audit = AuditLog.__table__  # type: ignore[attr-defined]
    with cds.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar_one()
        conn.commit()
        conn.execute(
            sa.insert(audit), {"at": datetime.now(UTC), "actor": "t", "action": "probe", "detail": {}}
        )
        conn.rollback()
        after = conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar_one()
    assert after == before


async def test_stored_facts_alone_answer_in_the_default_id_space(cds: CdsApp) -> None:
    store(cds, "default", proc("p1", "d-1"))
    store(cds, "hospital-b", proc("p1", "b-1"))
    r = await cds.client.post(PV, json=call())
    assert r.status_code == 200
    assert cds.assessor.ids() == {"Procedure/d-1"}


async def test_cds_source_sets_the_id_space_when_fhir_server_is_not_a_source(cds_with_source: CdsApp) -> None:
    app = cds_with_source
    store(app, "default", proc("p1", "d-1"))
    store(app, "hospital-b", proc("p1", "b-1"))
    with respx.mock(assert_all_mocked=True):
        r = await app.client.post(PV, json=call(server="https://unknown.example/fhir", token=True))
    assert r.status_code == 200
    assert app.assessor.ids() == {"Procedure/b-1"}
    # ... and the evidence link carries that id space
    app.assessor.patients = [
        {
            "patient": "Patient/p1",
            "assessments": [],
            "orderChecks": [],
            "alerts": [{"code": "sedation", "severity": "warning", "text": "t"}],
        }
    ]
    r = await app.client.post(PV, json=call())
    card = r.json()["cards"][0]["uuid"]
    assert r.json()["cards"][0]["links"][0]["url"].startswith(
        f"https://pinpoint.example/evidence/cards/{card}?exp="
    )
    await app.parts.cds.snapshots.flush()
    with app.engine.connect() as conn:  # ... and the card's evidence snapshot is that patient's
        keys = conn.execute(sa.text("SELECT patient_key FROM evidence_snapshot WHERE card = :c"), {"c": card})
        assert keys.scalars().all() == ["hospital-b:p1"]


async def test_pinpoint_own_proposals_are_never_input(cds: CdsApp) -> None:
    ours = {
        "resourceType": "ServiceRequest",
        "id": "s1",
        "status": "draft",
        "intent": "proposal",
        "identifier": [{"system": "urn:pinpoint:recommendation", "value": "x"}],
        "subject": {"reference": "Patient/p1"},
    }
    r = await cds.client.post(PV, json=call(prefetch={"procedures": searchset(ours, proc("p1", "a"))}))
    assert r.status_code == 200
    assert cds.assessor.ids() == {"Procedure/a"}


async def test_access_token_is_never_logged_nor_stored(
    cds: CdsApp, capsys: pytest.CaptureFixture[str]
) -> None:
    with respx.mock(assert_all_mocked=True) as mock:
        fake_fhir(mock, {"Procedure": [proc("p1", "x")]}, [])
        r = await cds.client.post(PV, json=call(server=SOURCE_BASE, token=True))
        mock.route(host="fhir.hospital-a.example").respond(500)
        await cds.client.post(PV, json=call(server=SOURCE_BASE, token=True))
    assert r.status_code == 200
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    with cds.engine.connect() as conn:
        dump = " ".join(
            str(row)
            for t in ("audit_log", "dead_letter", "resource")
            for row in conn.execute(sa.text(f"SELECT * FROM {t}"))
        )
    assert TOKEN not in dump


async def test_every_call_is_audited_with_ids_and_counts(cds: CdsApp) -> None:
    cds.assessor.patients = [
        {
            "patient": "Patient/p1",
            "assessments": [],
            "orderChecks": [],
            "alerts": [{"code": "sedation", "severity": "warning", "text": "t"}],
        }
    ]
    body = call(prefetch={"procedures": None})
    assert (await cds.client.post(PV, json=body)).status_code == 200
    assert (await cds.client.post(PV, json=call())).status_code == 412
    await cds.parts.cds.audit.flush()  # answers leave before their audit commit
    with cds.engine.connect() as conn:
        rows = conn.execute(sa.select(AuditLog.__table__).order_by(AuditLog.__table__.c.id)).mappings().all()  # type: ignore[attr-defined]
    calls = [r for r in rows if r["action"] == "cds.call"]
    assert [(c["actor"], c["target"], c["detail"]["status"], c["detail"]["cards"]) for c in calls] == [
        ("anonymous", "default:p1", 200, 1),
        ("anonymous", "default:p1", 412, 0),
    ]
    assert calls[0]["detail"]["hookInstance"] == body["hookInstance"]
    assert calls[0]["detail"]["ms"] >= 0
    cards = [r for r in rows if r["action"] == "cds.card"]
    assert [c["detail"]["pathway"] for c in cards] == ["alert:sedation"]


async def test_a_slow_server_is_cut_at_the_fetch_deadline(
    cds: CdsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from services.recommender.cds_hooks import data

    monkeypatch.setattr(data, "FETCH_DEADLINE", 0.2)

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Procedure"):
            await asyncio.sleep(5)
        return httpx.Response(
            200, json=searchset(proc("p1", "fast")) if "Condition" in request.url.path else searchset()
        )

    with respx.mock(assert_all_mocked=True) as mock:
        mock.route(host="fhir.hospital-a.example").mock(side_effect=slow)
        started = asyncio.get_running_loop().time()
        r = await cds.client.post(PV, json=call(server=SOURCE_BASE, token=True))
        elapsed = asyncio.get_running_loop().time() - started
    assert r.status_code == 200
    assert elapsed < 2
    assert cds.assessor.ids() == {"Procedure/fast"}


# --- data completeness (issue 17) ------------------------------------------------------------


async def test_absent_keys_are_read_with_the_sources_own_credential_when_no_fhir_authorization(
    cds: CdsApp,
) -> None:
    from shared.settings import OutboundAuth

    settings = cds.settings
    sources = [
        s.model_copy(update={"outbound": OutboundAuth(bearer="source-secret")}) if s.id == "hospital-a" else s  # type: ignore[arg-type]
        for s in settings.config.sources
    ]
    cds.parts.cds.settings = settings.model_copy(
        update={"config": settings.config.model_copy(update={"sources": sources})}
    )
    seen: list[httpx.Request] = []
    with respx.mock(assert_all_mocked=True) as mock:
        fake_fhir(mock, {"Procedure": [proc("p1", "x")]}, seen)
        r = await cds.client.post(PV, json=call(server=SOURCE_BASE))  # no fhirAuthorization
    assert r.status_code == 200
    assert len(seen) == len(PREFETCH) and {q.headers["authorization"] for q in seen} == {
        "Bearer source-secret"
    }
    assert cds.assessor.ids() == {"Procedure/x"}
    assert cds.assessor.unavailable[-1] == frozenset()  # everything was retrieved


async def test_the_412_says_which_source_failed_and_why_and_is_logged(
    cds: CdsApp, capsys: pytest.CaptureFixture[str]
) -> None:
    with respx.mock(assert_all_mocked=True) as mock:
        mock.route(host="fhir.hospital-a.example").respond(503)
        r = await cds.client.post(PV, json=call(server=SOURCE_BASE))
    assert r.status_code == 412
    text = r.json()["issue"][0]["diagnostics"]
    assert "prefetch: the request has no prefetch" in text
    assert "fhirServer: reading hospital-a without a token failed (patient: the server answered 503" in text
    assert "store: Pinpoint stores nothing for this patient (source hospital-a)" in text
    r2 = await cds.client.post(PV, json=call(server="https://elsewhere.example/fhir"))
    assert r2.status_code == 412
    assert (
        "fhirServer is not the fhir_base_url of a configured source" in r2.json()["issue"][0]["diagnostics"]
    )
    logged = capsys.readouterr()
    logs = logged.out + logged.err
    assert "cds.fetch.failed" in logs and "status=503" in logs
    assert "cds.fetch.refused" in logs and "fhir-server-not-a-source" in logs
    assert logs.count("cds.no_data") == 2
    assert "p1" not in logs  # no patient id in any line


async def test_what_could_not_be_retrieved_is_named_to_the_engine(cds: CdsApp) -> None:
    prefetch = {"procedures": searchset(proc("p1", "a")), "patient": None}
    with respx.mock(assert_all_mocked=True) as mock:
        mock.route(host="fhir.hospital-a.example", path__startswith="/R4/Observation").respond(503)
        fake_fhir(mock, {}, [])
        r = await cds.client.post(PV, json=call(prefetch=prefetch, server=SOURCE_BASE))
    assert r.status_code == 200
    assert cds.assessor.unavailable[-1] == frozenset({"pain-scores", "function-scores"})
    # stored data for the patient counts as available (Pinpoint keeps the EHR's data itself)
    store(cds, "hospital-a", proc("p1", "stored"))
    with respx.mock(assert_all_mocked=True) as mock:
        mock.route(host="fhir.hospital-a.example").respond(503)
        r = await cds.client.post(PV, json=call(prefetch=prefetch, server=SOURCE_BASE))
    assert r.status_code == 200 and cds.assessor.unavailable[-1] == frozenset()


async def test_a_call_waiting_for_a_slow_fhir_server_holds_no_other_call_up(cds: CdsApp) -> None:
    """Calls working on a parsed prefetch are bounded (``Admission``); one waiting for an EHR's
    fhirServer gives its place back: with a single place, a prefetch-only call is answered while
    the other's fetch hangs, and the hanging one is answered once its server answers."""
    cds.parts.cds.admission = Admission(1)
    release = asyncio.Event()
    fetching = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        fetching.set()
        await release.wait()
        return httpx.Response(200, json=searchset())

    with respx.mock(assert_all_mocked=True) as mock:
        mock.route(host="fhir.hospital-a.example").mock(side_effect=slow)
        waiting = asyncio.ensure_future(cds.client.post(PV, json=call(server=SOURCE_BASE, token=True)))
        await asyncio.wait_for(fetching.wait(), 5)
        quick = await asyncio.wait_for(
            cds.client.post(PV, json=call(prefetch={"procedures": searchset(proc("p1", "q-1"))})), 5
        )
        assert quick.status_code == 200 and not waiting.done()
        release.set()
        slow_answer = await asyncio.wait_for(waiting, 5)
    assert slow_answer.status_code == 200
