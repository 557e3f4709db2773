"""Issue 6 §2–§4 in a running app: the background task, readiness, metrics, SMART upstream calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from services.ingest.subscriptions import state as st
from services.ingest.subscriptions.recovery import SubscriptionWorker
from services.server import Role, build_app
from shared.db.models import utcnow
from shared.db.session import session_scope
from shared.settings import ConfigFile, Settings
from tests.conftest import shared_path
from tests.fakes.fhir_server import FakeFhirServer, FakeSmartAuth, LiveServer, serve_in_thread
from tests.integration.subscriptions.conftest import (
    AUTH,
    TOKEN,
    inbox,
    mbb,
    patient,
    stored,
    stored_versions,
    topic_subscription,
    upstream_state,
)


async def test_the_ingest_role_runs_the_worker_in_the_background(
    fake: FakeFhirServer, settings: Settings, engine: Engine
) -> None:
    app = build_app(settings, Role.ingest, engine)
    runtime = app.state.runtime
    assert [name for name, _ in runtime.background] == ["subscriptions"]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint") as pinpoint:
        sid = topic_subscription(fake, "id-only")
        fake.put(patient())
        fake.put(mbb("proc-1"))
        fake.emit_event(sid, "Patient/p1")
        fake.emit_event(sid, "Procedure/proc-1")
        task = asyncio.create_task(runtime.background[0][1]())
        try:
            assert await fake.deliver(sid, pinpoint) == [200]
            for _ in range(100):  # bounded: at most ~10 s
                if len(stored(engine)) == 2:
                    break
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for hook in runtime.on_shutdown:
                await hook()
    assert stored_versions(engine) == upstream_state(fake)


def test_the_worker_is_not_started_without_a_source_base_url(db_url: str, engine: Engine) -> None:
    settings = Settings(database_url=db_url, _env_file=None)  # type: ignore[call-arg]
    app = build_app(settings, Role.all, engine)
    assert all(name != "subscriptions" for name, _ in app.state.runtime.background)
    assert "inbox" in app.state.runtime.checks
    assert build_app(settings, Role.recommender, engine).state.runtime.checks.get("inbox") is None


async def test_readiness_fails_when_a_fetch_is_stuck(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.get("/readyz")
    assert r.json()["checks"]["inbox"] == "ok"
    with session_scope(engine) as session:
        row = st.enqueue(
            session, "hosp", st.ID_ONLY, now=utcnow() - timedelta(hours=2), reference="Patient/p1"
        )
        row.received_at = utcnow() - timedelta(hours=2)
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["inbox"].startswith("stuck")


async def test_metrics_show_subscription_lag_and_inbox(
    fake: FakeFhirServer, client: httpx.AsyncClient, pinpoint: httpx.AsyncClient, worker: SubscriptionWorker
) -> None:
    sid = topic_subscription(fake, "id-only")
    await fake.deliver(sid, pinpoint, kind="handshake")
    fake.put(patient())
    fake.emit_event(sid, "Patient/p1")
    fake.inject(
        "GET", "Patient/p1", *[__import__("tests.fakes.fhir_server", fromlist=["Fault"]).Fault.error(503)] * 2
    )
    await fake.deliver(sid, pinpoint)
    await worker.run_once(reconcile=False)
    text = (await client.get("/metrics")).text
    assert f'pinpoint_subscription_lag_seconds{{source="hosp",subscription="{sid}"}}' in text
    assert "pinpoint_subscription_inbox_pending 1.0" in text
    assert 'pinpoint_subscription_notifications_total{source="hosp",type="handshake"}' in text


# ---------------------------------------------------------------- SMART Backend Services upstream


def _vector(name: str) -> str:
    return Path(shared_path("vectors", name)).read_text()


@pytest.fixture
def secured() -> FakeFhirServer:
    return FakeFhirServer(
        auth=FakeSmartAuth(clients={"pinpoint-rs": json.loads(_vector("smart-jwks-RS384-public.json"))})
    )


@pytest.fixture
def secured_live(secured: FakeFhirServer) -> Iterator[LiveServer]:
    with serve_in_thread(secured) as running:
        yield running


async def test_id_only_fetches_use_smart_backend_services(
    secured: FakeFhirServer, secured_live: LiveServer, db_url: str, engine: Engine
) -> None:
    config: dict[str, Any] = {
        "sources": [
            {
                "id": "hosp",
                "fhir_base_url": secured_live.base_url,
                "inbound": {"bearer": TOKEN},
                "outbound": {
                    "smart": {
                        "client_id": "pinpoint-rs",
                        "token_url": secured_live.token_url,
                        "private_key": _vector("smart-jwks-RS384-private-EXAMPLE-ONLY.json"),
                        "alg": "RS384",
                        "scopes": "system/Patient.rs system/Procedure.rs",
                    }
                },
            }
        ]
    }
    settings = Settings(database_url=db_url, config=ConfigFile.model_validate(config), _env_file=None)  # type: ignore[call-arg]
    app = build_app(settings, Role.ingest, engine)
    runtime = app.state.runtime
    worker: SubscriptionWorker = app.state.ingest.subscriptions
    secured.put(patient())
    secured.put(mbb("proc-1"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint") as pinpoint:
        note = {
            "resourceType": "Bundle",
            "type": "subscription-notification",
            "entry": [
                {
                    "resource": {
                        "resourceType": "SubscriptionStatus",
                        "status": "active",
                        "type": "event-notification",
                        "eventsSinceSubscriptionStart": 2,
                        "subscription": {"reference": "Subscription/s1"},
                        "notificationEvent": [
                            {"eventNumber": 1, "focus": {"reference": "Patient/p1"}},
                            {
                                "eventNumber": 2,
                                "focus": {"reference": "https://elsewhere.example/fhir/Procedure/proc-1"},
                            },
                        ],
                    }
                }
            ],
        }
        r = await pinpoint.post("/sources/hosp/fhir", json=note, headers=AUTH)
        assert r.status_code == 200
    try:
        await worker.run_once(reconcile=False)
    finally:
        for hook in runtime.on_shutdown:
            await hook()
    assert set(stored(engine)) == {("Patient", "p1"), ("Procedure", "proc-1")}
    assert secured.tokens_issued == 1  # cached across both reads
    assert [r.status for r in inbox(engine)] == ["done", "done"]
