"""Access to patient data: tokens, signed evidence links, every route covered (CONTRACT §2)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.engine import Engine

from services.server import Role, build_app
from shared.settings import CdsConfig, ConfigFile, InboundAuth, Settings, Source
from shared.web import Runtime
from tests.api.recommender.helpers import bundle, push, run_worker, vignette_now

V02 = "v02-two-concordant-blocks"
READER = {"authorization": "Bearer reader"}
BOSS = {"authorization": "Bearer boss"}
SENDER = {"authorization": "Bearer sender"}  # the default source's inbound credential (/fhir writes)


def _settings(db_url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {"database_url": db_url, "public_base_url": "https://pinpoint.example"}
    return Settings(**{**base, **kw}, _env_file=None)  # type: ignore[arg-type]


@pytest.fixture
def secured(db_url: str, engine: Engine) -> FastAPI:
    settings = _settings(
        db_url,
        api_tokens=["reader"],
        admin_tokens=["boss"],
        link_secret="link-secret-for-tests",
        config=ConfigFile(
            sources=[Source(id="default", inbound=InboundAuth(bearer="sender"))],  # type: ignore[arg-type]
            cds=CdsConfig(evidence_link_ttl=timedelta(minutes=5)),
        ),
    )
    return build_app(settings, Role.all, engine)


@pytest.fixture
async def sclient(secured: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=secured, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint.test") as c:
        yield c


def _runtime(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def signed_evidence_url(app: FastAPI, patient: str, *, now: datetime) -> str:
    """The link the app's CDS cards carry (its one :class:`EvidenceLinks`)."""
    url: str = app.state.recommender.links.url(patient, now=now)
    return url


def _relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def _load_v02(client: httpx.AsyncClient, engine: Engine, settings: Settings) -> None:
    await push(client, bundle(V02), SENDER)  # the default source's credential (no effect when open)
    run_worker(engine, settings, vignette_now(V02))


def _outcome_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "login"


