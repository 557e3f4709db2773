"""A hospital source ``hosp`` whose FHIR server is the fake on loopback; Pinpoint in-process.

``client`` talks to Pinpoint (ASGI, no lifespan: background tasks do not run by themselves);
``worker`` is the subscription worker of that app, driven by the tests with ``run_once`` and a
clock that can be moved forward (``clock.advance``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.ingest.intake.fetched import IntakeStore
from services.ingest.subscriptions import state
from services.ingest.subscriptions.recovery import Options, SubscriptionWorker
from shared.db.models import Inbox, Resource, SubscriptionState, utcnow
from shared.fhir.client import RetryPolicy
from shared.fhir.sources import SourceClients
from shared.settings import ConfigFile, Settings
from tests.fakes.fhir_server import FakeFhirServer, LiveServer, serve_in_thread

TOKEN = "hosp-inbound-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
TOPIC = "http://pinpoint.example/topics/pain-procedures"


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def fake() -> FakeFhirServer:
    return FakeFhirServer()


@pytest.fixture
def live(fake: FakeFhirServer) -> Iterator[LiveServer]:
    with serve_in_thread(fake) as running:
        yield running


def hosp_config(live: LiveServer, **inbound: Any) -> ConfigFile:
    return ConfigFile.model_validate(
        {
            "sources": [
                {
                    "id": "hosp",
                    "fhir_base_url": live.base_url,
                    "inbound": inbound or {"bearer": TOKEN},
                    "subscriptions": {"mode": "backport", "reconcile_every": "15m", "topic": TOPIC},
                }
            ]
        }
    )


@pytest.fixture
def settings(db_url: str, live: LiveServer) -> Settings:
    return Settings(database_url=db_url, config=hosp_config(live), _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def worker(
    app: Any, settings: Settings, engine: Engine, clock: Clock
) -> AsyncIterator[SubscriptionWorker]:
    clients = SourceClients(
        http_factory=lambda _s: httpx.AsyncClient(timeout=httpx.Timeout(5.0)),
        retry=RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0),
    )
    options = Options(base_delay=1.0, max_delay=5.0, max_attempts=3)
    w = SubscriptionWorker(
        settings, engine, clients, IntakeStore(engine), options=options, clock=clock, sleep=_no_sleep
    )
    try:
        yield w
    finally:
        await clients.aclose()


@pytest.fixture
async def upstream(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """Talks to the fake FHIR server as the hospital's own users would (to change its data)."""
    async with httpx.AsyncClient(base_url=live.base_url + "/", timeout=5.0) as c:
        yield c


@pytest.fixture
async def pinpoint(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """What the fake server delivers notifications through: Pinpoint's app on ASGI."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint") as c:
        yield c


ENDPOINT = "http://pinpoint/sources/hosp/fhir"


def topic_subscription(fake: FakeFhirServer, content: str = "id-only", sid: str = "sub-1") -> str:
    fake.put(
        {
            "resourceType": "Subscription",
            "id": sid,
            "status": "requested",
            "reason": "test",
            "criteria": TOPIC,
            "channel": {
                "type": "rest-hook",
                "endpoint": ENDPOINT,
                "payload": "application/fhir+json",
                "_payload": {
                    "extension": [
                        {
                            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
                            "valueCode": content,
                        }
                    ]
                },
                "header": [f"Authorization: Bearer {TOKEN}"],
            },
        }
    )
    return sid


def classic_subscription(
    fake: FakeFhirServer,
    criteria: str,
    *,
    payload: bool = True,
    sid: str = "classic-1",
    secret: str | None = None,
) -> str:
    sub: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": sid,
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": ENDPOINT, "header": [f"Authorization: Bearer {TOKEN}"]},
    }
    if payload:
        sub["channel"]["payload"] = "application/fhir+json"
    if secret:
        sub["extension"] = [
            {
                "url": "https://www.medplum.com/fhir/StructureDefinition/subscription-secret",
                "valueString": secret,
            }
        ]
        sub["channel"]["header"] = []
    fake.put(sub)
    return sid


def patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1960-01-01"}


def mbb(rid: str, pid: str = "p1", *, status: str = "completed", day: int = 3) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": CPT, "code": "64493"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "performedDateTime": f"2025-02-{day:02d}T09:20:00Z",
    }


def pain(rid: str, value: int, pid: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2025-02-03T10:00:00Z",
        "valueInteger": value,
    }


def stored(engine: Engine, source: str = "hosp") -> dict[tuple[str, str], dict[str, Any]]:
    """What Pinpoint holds for a source (live resources only), by (type, id)."""
    with Session(engine) as s:
        rows = s.exec(select(Resource).where(Resource.source == source, Resource.deleted == False)).all()  # noqa: E712
    return {(r.resource_type, r.resource_id): r.raw or {} for r in rows}


def upstream_state(
    fake: FakeFhirServer, types: tuple[str, ...] = ("Patient", "Procedure", "Observation")
) -> dict[tuple[str, str], str]:
    return {(r["resourceType"], r["id"]): r["meta"]["versionId"] for t in types for r in fake.all(t)}


def stored_versions(engine: Engine) -> dict[tuple[str, str], str]:
    return {k: str((v.get("meta") or {}).get("versionId")) for k, v in stored(engine).items()}


def inbox(engine: Engine) -> list[Inbox]:
    with Session(engine) as s:
        return list(s.exec(select(Inbox).order_by(Inbox.id)).all())  # type: ignore[arg-type]


def last_event(engine: Engine, subscription: str, source: str = "hosp") -> int | None:
    """The highest event number of a subscription received (or announced by its sender)."""
    with Session(engine) as s:
        return state.last_event(s, source, subscription)


def sub_state(engine: Engine, subscription: str, source: str = "hosp") -> SubscriptionState | None:
    with Session(engine) as s:
        return s.get(SubscriptionState, (source, subscription))
