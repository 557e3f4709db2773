"""Reads of the suggestion store, the live assessment, re-evaluation, tokens, readiness, metrics."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.recommender.offline import run
from services.server import Role, build_app
from shared.db.models import EvaluationQueue, utcnow
from shared.db.queue import mark_dirty
from shared.db.session import session_scope
from shared.settings import Settings
from tests.api.recommender.helpers import VIGNETTES, bundle, push, run_worker, vignette_now

V02 = "v02-two-concordant-blocks"


async def test_assessment_is_the_section3_document_from_stored_data(client: httpx.AsyncClient) -> None:
    await push(client, bundle(V02))
    now = vignette_now(V02).isoformat()
    r = await client.get("/patients/P-001/assessment", params={"now": now})
    assert r.status_code == 200
    offline = json.loads(run([VIGNETTES / V02 / "bundle.json"], "cms-lcd", now, "json")[0])
    assert r.json() == offline  # the same document `pinpoint evaluate` prints for the same data
    same = await client.get("/patients/default:P-001/assessment", params={"now": now})
    assert same.json() == offline


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/patients/nobody/assessment", 404, "not-found"),
        ("/patients/P-001/assessment?now=yesterday", 400, "value"),
        ("/suggestions/fhir/CarePlan/no-such-id", 404, "not-found"),
        ("/suggestions/fhir/Observation/x", 404, "not-found"),
        ("/suggestions/fhir/Patient?patient=P-001", 404, "not-found"),
        ("/suggestions/fhir/CarePlan?patient=:x", 400, "value"),
    ],
    ids=[
        "unknown-patient",
        "bad-now",
        "unknown-careplan",
        "not-a-suggestion-type",
        "search-other-type",
        "bad-patient",
    ],
)
async def test_errors_are_operation_outcomes(
    client: httpx.AsyncClient, path: str, status: int, code: str
) -> None:
    await push(client, bundle(V02))
    r = await client.get(path)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code


async def test_search_unknown_patient_is_an_empty_bundle(client: httpx.AsyncClient) -> None:
    r = await client.get("/suggestions/fhir/CarePlan", params={"patient": "P-404"})
    assert r.status_code == 200
    assert r.json()["total"] == 0 and r.json()["entry"] == []


async def test_reevaluate_all_marks_every_patient(client: httpx.AsyncClient, engine: Engine) -> None:
    await push(client, bundle(V02))
    await push(client, bundle("r12-two-patients"))
    with session_scope(engine) as s:
        s.exec(EvaluationQueue.__table__.delete())  # type: ignore[attr-defined,call-overload]
    r = await client.post("/admin/reevaluate")
    assert r.status_code == 202
    assert r.json()["issue"][0]["severity"] == "information"
    with Session(engine) as s:
        keys = sorted(q.patient_key for q in s.exec(select(EvaluationQueue)))
    assert len(keys) >= 3 and "default:P-001" in keys
    unknown = await client.post("/admin/reevaluate", json={"patient": "nobody"})
    assert unknown.status_code == 404
    bad = await client.post("/admin/reevaluate", json={"patients": ["x"]})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


async def test_tokens_guard_reads_and_admin(db_url: str, engine: Engine) -> None:
    settings = Settings(database_url=db_url, api_tokens=["reader"], admin_tokens=["boss"], _env_file=None)  # type: ignore[call-arg]
    app = build_app(settings, Role.all, engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint.test") as c:
        anon = await c.get("/suggestions/fhir/CarePlan", params={"patient": "P-001"})
        assert anon.status_code == 401 and anon.json()["resourceType"] == "OperationOutcome"
        reader = {"authorization": "Bearer reader"}
        assert (await c.get("/suggestions/fhir/CarePlan", headers=reader)).status_code == 200
        assert (await c.get("/patients/P-001/assessment")).status_code == 401
        assert (await c.post("/admin/reevaluate", headers=reader)).status_code == 403
        assert (
            await c.post("/admin/reevaluate", headers={"authorization": "Bearer boss"})
        ).status_code == 202


async def test_readiness_fails_when_the_queue_is_stuck(client: httpx.AsyncClient, engine: Engine) -> None:
    assert (await client.get("/readyz")).json()["checks"]["queue"] == "ok"
    with session_scope(engine) as s:
        mark_dirty(s, ["default:old"])
        row = s.get(EvaluationQueue, "default:old")
        assert row is not None
        row.dirty_since = utcnow() - timedelta(hours=2)  # over ready_max_queue_age (30 min)
        s.add(row)
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["queue"].startswith("stuck")
    with session_scope(engine) as s:  # a worker is on it: not stuck
        row = s.get(EvaluationQueue, "default:old")
        assert row is not None
        row.claimed_by, row.claimed_until = "w", utcnow() + timedelta(minutes=1)
        s.add(row)
    assert (await client.get("/readyz")).status_code == 200


async def test_metrics_show_queue_outbox_and_evaluations(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    await push(client, bundle(V02))
    text = (await client.get("/metrics")).text
    assert "pinpoint_queue_depth 1.0" in text
    run_worker(engine, settings, vignette_now(V02))
    text = (await client.get("/metrics")).text
    assert "pinpoint_queue_depth 0.0" in text
    assert 'pinpoint_outbox_depth{status="local"} 1.0' in text
    assert 'pinpoint_evaluations_total{outcome="stored"}' in text
    assert "P-001" not in text  # no patient data in metrics


async def test_suggestion_base_has_a_capability_statement(client: httpx.AsyncClient) -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    r = await client.get("/suggestions/fhir/metadata")
    assert r.status_code == 200
    body = r.json()
    CapabilityStatement.model_validate(body)
    assert [x["type"] for x in body["rest"][0]["resource"]] == [
        "CarePlan",
        "ServiceRequest",
        "Provenance",
        "DetectedIssue",
        "Observation",
    ]
