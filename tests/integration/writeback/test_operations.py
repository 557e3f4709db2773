"""Write-back in operation: SMART Backend Services with the write-back scopes, loop safety when
the server sends Pinpoint's own resources back, readiness and metrics, the background loop, a
worker process killed mid-delivery, alerts as DetectedIssues (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.recommender.writeback import WRITEBACK_SCOPES, run_delivery
from services.server import Role, build_app
from shared.db.models import EvaluationQueue, Outbox, Resource, utcnow
from shared.db.session import session_scope
from shared.fhir.resources import validate_r5
from shared.settings import Settings
from tests.api.recommender.helpers import assert_valid_r4
from tests.conftest import shared_path
from tests.fakes.fhir_server import FakeFhirServer, FakeSmartAuth, Fault, LiveServer, serve_in_thread
from tests.integration.worker.helpers import BIN, seed_store, synthetic, worker_process
from tests.integration.writeback.helpers import (
    KEY,
    SOURCE,
    SYSTEM,
    V02,
    by_identifier,
    deliver,
    evaluate,
    outbox,
    push,
    transactions,
    vignette,
    vignette_now,
    wb_settings,
)


def _client(settings: Settings, engine: Engine) -> httpx.AsyncClient:
    app = build_app(settings, Role.all, engine)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://pinpoint"
    )


async def _evaluated(settings: Settings, engine: Engine, name: str = V02) -> None:
    async with _client(settings, engine) as client:
        await push(client, vignette(name))
    evaluate(engine, settings, vignette_now(name))


def _vector(name: str) -> str:
    return Path(shared_path("vectors", name)).read_text()


async def test_smart_backend_services_with_the_write_back_scopes(engine: Engine, db_url: str) -> None:
    secured = FakeFhirServer(
        auth=FakeSmartAuth(clients={"pinpoint-es": json.loads(_vector("smart-jwks-ES384-public.json"))})
    )
    with serve_in_thread(secured) as live:
        smart = {
            "client_id": "pinpoint-es",
            "token_url": live.token_url,
            "private_key": _vector("smart-jwks-ES384-private-EXAMPLE-ONLY.json"),
            "alg": "ES384",
            "scopes": "system/Procedure.rs system/Observation.rs",  # the source's read scopes
        }
        settings = wb_settings(db_url, live, source={"outbound": {"smart": smart}})
        await _evaluated(settings, engine)
        assert (await deliver(engine, settings)).sent == 1
        (token_request,) = secured.requests_to("POST", "/auth/token")
        form = parse_qs(token_request.body.decode())
        assert form["grant_type"] == ["client_credentials"]
        assert form["scope"] == [WRITEBACK_SCOPES]
        assert WRITEBACK_SCOPES.split() == [
            "system/CarePlan.cu",
            "system/ServiceRequest.cu",
            "system/Provenance.c",
            "system/DetectedIssue.cu",
            "system/Observation.cu",
        ]
        (tx,) = secured.requests_to("POST", "")
        assert tx.headers["authorization"].startswith("Bearer ") and tx.status == 200
        assert len(by_identifier(secured, "CarePlan", KEY)) == 1


async def test_own_resources_coming_back_through_a_subscription_are_not_ingested(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)
    subscriptions = [
        fake.put(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "Pinpoint input",
                "criteria": f"{rtype}?subject=Patient/P-001",
                "channel": {
                    "type": "rest-hook",
                    "endpoint": f"http://pinpoint/sources/{SOURCE}/fhir",
                    "payload": "application/fhir+json",
                },
            }
        )["id"]
        for rtype in ("ServiceRequest", "CarePlan")
    ]
    await _evaluated(settings, engine)
    with session_scope(engine) as s:
        before = s.execute(sa.select(sa.func.count()).select_from(Resource)).scalar_one()
    assert (await deliver(engine, settings)).sent == 1

    async with _client(settings, engine) as client:
        statuses = [s for sid in subscriptions for s in await fake.deliver(sid, client)]
    assert statuses and all(200 <= s < 300 for s in statuses)  # HAPI-style PUT {type}/{id}, accepted
    with Session(engine) as s:
        raws = [r.raw or {} for r in s.exec(select(Resource))]
        after = s.execute(sa.select(sa.func.count()).select_from(Resource)).scalar_one()
        queued = list(s.exec(select(EvaluationQueue)))
    assert after == before
    assert not [r for r in raws if "urn:pinpoint:recommendation" in json.dumps(r)]
    assert queued == []  # nothing re-evaluated
    assert len(outbox(engine)) == 1  # and so nothing written again


async def test_readiness_fails_while_the_outbox_is_behind_and_metrics_count(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live).model_copy(update={"ready_max_outbox_age": timedelta(minutes=5)})
    await _evaluated(settings, engine)
    async with _client(settings, engine) as client:
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["outbox"] == "ok"
        with session_scope(engine) as s:
            s.execute(sa.update(Outbox).values(created_at=utcnow() - timedelta(hours=1)))
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["outbox"].startswith("behind: 1 undelivered, oldest 36")
        metrics = (await client.get("/metrics")).text
        assert "pinpoint_outbox_oldest_age_seconds 36" in metrics

        fake.inject("POST", "", Fault.error(502))
        await deliver(engine, settings)
        with session_scope(engine) as s:
            s.execute(sa.update(Outbox).values(next_attempt_at=utcnow()))
        await deliver(engine, settings)
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["outbox"] == "ok"
        metrics = (await client.get("/metrics")).text
    assert 'pinpoint_writeback_failures_total{reason="502"}' in metrics
    assert 'pinpoint_writeback_deliveries_total{outcome="sent"}' in metrics
    assert "pinpoint_writeback_attempts_total" in metrics
    assert "pinpoint_outbox_oldest_age_seconds 0.0" in metrics


async def test_background_loop_delivers_what_the_worker_writes(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live).model_copy(update={"worker_poll_interval": timedelta(seconds=0.1)})
    stop = threading.Event()
    loop = asyncio.create_task(run_delivery(engine, settings, stop))
    try:
        await _evaluated(settings, engine)
        for _ in range(100):
            if all(e.status == "sent" for e in outbox(engine)):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)
    assert [e.status for e in outbox(engine)] == ["sent"]
    assert len(by_identifier(fake, "CarePlan", KEY)) == 1


async def test_alerts_are_delivered_as_detected_issues_r4_and_r5(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    name = "v05-sedation-confirmatory-block"
    settings = wb_settings(db_url, live, fhir_version="R5")
    await _evaluated(settings, engine, name)
    await deliver(engine, settings)
    issues = [i for i in fake.all("DetectedIssue") if i["code"]["coding"][0]["code"] == "sedation"]
    assert len(issues) == 1
    assert issues[0]["subject"] == {"reference": "Patient/P-001"} and "patient" not in issues[0]
    for issue in issues:
        validate_r5(issue)
    assert all(e.status == "sent" for e in outbox(engine))


async def test_r4_detected_issue_as_stored(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    name = "v05-sedation-confirmatory-block"
    settings = wb_settings(db_url, live)
    await _evaluated(settings, engine, name)
    await deliver(engine, settings)
    (issue,) = [i for i in fake.all("DetectedIssue") if i["code"]["coding"][0]["code"] == "sedation"]
    assert issue["patient"] == {"reference": "Patient/P-001"}
    assert_valid_r4(issue)


def test_a_worker_killed_mid_delivery_delivers_on_restart_without_duplicates(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer, tmp_path: Path
) -> None:
    settings = wb_settings(db_url, live, timeout="1s")
    asyncio.run(_evaluated(settings, engine))
    config = tmp_path / "pinpoint.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [{"id": SOURCE, "fhir_base_url": live.base_url}],
                "writeback": {"source": SOURCE, "timeout": "1s", "backoff": "0s"},
            }
        )
    )
    env = {"PINPOINT_CONFIG_FILE": str(config), "PINPOINT_WORKER_POLL_INTERVAL": "100ms"}
    fake.inject("POST", "", Fault.slow(0.8))  # the transaction is still being applied …
    victim = worker_process(db_url, **env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and outbox(engine)[0].attempts == 0:
            time.sleep(0.02)
        assert outbox(engine)[0].attempts == 1, "the worker never claimed the entry"
        time.sleep(0.2)
        victim.kill()  # … when the worker dies (SIGKILL: no clean-up at all)
        victim.communicate(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
    time.sleep(1.0)  # let the server finish whatever it received
    # the server applied the transaction the dead worker sent: a blind retry would duplicate
    assert len(by_identifier(fake, "CarePlan", KEY)) == 1 and len(fake.all("Provenance")) == 1
    (entry,) = outbox(engine)
    assert entry.status == "pending"
    wait = (entry.next_attempt_at - utcnow()).total_seconds()
    time.sleep(max(wait, 0) + 0.1)  # the dead worker's claim (its lease) expires

    restart = worker_process(db_url, "--once", **env)
    _out, err = restart.communicate(timeout=60)
    assert restart.returncode == 0, err[-2000:]
    (entry,) = outbox(engine)
    assert entry.status == "sent" and entry.attempts == 2
    assert len(by_identifier(fake, "CarePlan", KEY)) == 1
    assert len(by_identifier(fake, "ServiceRequest", f"{KEY}:request")) == 1
    assert len(fake.all("Provenance")) == 1
    (plan,) = by_identifier(fake, "CarePlan", KEY)
    assert plan["meta"]["versionId"] == "1"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_worker_once_delivers_the_outbox(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer, tmp_path: Path
) -> None:
    settings = wb_settings(db_url, live)
    asyncio.run(_evaluated(settings, engine))
    config = tmp_path / "pinpoint.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [{"id": SOURCE, "fhir_base_url": live.base_url}],
                "writeback": {"source": SOURCE},
            }
        )
    )
    proc = worker_process(db_url, "--once", PINPOINT_CONFIG_FILE=str(config))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert [e.status for e in outbox(engine)] == ["sent"]
    assert len(by_identifier(fake, "CarePlan", KEY)) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_two_deliverers_on_postgresql_send_each_entry_once(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)  # patients pushed to /fhir (source default) are delivered
    keys = seed_store(engine, synthetic(60))
    evaluate(engine, settings, utcnow())
    entries = outbox(engine)
    assert len(entries) >= 30 and {e.patient_key for e in entries} <= set(keys)

    async def one() -> int:
        return (await deliver(engine, settings)).sent

    sent = await asyncio.gather(one(), one())
    assert sum(sent) == len(entries) and all(sent)  # both took a share, nothing twice
    assert len(transactions(fake)) == len(entries)
    assert all(e.status == "sent" for e in outbox(engine))
    identifiers = [
        i["value"] for plan in fake.all("CarePlan") for i in plan["identifier"] if i["system"] == SYSTEM
    ]
    assert len(identifiers) == len(set(identifiers))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_cli_replays_a_parked_delivery(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer, tmp_path: Path
) -> None:
    settings = wb_settings(db_url, live)
    await _evaluated(settings, engine)
    fake.inject("POST", "", Fault.error(400, code="invalid"))
    assert (await deliver(engine, settings)).parked == 1
    config = tmp_path / "pinpoint.yaml"
    config.write_text(
        yaml.safe_dump(
            {"sources": [{"id": SOURCE, "fhir_base_url": live.base_url}], "writeback": {"source": SOURCE}}
        )
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PINPOINT_")}
    environ.update({"PINPOINT_DATABASE_URL": db_url, "PINPOINT_CONFIG_FILE": str(config)})
    listed = subprocess.run(
        [str(BIN / "pinpoint"), "dead-letters", "list"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and "delivery" in listed.stdout
    replayed = subprocess.run(
        [str(BIN / "pinpoint"), "dead-letters", "replay", "1"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert [e.status for e in outbox(engine)] == ["pending"]
    once = subprocess.run(
        [str(BIN / "pinpoint"), "worker", "--once"], env=environ, capture_output=True, text=True, timeout=60
    )
    assert once.returncode == 0, once.stderr
    assert [e.status for e in outbox(engine)] == ["sent"]
    assert len(by_identifier(fake, "CarePlan", KEY)) == 1
