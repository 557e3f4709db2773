"""CDS Hooks test kit: apps with trusted issuers and sources, a JWT-signing CDS client, a fake
assessor (the engine seam) that records its input, and a CDS Hooks 2.0 card conformance check."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from sqlalchemy.engine import Engine

from services.recommender.assessor import Assessed
from services.recommender.container import Recommender
from services.recommender.engine import Policy
from services.recommender.policies import load_policy
from shared.settings import CdsConfig, ConfigFile, Settings, Source, TrustedIssuer
from tests.conftest import FIXTURES

CDS = FIXTURES / "cds"
BASE = "https://pinpoint.example"
SOURCE_BASE = "https://fhir.hospital-a.example/R4"
ISSUER = "https://ehr.hospital-a.example/cds-client"
RSA_ISSUER = "https://other-ehr.example"
NOW = datetime(2025, 3, 10, 13, 0, tzinfo=UTC)


def vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CDS / name).read_text())
    return data


def request_with_context(name: str, hook: str) -> dict[str, Any]:
    """A hook-library context example wrapped into a full request (no fhirServer, no prefetch)."""
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": vector(name)["context"]}


def private_key(name: str) -> tuple[str, Any]:
    keys = vector(name)["keys"]
    jwk = next(k for k in keys if "d" in k)
    return jwk["kid"], jwt.PyJWK(jwk).key


@dataclass
class CdsClient:
    """A CDS client that signs its calls (the test double of an EHR)."""

    http: httpx.AsyncClient
    iss: str = ISSUER
    key_file: str = "smart-jwks-ES384-private-EXAMPLE-ONLY.json"
    alg: str = "ES384"
    clock: Callable[[], float] = field(default=lambda: NOW.timestamp())

    def token(self, path: str, **overrides: Any) -> str:
        kid, key = private_key(self.key_file)
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.iss,
            "aud": BASE + path,
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        claims.update(overrides.pop("claims", {}))
        headers = {"kid": overrides.pop("kid", kid), "typ": "JWT"}
        return jwt.encode(claims, key, algorithm=self.alg, headers=headers)

    async def post(self, path: str, body: Any, token: str | None = None) -> httpx.Response:
        token = token or self.token(path)
        return await self.http.post(path, json=body, headers={"Authorization": f"Bearer {token}"})

    async def get(self, path: str, token: str | None = None) -> httpx.Response:
        token = token or self.token(path)
        return await self.http.get(path, headers={"Authorization": f"Bearer {token}"})


def unsigned(claims: dict[str, Any], header: dict[str, Any], signature: bytes = b"") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(signature)


@dataclass
class FakeAssessor:
    """The engine seam: records what it was given and answers a scripted §3 document."""

    patients: list[dict[str, Any]] = field(default_factory=list)
    seen: list[list[dict[str, Any]]] = field(default_factory=list)
    unavailable: list[frozenset[str]] = field(default_factory=list)

    def document(self, resources: Sequence[dict[str, Any]], now: datetime) -> dict[str, Any]:
        self.seen.append([dict(r) for r in resources])
        return {
            "policy": {"id": "cms-lcd", "version": "test"},
            "evaluatedAt": now.isoformat(),
            "patients": self.patients,
        }

    @property
    def policy(self) -> Policy:
        return load_policy("cms-lcd")

    def assess(
        self, resources: Sequence[dict[str, Any]], now: datetime, unavailable: frozenset[str] = frozenset()
    ) -> Assessed:
        self.unavailable.append(unavailable)
        return Assessed(self.document(resources, now), {}, {})

    def ids(self, call: int = -1) -> set[str]:
        return {f"{r['resourceType']}/{r.get('id')}" for r in self.seen[call]}


def make_settings(db_url: str, *, issuers: bool = False, cds_source: str | None = None) -> Settings:
    trusted = []
    if issuers:
        trusted = [
            TrustedIssuer(iss=ISSUER, jwks_file=CDS / "smart-jwks-ES384-public.json"),
            TrustedIssuer(iss=RSA_ISSUER, jwks_file=CDS / "smart-jwks-RS384-public.json"),
        ]
    config = ConfigFile(
        sources=[
            Source(id="hospital-a", fhir_base_url=SOURCE_BASE),  # type: ignore[arg-type]
            Source(id="hospital-b", fhir_base_url="https://fhir.hospital-b.example/fhir"),  # type: ignore[arg-type]
        ],
        cds=CdsConfig(source=cds_source, trusted_issuers=trusted),
    )
    return Settings(database_url=db_url, public_base_url=BASE, config=config, _env_file=None)  # type: ignore[call-arg]


@dataclass
class CdsApp:
    client: httpx.AsyncClient
    assessor: FakeAssessor
    engine: Engine
    settings: Settings
    runtime: Any
    parts: Recommender

    def signer(self, **kw: Any) -> CdsClient:
        return CdsClient(self.client, **kw)


async def _app(db_url: str, engine: Engine, **kw: Any) -> AsyncIterator[CdsApp]:
    from services.server import Role, build_app

    settings = make_settings(db_url, **kw)
    app = build_app(settings, Role.all, engine)
    runtime = app.state.runtime
    parts: Recommender = app.state.recommender
    parts.cds.clock = lambda: NOW
    assessor = FakeAssessor()
    parts.cds.assessor = assessor  # type: ignore[assignment]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield CdsApp(client, assessor, engine, settings, runtime, parts)
    for hook in runtime.on_shutdown:
        await hook()


@pytest.fixture
async def cds(db_url: str, engine: Engine) -> AsyncIterator[CdsApp]:
    """Open CDS service (no trusted issuers), hospital-a and hospital-b configured."""
    async for a in _app(db_url, engine):
        yield a


@pytest.fixture
async def cds_secured(db_url: str, engine: Engine) -> AsyncIterator[CdsApp]:
    async for a in _app(db_url, engine, issuers=True):
        yield a


@pytest.fixture
async def cds_with_source(db_url: str, engine: Engine) -> AsyncIterator[CdsApp]:
    async for a in _app(db_url, engine, cds_source="hospital-b"):
        yield a


# --------------------------------------------------------------------------- conformance

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _no_empty(value: Any, where: str) -> None:
    """CDS Hooks: no null and no empty values ("", [], {}) anywhere in a response."""
    assert value is not None, f"null at {where}"
    if isinstance(value, str | list | dict):
        assert len(value) > 0, f"empty value at {where}"
    if isinstance(value, dict):
        for k, v in value.items():
            _no_empty(v, f"{where}.{k}")
    if isinstance(value, list):
        for i, v in enumerate(value):
            _no_empty(v, f"{where}[{i}]")


def assert_valid_card(card: dict[str, Any]) -> None:
    """CDS Hooks 2.0 card rules (STANDARDS §1.4) plus Pinpoint's (uuid, topic, evidence link)."""
    _no_empty(card, "card")
    assert UUID_RE.match(card["uuid"])
    assert isinstance(card["summary"], str) and len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["source"]["label"]
    topic = card["source"]["topic"]
    assert topic["code"] and topic["display"] and topic["system"]
    assert isinstance(card["detail"], str)
    assert card["links"], "every card links to the evidence page"
    for link in card["links"]:
        assert link["type"] in ("absolute", "smart") and link["label"]
        path = urlsplit(link["url"]).path
        if link["type"] == "absolute" and path.startswith("/patients/"):  # cards_for's own (no service)
            assert path.endswith("/evidence")
        elif link["type"] == "absolute":  # through the service: the card's evidence, signed
            assert path == f"/evidence/cards/{card['uuid']}", link
            assert link["url"].startswith(BASE + "/evidence/cards/") and "sig=" in link["url"]
        else:  # the SMART launch of the evidence page; the card travels in appContext
            assert re.match(re.escape(BASE) + r"/smart/[^/]+/launch$", link["url"]), link
            assert link["appContext"] == f"card={card['uuid']}"
    for coding in card.get("overrideReasons", []):
        assert coding["display"]
    if "suggestions" in card:
        assert card["selectionBehavior"] in ("at-most-one", "any")
        for s in card["suggestions"]:
            assert s["label"] and UUID_RE.match(s["uuid"])
            for action in s.get("actions", []):
                assert action["type"] in ("create", "update", "delete") and action["description"]
                if action["type"] == "delete":
                    assert re.match(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]+$", action["resourceId"])
                else:
                    assert action["resource"]["resourceType"]
    assert set(card) <= {
        "uuid",
        "summary",
        "detail",
        "indicator",
        "source",
        "suggestions",
        "selectionBehavior",
        "overrideReasons",
        "links",
        "extension",
    }


def assert_valid_response(body: dict[str, Any]) -> None:
    assert set(body) <= {"cards", "systemActions", "extension"}
    assert isinstance(body["cards"], list)
    for card in body["cards"]:
        assert_valid_card(card)


def now_ts() -> float:
    return time.time()


def cds_path(name: str) -> Path:
    return CDS / name
