"""Write-back against the fake FHIR server on loopback (SQLite and PostgreSQL): transactions with
conditional create / If-Match update, exactly once in effect under faults, order per patient,
revocation, parking and replay, R5 output."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from shared.db.models import DeadLetter, Outbox
from shared.fhir.resources import validate_r5
from shared.settings import Settings
from tests.api.recommender.helpers import assert_valid_r4
from tests.api.recommender.test_worker_suggestions import RFA
from tests.fakes.fhir_server import FakeFhirServer, Fault, LiveServer
from tests.integration.writeback.helpers import (
    KEY,
    SOURCE,
    V01,
    V02,
    Clock,
    app_client,
    by_identifier,
    deliver,
    evaluate,
    outbox,
    push,
    suggestion,
    transactions,
    vignette,
    vignette_now,
    wb_settings,
)

ADMIN = {"authorization": "Bearer admin-token"}


async def _evaluated(settings: Settings, engine: Engine, name: str = V02) -> None:
    async with await app_client(settings, engine) as client:
        await push(client, vignette(name))
    evaluate(engine, settings, vignette_now(V02))


async def test_a_change_is_delivered_once_as_one_transaction(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)
    await _evaluated(settings, engine)

    stats = await deliver(engine, settings)
    assert stats.sent == 1 and stats.handled == 1
    (tx,) = transactions(fake)
    assert tx["type"] == "transaction"
    requests = [(e["request"]["method"], e["request"]["url"].split("?")[0]) for e in tx["entry"]]
    assert requests == [("POST", "ServiceRequest"), ("POST", "CarePlan"), ("POST", "Provenance")]
    plan_entry = tx["entry"][1]
    assert plan_entry["request"]["ifNoneExist"] == (
        "identifier=urn%3Apinpoint%3Arecommendation%7Chosp%3AP-001%3Afacet-rfa%3Alumbar%3Aright%3AL4-L5%2BL5-S1"
    )
    assert plan_entry["fullUrl"].startswith("urn:uuid:")

    (plan,) = by_identifier(fake, "CarePlan", KEY)
    (request,) = by_identifier(fake, "ServiceRequest", f"{KEY}:request")
    (prov,) = fake.all("Provenance")
    assert plan["status"] == "draft" and plan["intent"] == "proposal"
    assert plan["subject"] == {"reference": "Patient/P-001"}
    assert plan["activity"] == [{"reference": {"reference": f"ServiceRequest/{request['id']}"}}]
    assert sorted(t["reference"] for t in prov["target"]) == sorted(
        [f"CarePlan/{plan['id']}", f"ServiceRequest/{request['id']}"]
    )
    for resource in (plan, request, prov):
        assert_valid_r4(resource)

    row = suggestion(engine, "CarePlan", KEY)
    assert (row.remote_id, row.remote_version) == (plan["id"], "1")
    assert suggestion(engine, "ServiceRequest", f"{KEY}:request").remote_id == request["id"]
    (entry,) = outbox(engine)
    assert entry.status == "sent" and entry.delivered_at is not None and entry.attempts == 1

    # nothing due: nothing sent again; an unchanged re-evaluation writes nothing either
    fake.clear_requests()
    assert (await deliver(engine, settings)).handled == 0
    evaluate(engine, settings, vignette_now(V02))
    assert (await deliver(engine, settings)).handled == 0
    assert fake.requests == []


async def test_update_uses_if_match_and_a_revoked_suggestion_reaches_the_server_revoked(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)
    await _evaluated(settings, engine, V01)  # one block only: not-met
    await deliver(engine, settings)
    (plan,) = by_identifier(fake, "CarePlan", KEY)
    assert plan["title"].endswith(": not-met")

    await _evaluated(settings, engine, V02)  # the second block: supported (an update)
    fake.clear_requests()
    assert (await deliver(engine, settings)).sent == 1
    (tx,) = transactions(fake)
    methods = [(e["request"]["method"], e["request"].get("ifMatch")) for e in tx["entry"]]
    assert methods == [("PUT", 'W/"1"'), ("PUT", 'W/"1"'), ("POST", None)]
    (plan2,) = by_identifier(fake, "CarePlan", KEY)
    assert plan2["id"] == plan["id"] and plan2["meta"]["versionId"] == "2"
    assert plan2["title"].endswith(": supported")
    assert suggestion(engine, "CarePlan", KEY).remote_version == "2"

    async with await app_client(settings, engine) as client:
        await push(client, {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": RFA}]})
    evaluate(engine, settings, vignette_now(V02) + timedelta(days=10))
    await deliver(engine, settings)
    (plan3,) = by_identifier(fake, "CarePlan", KEY)
    (request3,) = by_identifier(fake, "ServiceRequest", f"{KEY}:request")
    assert plan3["id"] == plan["id"]
    assert plan3["status"] == "revoked" and plan3["meta"]["versionId"] == "3"
    assert request3["status"] == "revoked"
    assert plan3["description"].startswith("Withdrawn:")
    assert len(by_identifier(fake, "CarePlan", KEY)) == 1
    assert all(e.status == "sent" for e in outbox(engine))


async def test_500_429_and_timeout_then_success_deliver_exactly_once(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live, timeout="1s", backoff="2s")
    await _evaluated(settings, engine)
    clock = Clock()
    fake.inject("POST", "", Fault.error(500), Fault.throttle("7"), Fault.slow(2.5))

    assert (await deliver(engine, settings, clock)).retry == 1  # 500
    (entry,) = outbox(engine)
    assert entry.attempts == 1 and entry.last_error and entry.last_error.startswith("500")
    delay = (entry.next_attempt_at - clock.now).total_seconds()
    assert 0 <= delay <= 2  # full jitter over the first backoff
    assert (await deliver(engine, settings, clock)).handled == 0  # not due yet
    clock.advance(delay)

    assert (await deliver(engine, settings, clock)).retry == 1  # 429, Retry-After: 7
    (entry,) = outbox(engine)
    assert (entry.next_attempt_at - clock.now).total_seconds() == 7
    clock.advance(7)

    assert (await deliver(engine, settings, clock)).retry == 1  # the client times out …
    (entry,) = outbox(engine)
    assert entry.last_error and entry.last_error.startswith("timeout")
    for _ in range(50):  # … while the server still applies the transaction
        if [r for r in fake.requests_to("POST", "") if r.status == 200]:
            break
        await asyncio.sleep(0.1)
    clock.advance(3600)

    assert (await deliver(engine, settings, clock)).sent == 1  # probes: already there
    (plan,) = by_identifier(fake, "CarePlan", KEY)
    assert plan["meta"]["versionId"] == "1"
    assert len(by_identifier(fake, "ServiceRequest", f"{KEY}:request")) == 1
    assert len(fake.all("Provenance")) == 1
    (entry,) = outbox(engine)
    assert entry.status == "sent" and entry.attempts == 4
    assert suggestion(engine, "CarePlan", KEY).remote_id == plan["id"]


async def test_outage_never_blocks_evaluation_and_the_outbox_drains_in_order(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)
    fake.inject("POST", "", *[Fault.error(503)] * 3)
    await _evaluated(settings, engine, V01)
    clock = Clock()
    assert (await deliver(engine, settings, clock)).retry == 1
    await _evaluated(settings, engine, V02)  # evaluation goes on during the outage
    entries = outbox(engine)
    assert [e.payload["action"] for e in entries if e.payload] == ["create", "update"]
    clock.advance(1)
    stats = await deliver(engine, settings, clock)
    assert stats.retry == 1 and stats.sent == 0  # only the first entry was tried
    assert [e.attempts for e in outbox(engine)] == [2, 0]
    clock.advance(1)
    assert (await deliver(engine, settings, clock)).retry == 1  # the last injected 503

    fake.clear_requests()
    clock.advance(1)
    stats = await deliver(engine, settings, clock)  # the server is back
    assert stats.sent == 2
    first, second = transactions(fake)
    assert {e["request"]["method"] for e in first["entry"]} == {"POST"}
    assert [e["request"].get("ifMatch") for e in second["entry"]][:2] == ['W/"1"', 'W/"1"']
    (plan,) = by_identifier(fake, "CarePlan", KEY)
    assert plan["meta"]["versionId"] == "2" and plan["title"].endswith(": supported")


async def test_version_conflict_rereads_and_retries(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)
    await _evaluated(settings, engine, V01)
    await deliver(engine, settings)
    (plan,) = by_identifier(fake, "CarePlan", KEY)
    fake.put({**plan, "note": [{"text": "a clinician's note"}]})  # someone else made version 2

    await _evaluated(settings, engine, V02)
    fake.clear_requests()
    assert (await deliver(engine, settings)).sent == 1
    statuses = [r.status for r in fake.requests_to("POST", "")]
    assert statuses == [412, 200]
    (plan,) = by_identifier(fake, "CarePlan", KEY)
    assert plan["meta"]["versionId"] == "3" and plan["title"].endswith(": supported")
    assert suggestion(engine, "CarePlan", KEY).remote_version == "3"


async def test_parked_after_max_attempts_then_replayed_and_delivered(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live, source={"open": True}, max_attempts=2).model_copy(
        update={"admin_tokens": ["admin-token"]}
    )  # the source takes pushes without a credential although an admin token is configured
    await _evaluated(settings, engine)
    clock = Clock()
    fake.inject("POST", "", Fault.error(503), Fault.error(503, code="transient"))
    assert (await deliver(engine, settings, clock)).retry == 1
    clock.advance(1)
    assert (await deliver(engine, settings, clock)).parked == 1
    (entry,) = outbox(engine)
    assert entry.status == "parked"
    with Session(engine) as s:
        (dead,) = s.exec(select(DeadLetter)).all()
    assert dead.kind == "delivery" and dead.source == SOURCE
    assert dead.outcome == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "transient", "diagnostics": "injected 503"}],
    }
    assert dead.context is not None and dead.context["outbox_id"] == entry.id
    assert dead.context["upstream_status"] == 503
    clock.advance(3600)
    assert (await deliver(engine, settings, clock)).handled == 0  # parked stays parked

    async with await app_client(settings, engine) as client:
        r = await client.post(f"/admin/dead-letters/{dead.id}/replay", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "replayed"
    (entry,) = outbox(engine)
    assert entry.status == "pending" and entry.attempts == 0
    assert (await deliver(engine, settings)).sent == 1
    assert len(by_identifier(fake, "CarePlan", KEY)) == 1
    with Session(engine) as s:
        dead2 = s.get(DeadLetter, dead.id)
    assert dead2 is not None and dead2.status == "replayed" and dead2.replay_count == 1


async def test_an_answer_that_cannot_improve_is_parked_at_once(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)
    await _evaluated(settings, engine)
    fake.inject("POST", "", Fault.error(422, code="business-rule"))
    assert (await deliver(engine, settings)).parked == 1
    with Session(engine) as s:
        (dead,) = s.exec(select(DeadLetter)).all()
        (entry,) = s.exec(select(Outbox)).all()
    assert entry.attempts == 1 and entry.status == "parked"
    assert dead.outcome is not None and dead.outcome["issue"][0]["code"] == "business-rule"
    sent: dict[str, Any] = orjson.loads(dead.payload)
    assert sent["resourceType"] == "Bundle" and sent["type"] == "transaction"


async def test_r5_writes_r5_careplans_that_validate(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live, fhir_version="R5")
    await _evaluated(settings, engine)
    assert (await deliver(engine, settings)).sent == 1
    (plan,) = by_identifier(fake, "CarePlan", KEY)
    (request,) = by_identifier(fake, "ServiceRequest", f"{KEY}:request")
    assert plan["activity"] == [
        {"plannedActivityReference": {"reference": f"ServiceRequest/{request['id']}"}}
    ]
    assert "author" not in plan and plan["custodian"]["type"] == "Device"
    assert request["code"]["concept"]["coding"][0]["code"] == "64635"
    for resource in (plan, request, *fake.all("Provenance")):
        validate_r5(resource)
    # the same CarePlan is not R4 any more (activity.reference is gone): really R5
    assert "detail" not in str(plan["activity"])
