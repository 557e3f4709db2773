"""Write-back test helpers: a live fake FHIR server, settings pointing at it, evaluation and
delivery with a controllable clock."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.recommender.assessor import Assessor
from services.recommender.worker import DrainStats, Worker
from services.recommender.writeback import Delivery, DeliveryStats, http_client_for, writeback_client
from services.server import Role, build_app
from shared.db.models import Outbox, Suggestion, utcnow
from shared.settings import ConfigFile, Settings, Source, Writeback
from tests.api.recommender.helpers import VIGNETTES
from tests.fakes.fhir_server import FakeFhirServer, LiveServer

FHIR = {"content-type": "application/fhir+json"}
SOURCE = "hosp"
V01 = "v01-one-block-only"
V02 = "v02-two-concordant-blocks"
SYSTEM = "urn:pinpoint:recommendation"
KEY = f"{SOURCE}:P-001:facet-rfa:lumbar:right:L4-L5+L5-S1"


def wb_settings(
    db_url: str, live: LiveServer, *, source: dict[str, Any] | None = None, **writeback: Any
) -> Settings:
    options: dict[str, Any] = {"timeout": "2s", "backoff": "0s", **writeback}
    return Settings(
        database_url=db_url,
        config=ConfigFile(
            sources=[Source.model_validate({"id": SOURCE, "fhir_base_url": live.base_url, **(source or {})})],
            writeback=Writeback(source=SOURCE, **options),
        ),
        _env_file=None,  # type: ignore[call-arg]
    )


def vignette(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VIGNETTES / name / "bundle.json").read_text())
    return data


def vignette_now(name: str) -> datetime:
    return datetime.fromisoformat(json.loads((VIGNETTES / name / "expected.json").read_text())["now"])


async def app_client(settings: Settings, engine: Engine) -> httpx.AsyncClient:
    """The whole app (Role.all) in process, for pushes and admin calls."""
    app = build_app(settings, Role.all, engine)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://pinpoint"
    )


async def push(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    r = await client.post(f"/sources/{SOURCE}/fhir", content=json.dumps(body).encode(), headers=FHIR)
    assert r.status_code == 200, r.text


def evaluate(engine: Engine, settings: Settings, now: datetime) -> DrainStats:
    return Worker(engine, settings, Assessor.load("cms-lcd")).drain(now=now)


@dataclass
class Clock:
    """A settable clock for delivery (claims and backoff compare against it)."""

    now: datetime = field(default_factory=utcnow)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def deliver(engine: Engine, settings: Settings, clock: Clock | None = None) -> DeliveryStats:
    async with http_client_for(settings) as http:
        delivery = Delivery(
            engine, settings, writeback_client(settings, http), clock=clock or utcnow, rng=random.Random(7)
        )
        return await delivery.drain()


def outbox(engine: Engine) -> list[Outbox]:
    with Session(engine) as s:
        return list(s.exec(select(Outbox).order_by(Outbox.id)))  # type: ignore[arg-type]


def suggestion(engine: Engine, rtype: str, identifier: str) -> Suggestion:
    with Session(engine) as s:
        row = s.exec(
            select(Suggestion).where(Suggestion.resource_type == rtype, Suggestion.identifier == identifier)
        ).one()
    return row


def by_identifier(fake: FakeFhirServer, rtype: str, value: str) -> list[dict[str, Any]]:
    return [
        r
        for r in fake.all(rtype)
        if any(i.get("system") == SYSTEM and i.get("value") == value for i in r.get("identifier") or [])
    ]


def transactions(fake: FakeFhirServer) -> list[dict[str, Any]]:
    """The transaction Bundles the fake answered 200 to, in order."""
    return [r.json() for r in fake.requests_to("POST", "") if r.status == 200]
