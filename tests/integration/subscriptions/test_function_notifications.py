"""Issue 19: a functional QuestionnaireResponse arriving by subscription notification — carried
in full, or named by id and read back from the source — is stored; another questionnaire is not."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from services.ingest.subscriptions.recovery import SubscriptionWorker
from tests.conftest import FIXTURES
from tests.fakes.fhir_server import FakeFhirServer
from tests.integration.subscriptions.conftest import inbox, patient, stored, topic_subscription


def odi_response(rid: str = "odi-1") -> dict[str, Any]:
    qr: dict[str, Any] = json.loads((FIXTURES / "function" / "pacio-odi-example2.json").read_text())
    qr["id"] = rid
    qr["subject"] = qr["author"] = {"reference": "Patient/p1"}
    return qr


def phq9() -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "phq9-1",
        "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/PHQ9Questionnaire",
        "subject": {"reference": "Patient/p1"},
        "authored": "2025-01-20T10:00:00Z",
        "item": [{"linkId": "phq9-1", "answer": [{"valueInteger": 2}]}],
    }


async def test_full_resource_notification_keeps_the_functional_response_only(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, engine: Engine
) -> None:
    sid = topic_subscription(fake, "full-resource")
    fake.put(patient())
    fake.put(odi_response())
    fake.put(phq9())
    for ref in ("Patient/p1", "QuestionnaireResponse/odi-1", "QuestionnaireResponse/phq9-1"):
        fake.emit_event(sid, ref)
    assert await fake.deliver(sid, pinpoint) == [200]
    kept = set(stored(engine))
    assert ("QuestionnaireResponse", "odi-1") in kept
    assert ("QuestionnaireResponse", "phq9-1") not in kept


async def test_id_only_notification_reads_the_response_back_from_the_source(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, worker: SubscriptionWorker, engine: Engine
) -> None:
    sid = topic_subscription(fake, "id-only")
    fake.put(patient())
    fake.put(odi_response("odi-2"))
    fake.emit_event(sid, "QuestionnaireResponse/odi-2")
    assert await fake.deliver(sid, pinpoint) == [200]
    assert [r.kind for r in inbox(engine)] == ["id-only"]
    await worker.run_once(reconcile=False)
    assert ("QuestionnaireResponse", "odi-2") in stored(engine)