async def test_evidence_page_with_token_or_signed_link(
    sclient: httpx.AsyncClient, secured: FastAPI, engine: Engine
) -> None:
    runtime = _runtime(secured)
    await _load_v02(sclient, engine, runtime.settings)
    _outcome_401(await sclient.get("/patients/P-001/evidence"))
    for headers in (READER, BOSS):
        r = await sclient.get("/patients/P-001/evidence", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "<svg" in r.text and "Facet radiofrequency ablation" in r.text
        assert r.headers["cache-control"] == "no-store"
    link = signed_evidence_url(secured, "P-001", now=datetime.now(UTC))
    assert link.startswith("https://pinpoint.example/patients/P-001/evidence?exp=")
    r = await sclient.get(_relative(link))
    assert r.status_code == 200 and 'class="block-marker"' in r.text
    # the same patient named with its source: one canonical signature
    query = urlsplit(link).query
    assert (await sclient.get(f"/patients/default:P-001/evidence?{query}")).status_code == 200


async def test_expired_tampered_or_foreign_links_are_refused(
    sclient: httpx.AsyncClient, secured: FastAPI, engine: Engine
) -> None:
    runtime = _runtime(secured)
    await _load_v02(sclient, engine, runtime.settings)
    now = datetime.now(UTC)
    good = signed_evidence_url(secured, "P-001", now=now)
    q = {k: v[0] for k, v in parse_qs(urlsplit(good).query).items()}
    expired = signed_evidence_url(secured, "P-001", now=now - timedelta(minutes=6))
    flipped = q["sig"][:-1] + ("A" if q["sig"][-1] != "A" else "B")
    other_patient = signed_evidence_url(secured, "P-999", now=now)
    other_q = parse_qs(urlsplit(other_patient).query)
    for url in (
        _relative(expired),
        f"/patients/P-001/evidence?exp={q['exp']}&sig={flipped}",
        f"/patients/P-001/evidence?exp={int(q['exp']) + 3600}&sig={q['sig']}",  # extended
        f"/patients/P-001/evidence?exp={other_q['exp'][0]}&sig={other_q['sig'][0]}",  # another patient's
        f"/patients/P-001/evidence?exp={q['exp']}",
        f"/patients/P-001/evidence?sig={q['sig']}",
        "/patients/P-001/evidence?exp=soon&sig=x",
    ):
        r = await sclient.get(url)
        _outcome_401(r)
    # a link signed by another process's key does not open the page
    other = _settings(str(runtime.settings.database_url), api_tokens=["reader"], link_secret="another")
    other_app = build_app(other, Role.all, engine)
    foreign = signed_evidence_url(other_app, "P-001", now=now)
    _outcome_401(await sclient.get(_relative(foreign)))
    # the link opens the evidence page only, not the other patient-data reads
    _outcome_401(await sclient.get(f"/patients/P-001/assessment?exp={q['exp']}&sig={q['sig']}"))


async def test_link_ttl_is_the_configured_evidence_link_ttl(secured: FastAPI) -> None:
    before = datetime.now(UTC).timestamp()
    url = signed_evidence_url(secured, "hospital-b:p1", now=datetime.now(UTC))  # the cards' one link maker
    assert url.startswith("https://pinpoint.example/patients/hospital-b:p1/evidence?")
    exp = int(parse_qs(urlsplit(url).query)["exp"][0])
    assert before + 300 - 2 <= exp <= before + 300 + 2  # cds.evidence_link_ttl = 5 min


async def test_unknown_patient_is_404_once_authorised(sclient: httpx.AsyncClient) -> None:
    r = await sclient.get("/patients/nobody/evidence", headers=READER)
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


async def test_open_on_loopback_without_credentials(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    await _load_v02(client, engine, settings)
    r = await client.get("/patients/P-001/evidence", params={"now": "2025-03-10T08:00:00-05:00"})
    assert r.status_code == 200 and "supported" in r.text


async def test_source_credentials_without_api_tokens_close_the_reads(db_url: str, engine: Engine) -> None:
    """Credentials configured (here a CDS issuer) but no API token: reads are refused, not open."""
    settings = _settings(
        db_url,
        config=ConfigFile(
            cds=CdsConfig(
                trusted_issuers=[{"iss": "https://ehr.example", "jwks_url": "https://ehr.example/j"}]
            )
        ),
    )
    assert settings.auth_configured
    app = build_app(settings, Role.all, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint.test") as c:
        _outcome_401(await c.get("/patients/P-001/evidence"))
        _outcome_401(await c.get("/suggestions/fhir/CarePlan"))
        _outcome_401(await c.post("/admin/reevaluate"))


# --- every patient-data route is guarded ----------------------------------------------------------
_READ_PREFIXES = (
    "/fhir",
    "/sources/{source_id}/fhir",
    "/suggestions/fhir",
    "/patients",
    "/feedback",
    "/whatif",
    "/outcomes",
    "/evidence/",
)
_NOT_PATIENT_DATA = {  # CapabilityStatements
    "/fhir/metadata",
    "/sources/{source_id}/fhir/metadata",
    "/suggestions/fhir/metadata",
}
# Routes guarded by something else than API/admin tokens, each for a stated reason.
_OTHERWISE_GUARDED = {
    ("POST", "/fhir"): "source credential (inbound)",
    ("POST", "/fhir/"): "source credential (inbound)",
    ("POST", "/fhir/{rtype}"): "source credential (inbound)",
    ("PUT", "/fhir/{rtype}/{rid}"): "source credential (inbound)",
    ("DELETE", "/fhir/{rtype}/{rid}"): "source credential (inbound)",
    ("POST", "/sources/{source_id}/fhir"): "source credential (inbound)",
    ("POST", "/sources/{source_id}/fhir/"): "source credential (inbound)",
    ("POST", "/sources/{source_id}/fhir/{rtype}"): "source credential (inbound)",
    ("PUT", "/sources/{source_id}/fhir/{rtype}/{rid}"): "source credential (inbound)",
    ("PUT", "/fhir/{rtype}/{rid}/_history/{vid}"): "source credential (inbound)",
    ("PUT", "/sources/{source_id}/fhir/{rtype}/{rid}/_history/{vid}"): "source credential (inbound)",
    ("DELETE", "/sources/{source_id}/fhir/{rtype}/{rid}"): "source credential (inbound)",
    ("GET", "/cds-services"): "CDS client JWT (trusted issuers)",
    ("POST", "/cds-services/{service_id}"): "CDS client JWT (trusted issuers)",
    ("POST", "/cds-services/{service_id}/feedback"): "CDS client JWT (trusted issuers)",
    ("GET", "/fhir/metadata"): "no patient data",
    ("GET", "/sources/{source_id}/fhir/metadata"): "no patient data",
    ("GET", "/suggestions/fhir/metadata"): "no patient data",
    ("GET", "/smart/{source}/launch"): "starts an EHR launch: no patient data, the EHR authorises",
    ("GET", "/smart/{source}/callback"): "one-time launch state + the EHR's authorization code",
    ("GET", "/smart/evidence"): "the SMART session (patient bound by the EHR's token response)",
    ("GET", "/livez"): "operations probe",
    ("GET", "/readyz"): "operations probe",
    ("GET", "/metrics"): "operations metrics (no patient data)",
    ("GET", "/"): "landing page (no patient data)",
    ("GET", "/docs"): "API documentation (no patient data)",
    ("GET", "/docs/oauth2-redirect"): "API documentation (no patient data)",
}


def _routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI ≥ 0.16x: lazily included routers

        candidates: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # pragma: no cover - older FastAPI
        candidates = list(app.routes)
    for route in candidates:
        original = getattr(route, "original_route", route)
        if not isinstance(original, APIRoute):
            continue  # /docs and /openapi.json (no patient data)
        for method in sorted(route.methods or ()):
            yield method, route.path


def _concrete(path: str) -> str:
    return (
        path.replace("{source_id}", "default")
        .replace("{rtype}", "Patient")
        .replace("{pid}", "P-001")
        .replace("{", "")
        .replace("}", "")
    )


async def test_every_patient_data_and_admin_route_refuses_without_a_token(
    sclient: httpx.AsyncClient, secured: FastAPI
) -> None:
    routes = sorted(set(_routes(secured)))
    reads = [
        (m, p)
        for m, p in routes
        if m == "GET" and p.startswith(_READ_PREFIXES) and p not in _NOT_PATIENT_DATA
    ]
    admin = [(m, p) for m, p in routes if p.startswith("/admin/")]
    others = [r for r in routes if r not in reads and r not in admin]
    unclassified = [r for r in others if r not in _OTHERWISE_GUARDED]
    assert not unclassified, f"new routes must be guarded or classified here: {unclassified}"
    # the walk is not vacuous: the known routes are among those checked
    assert {
        ("GET", "/patients/{pid}/evidence"),
        ("GET", "/evidence/cards/{card}"),
        ("GET", "/patients/{pid}/assessment"),
        ("GET", "/suggestions/fhir/{rtype}"),
        ("GET", "/suggestions/fhir/{rtype}/{rid}"),
        ("GET", "/fhir/{rtype}/{rid}"),
        ("GET", "/fhir/{rtype}"),
        ("GET", "/patients"),
        ("GET", "/patients.csv"),
        ("GET", "/feedback"),
        ("GET", "/whatif"),
        ("GET", "/outcomes"),
    } <= set(reads)
    assert ("POST", "/admin/reevaluate") in admin
    for method, path in reads + admin:
        url = _concrete(path)
        _outcome_401(await sclient.request(method, url))
        _outcome_401(await sclient.request(method, url, headers={"authorization": "Bearer wrong"}))
    for method, path in reads:
        r = await sclient.request(method, _concrete(path), headers=READER)
        assert r.status_code not in (401, 403), (method, path, r.status_code)
    for method, path in admin:
        r = await sclient.request(method, _concrete(path), headers=READER)
        assert r.status_code == 403, (method, path, r.status_code)
        r = await sclient.request(method, _concrete(path), headers=BOSS)
        assert r.status_code not in (401, 403), (method, path, r.status_code)
