"""Push → worker → suggestions: whole CarePlan/ServiceRequest/Provenance documents, updates,
revocation, nothing rewritten when nothing changed, outbox, DetectedIssues (SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from shared.db.models import Assessment, AuditLog, EvaluationQueue, Outbox, Suggestion
from shared.db.queue import mark_dirty
from shared.db.session import session_scope
from shared.settings import ConfigFile, Settings, Source, Writeback
from tests.api.recommender.helpers import (
    assert_valid_r4,
    batch,
    bundle,
    push,
    run_worker,
    search,
    stable,
    vignette_now,
)

V02 = "v02-two-concordant-blocks"
PLAN_ID = "27381a71-22ef-5c1e-bd4a-04352d7766a7"
REQUEST_ID = "4d4a22ee-7643-5ca2-bb00-18adfb8c319b"
KEY = "default:P-001:facet-rfa:lumbar:right:L4-L5+L5-S1"
DEVICE = {
    "type": "Device",
    "identifier": {"system": "urn:pinpoint", "value": "pinpoint"},
    "display": "Pinpoint clinical decision support",
}
SUPPORTED_TEXT = (
    "Facet radiofrequency ablation at the right lumbar L4-L5, L5-S1 is supported: the "
    "policy's criteria are met. Met: 2 blocks, 85.7 % and 100 % relief (≥ 80 %) (LCD L38773). Next step: "
    "Lumbar facet radiofrequency ablation, first joint (CPT 64635)."
)
EXPECTED_PLAN = {
    "resourceType": "CarePlan",
    "id": PLAN_ID,
    "meta": {"versionId": "1", "lastUpdated": "<instant>"},
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>'
        + SUPPORTED_TEXT.replace("'", "&#x27;")
        + "</p></div>",
    },
    "identifier": [{"system": "urn:pinpoint:recommendation", "value": KEY}],
    "status": "draft",
    "intent": "proposal",
    "category": [
        {
            "coding": [
                {"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "code": "assess-plan"}
            ]
        }
    ],
    "title": "Facet radiofrequency ablation, right lumbar L4-L5, L5-S1: supported",
    "description": SUPPORTED_TEXT,
    "subject": {"reference": "Patient/P-001"},
    "author": DEVICE,
    "activity": [{"reference": {"reference": f"ServiceRequest/{REQUEST_ID}"}}],
    "note": [
        {
            "text": "Pinpoint policy cms-lcd version 2025.11-1; pathway facet-rfa; verdict supported; "
            "criterion: all criteria met."
        }
    ],
    "supportingInfo": [{"reference": "Procedure/mbb-1"}, {"reference": "Procedure/mbb-2"}],
}


def _site(joint: str) -> dict[str, Any]:
    return {
        "coding": [
            {"system": "urn:pinpoint:spinal-joint", "code": joint, "display": f"{joint} joint"},
            {"system": "http://snomed.info/sct", "code": "419465000", "display": "Unilateral right"},
        ],
        "text": f"Right {joint}",
    }


EXPECTED_REQUEST = {
    "resourceType": "ServiceRequest",
    "id": REQUEST_ID,
    "meta": {"versionId": "1", "lastUpdated": "<instant>"},
    "identifier": [{"system": "urn:pinpoint:recommendation", "value": f"{KEY}:request"}],
    "status": "draft",
    "intent": "proposal",
    "category": [
        {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "387713003", "display": "Surgical procedure"}
            ]
        }
    ],
    "code": {
        "coding": [
            {
                "system": "http://www.ama-assn.org/go/cpt",
                "code": "64635",
                "display": "Lumbar facet radiofrequency ablation, first joint",
            }
        ],
        "text": "Lumbar facet radiofrequency ablation, first joint",
    },
    "subject": {"reference": "Patient/P-001"},
    "requester": DEVICE,
    "bodySite": [_site("L4-L5"), _site("L5-S1")],
    "note": [{"text": SUPPORTED_TEXT}],
    "supportingInfo": [{"reference": "Procedure/mbb-1"}, {"reference": "Procedure/mbb-2"}],
}
EXPECTED_PROVENANCE = {
    "resourceType": "Provenance",
    "id": "715be9ea-43fc-5279-8abe-c3e3f1531fb8",
    "meta": {"versionId": "1", "lastUpdated": "<instant>"},
    "target": [
        {"reference": f"CarePlan/{PLAN_ID}/_history/1"},
        {"reference": f"ServiceRequest/{REQUEST_ID}/_history/1"},
    ],
    "recorded": "<instant>",
    "policy": ["urn:pinpoint:policy:cms-lcd|2025.11-1"],
    "activity": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}]
    },
    "agent": [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "code": "assembler",
                    }
                ]
            },
            "who": DEVICE,
        }
    ],
    "entity": [
        {"role": "source", "what": {"reference": "Procedure/mbb-1"}},
        {"role": "source", "what": {"reference": "Procedure/mbb-2"}},
    ],
}

RFA = {
    "resourceType": "Procedure",
    "id": "rfa-1",
    "status": "completed",
    "code": {
        "coding": [
            {"system": "http://www.ama-assn.org/go/cpt", "code": "64635"},
            {"system": "http://www.ama-assn.org/go/cpt", "code": "64636"},
        ],
        "text": "Lumbar facet radiofrequency ablation",
    },
    "subject": {"reference": "Patient/P-001"},
    "performedPeriod": {"start": "2025-03-17T09:00:00-05:00", "end": "2025-03-17T10:00:00-05:00"},
    "bodySite": [
        {
            "coding": [
                {"system": "urn:pinpoint:spinal-joint", "code": j},
                {"system": "http://snomed.info/sct", "code": "24028007", "display": "Right"},
            ],
            "text": f"Right {j}",
        }
        for j in ("L4-L5", "L5-S1")
    ],
}


def _counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        rows = list(s.exec(select(Suggestion)))
        out: dict[str, int] = {}
        for r in rows:
            out[r.resource_type] = out.get(r.resource_type, 0) + 1
        out["outbox"] = len(list(s.exec(select(Outbox))))
        out["queue"] = len(list(s.exec(select(EvaluationQueue))))
    return out


async def test_v02_pushed_evaluated_whole_documents(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    await push(client, bundle(V02))
    stats = run_worker(engine, settings, vignette_now(V02))
    assert (stats.stored, stats.failed) == (1, 0)

    plans = await search(client, "CarePlan")
    requests = await search(client, "ServiceRequest")
    provenances = await search(client, "Provenance")
    assert [stable(p) for p in plans] == [EXPECTED_PLAN]
    assert [stable(r) for r in requests] == [EXPECTED_REQUEST]
    assert [stable(p) for p in provenances] == [EXPECTED_PROVENANCE]
    assert await search(client, "DetectedIssue") == []
    for resource in (*plans, *requests, *provenances):
        assert_valid_r4(resource)

    read = await client.get(f"/suggestions/fhir/CarePlan/{PLAN_ID}")
    assert read.status_code == 200
    assert read.headers["etag"] == 'W/"1"'
    assert read.headers["content-type"].startswith("application/fhir+json")
    assert read.json() == plans[0]
    assert (await client.get(f"/suggestions/fhir/ServiceRequest/{REQUEST_ID}")).json() == requests[0]
    # the same patient named as source:id
    assert await search(client, "CarePlan", "default:P-001") == plans

    with Session(engine) as s:
        assessment = s.get(Assessment, KEY)
        outbox = list(s.exec(select(Outbox)))
    assert assessment is not None and assessment.verdict == "supported" and assessment.status == "current"
    assert [o.status for o in outbox] == ["local"]  # no write-back configured: nothing to send
    payload = outbox[0].payload or {}
    assert payload["action"] == "create"
    assert [r["resourceType"] for r in payload["resources"]] == ["ServiceRequest", "CarePlan", "Provenance"]
    assert _counts(engine)["queue"] == 0


async def test_nothing_rewritten_when_nothing_changed(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    await push(client, bundle(V02))
    now = vignette_now(V02)
    run_worker(engine, settings, now)
    before = _counts(engine)
    first = await search(client, "CarePlan")

    await push(client, bundle(V02))  # a re-delivery: unchanged resources, no dirty mark
    r = await client.post("/admin/reevaluate", json={"patient": "P-001"})
    assert r.status_code == 202
    stats = run_worker(engine, settings, now)
    assert stats.stored == 1  # evaluated again …
    assert _counts(engine) == before  # … and nothing written
    assert await search(client, "CarePlan") == first


async def test_later_block_updates_then_performed_rfa_revokes(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    now = vignette_now(V02)
    await push(client, bundle("v01-one-block-only"))
    run_worker(engine, settings, now)
    (plan,) = await search(client, "CarePlan")
    assert plan["id"] == PLAN_ID
    assert plan["meta"]["versionId"] == "1"
    assert plan["title"].endswith(": not-met")
    assert "a second positive confirmatory block at the same joints is required" in plan["description"]
    (request,) = await search(client, "ServiceRequest")
    assert "doNotPerform" not in request
    assert request["code"]["coding"][0]["code"] == "64493"  # the next step: a confirmatory block

    await push(client, bundle(V02))  # the second block arrives: the verdict changes
    run_worker(engine, settings, now)
    (plan,) = await search(client, "CarePlan")
    assert plan["id"] == PLAN_ID
    assert plan["meta"]["versionId"] == "2"
    assert stable(plan) == {**EXPECTED_PLAN, "meta": {"versionId": "2", "lastUpdated": "<instant>"}}
    (request,) = await search(client, "ServiceRequest")
    assert "doNotPerform" not in request and request["meta"]["versionId"] == "2"
    provenances = {p["target"][0]["reference"]: p for p in await search(client, "Provenance")}
    update = provenances[f"CarePlan/{PLAN_ID}/_history/2"]
    assert update["activity"]["coding"][0]["code"] == "UPDATE"
    assert_valid_r4(update)

    await push(client, batch(RFA))  # the ablation was done: the suggestion no longer stands
    run_worker(engine, settings, now + timedelta(days=10))
    plans = {p["id"]: p for p in await search(client, "CarePlan")}
    revoked = plans[PLAN_ID]
    assert revoked["status"] == "revoked"
    assert revoked["meta"]["versionId"] == "3"
    assert revoked["description"].startswith("Withdrawn:")
    requests = {r["id"]: r for r in await search(client, "ServiceRequest")}
    assert requests[REQUEST_ID]["status"] == "revoked"
    for resource in (*plans.values(), *requests.values()):
        assert_valid_r4(resource)
    # any new assessment (the repeat-RFA pathway) is a different CarePlan, still a draft
    assert all(p["status"] == "draft" for pid, p in plans.items() if pid != PLAN_ID)
    with Session(engine) as s:
        row = s.get(Assessment, KEY)
        actions = [o.payload["action"] for o in s.exec(select(Outbox).order_by(Outbox.id)) if o.payload]
    assert row is not None and row.status == "revoked"
    assert actions[:3] == ["create", "update", "revoke"] or sorted(actions[2:]) == sorted(
        ["revoke", *["create"] * (len(actions) - 3)]
    )
    assert "revoke" in actions


async def test_alert_becomes_detected_issue_with_evidence(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    name = "v05-sedation-confirmatory-block"
    await push(client, bundle(name))
    run_worker(engine, settings, vignette_now(name))
    issues = await search(client, "DetectedIssue")
    sedation = [i for i in issues if i["code"]["coding"][0]["code"] == "sedation"]
    assert len(sedation) == 1
    issue = sedation[0]
    assert issue["status"] == "final"
    assert issue["patient"] == {"reference": "Patient/P-001"}
    refs = [d["reference"] for e in issue.get("evidence", []) for d in e["detail"]]
    assert refs and all(
        r.startswith(("Procedure/", "MedicationAdministration/", "Observation/")) for r in refs
    )
    assert_valid_r4(issue)
    (plan,) = await search(client, "CarePlan")
    assert "sedation" in plan["description"]


async def test_mark_during_evaluation_is_not_lost(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    from services.recommender.assessor import Assessor
    from services.recommender.worker import Worker

    await push(client, bundle("v01-one-block-only"))
    worker = Worker(engine, settings, Assessor.load("cms-lcd"))
    (claim,) = worker.claim()
    with session_scope(engine) as s:  # new data for the patient arrives mid-evaluation
        mark_dirty(s, ["default:P-001"])
    assert worker.process(claim, vignette_now(V02)) == "superseded"
    with Session(engine) as s:
        row = s.get(EvaluationQueue, "default:P-001")
        assert row is not None and row.claimed_by is None and row.generation == claim.generation + 1
        assert list(s.exec(select(Suggestion))) == []  # stale results were not stored
    stats = worker.drain(now=vignette_now(V02))
    assert stats.stored == 1
    assert _counts(engine)["queue"] == 0


async def test_claimed_patient_is_not_taken_until_claim_expires(engine: Engine, settings: Settings) -> None:
    from services.recommender.assessor import Assessor
    from services.recommender.worker import Worker

    with session_scope(engine) as s:
        mark_dirty(s, ["default:A", "default:B"])
    evaluator = Assessor.load("cms-lcd")
    first = Worker(engine, settings, evaluator, ident="w1")
    second = Worker(engine, settings, evaluator, ident="w2")
    assert [c.patient_key for c in first.claim()] == ["default:A", "default:B"]
    assert second.claim() == []
    later = datetime.now().astimezone() + settings.claim_ttl + timedelta(seconds=1)
    second.clock = lambda: later  # w1 crashed: its claims expired
    taken = second.claim()
    assert [c.patient_key for c in taken] == ["default:A", "default:B"]
    assert [second.process(c) for c in taken] == ["stored", "stored"]
    assert [first.process(c) for c in taken] == ["lost", "lost"]  # w1 wakes up: nothing to store
    with Session(engine) as s:
        assert list(s.exec(select(EvaluationQueue))) == []
        actors = {a.actor for a in s.exec(select(AuditLog).where(AuditLog.action == "evaluate"))}
    assert actors == {"worker:w2"}


async def test_writeback_configured_outbox_pending(
    client: httpx.AsyncClient, engine: Engine, db_url: str
) -> None:
    settings = Settings(
        database_url=db_url,
        config=ConfigFile(
            sources=[Source(id="hospital", fhir_base_url="https://fhir.example/R4")],  # type: ignore[arg-type]
            writeback=Writeback(source="hospital"),
        ),
        _env_file=None,  # type: ignore[call-arg]
    )
    await push(client, bundle(V02))
    run_worker(engine, settings, vignette_now(V02))
    with Session(engine) as s:
        statuses = [o.status for o in s.exec(select(Outbox))]
    assert statuses == ["pending"]


async def test_a_failing_patient_backs_off_alone(engine: Engine, settings: Settings) -> None:
    from services.recommender.assessor import Assessor
    from services.recommender.worker import Worker

    class Flaky(Assessor):
        def entry(self, facts: Any, patient_ref: str, now: datetime, ctx: Any = None) -> dict[str, Any]:
            if patient_ref == "Patient/bad":
                raise ValueError("cannot evaluate")
            return super().entry(facts, patient_ref, now, ctx)

    with session_scope(engine) as s:
        mark_dirty(s, ["default:bad", "default:good"])
    worker = Worker(engine, settings, Flaky(Assessor.load("cms-lcd").policy))
    stats = worker.drain()
    assert (stats.stored, stats.failed) == (1, 1)
    with Session(engine) as s:
        (row,) = list(s.exec(select(EvaluationQueue)))
    assert row.patient_key == "default:bad"  # the mark is kept …
    assert row.attempts == 1 and row.last_error == "ValueError: cannot evaluate"
    assert row.claimed_by is None and row.claimed_until is not None  # … and retried after a back-off
    assert worker.drain().evaluated == 0
