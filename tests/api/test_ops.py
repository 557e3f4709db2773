"""Operations endpoints on every role: /livez, /readyz, /metrics, request ids."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.engine import Engine

from services.server import Role, build_app
from shared.db.session import make_engine
from shared.settings import Settings


async def test_livez(client: httpx.AsyncClient) -> None:
    r = await client.get("/livez")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_reports_each_check(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["migrations"] == "ok"
    assert body["checks"]["audit"] == "ok"  # the CDS audit writer (shared/db/group_commit.py)


async def test_readyz_fails_when_migrations_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    eng = make_engine(url)
    app = build_app(Settings(database_url=url, _env_file=None), Role.all, eng)  # type: ignore[call-arg]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/readyz")
    eng.dispose()
    assert r.status_code == 503
    assert r.json()["status"] == "fail"
    assert "pinpoint db upgrade" in r.json()["checks"]["migrations"]


async def test_readyz_fails_when_database_unreachable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    eng = make_engine(url)
    app = build_app(Settings(database_url=url, _env_file=None), Role.ingest, eng)  # type: ignore[call-arg]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/readyz")
    eng.dispose()
    assert r.status_code == 503
    assert r.json()["checks"]["database"].startswith("unreachable")


async def test_metrics_label_route_templates_not_raw_paths(client: httpx.AsyncClient) -> None:
    await client.get("/fhir/Patient/SECRET-PATIENT-ID")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'route="/fhir/{rtype}/{rid}"' in text
    assert "pinpoint_http_request_duration_seconds_bucket" in text
    assert "SECRET-PATIENT-ID" not in text


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    r = await client.get("/livez", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r2 = await client.get("/livez")
    assert len(r2.headers["x-request-id"]) == 32


@pytest.mark.parametrize("role", list(Role))
async def test_every_role_serves_probes(role: Role, settings: Settings, engine: Engine) -> None:
    app = build_app(settings, role, engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/livez")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
