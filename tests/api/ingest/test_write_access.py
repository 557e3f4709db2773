"""No open write path by accident (issue 18, finding 2).

Once any credential is configured (API or admin tokens, a source's inbound credential, CDS trusted
issuers), every write to a FHIR base needs the credential of its source; a source without one is
closed unless the configuration says ``open: true``. ``/fhir`` is the source ``default``: API
tokens grant reads, never writes. The bind guard counts only the credentials of the read and
write paths.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from services.server import Role, build_app
from shared.errors import ConfigError
from shared.settings import CdsConfig, ConfigFile, Settings, Source, TrustedIssuer, load_settings
from tests.api.evidence.test_access import _routes
from tests.api.ingest.helpers import FHIR, body, dead_letters, mbb, patient, stored
from tests.conftest import FIXTURES

READER = {"authorization": "Bearer reader"}
BOSS = {"authorization": "Bearer boss"}
ISSUER = TrustedIssuer(
    iss="https://ehr.example/cds", jwks_file=FIXTURES / "cds" / "smart-jwks-ES384-public.json"
)


def _settings(db_url: str, **kw: Any) -> Settings:
    return Settings(database_url=db_url, _env_file=None, **kw)  # type: ignore[call-arg]


@pytest.fixture
async def make_client(engine: Engine) -> AsyncIterator[Any]:
    opened: list[tuple[httpx.AsyncClient, FastAPI]] = []

    async def make(settings: Settings) -> httpx.AsyncClient:
        app = build_app(settings, Role.all, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://pinpoint.test")
        opened.append((client, app))
        return client

    yield make
    for client, app in opened:
        await client.aclose()
        for hook in app.state.runtime.on_shutdown:
            await hook()


def _refused(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "login"


async def _every_write(client: httpx.AsyncClient, base: str, headers: dict[str, str]) -> list[httpx.Response]:
    h = {**FHIR, **headers}
    return [
        await client.post(base, content=body(patient()), headers=h),
        await client.post(f"{base}/Procedure", content=body(mbb("x")), headers=h),
        await client.put(f"{base}/Procedure/x", content=body(mbb("x")), headers=h),
        await client.put(f"{base}/Procedure/x/_history/2", content=body(mbb("x")), headers=h),
        await client.delete(f"{base}/Procedure/x", headers=headers),
        await client.post(base, content=b"", headers=h),  # a ping
    ]


async def test_api_and_admin_tokens_close_the_default_source(
    db_url: str, engine: Engine, make_client: Any
) -> None:
    """Probe: with API and admin tokens configured, ``DELETE /fhir/Procedure/x`` without a token
    answered 200 and the resource then read 410."""
    client = await make_client(_settings(db_url, api_tokens=["reader"], admin_tokens=["boss"]))
    for headers in ({}, READER, BOSS, {"authorization": "Bearer wrong"}):
        for r in await _every_write(client, "/fhir", headers):
            _refused(r)
    assert stored(engine) == {} and dead_letters(engine) == []  # 401: nothing kept (CONTRACT §2)


async def test_trusted_issuers_alone_close_every_source(
    db_url: str, engine: Engine, make_client: Any
) -> None:
    """Probe: with only ``cds.trusted_issuers`` set, ``POST /fhir`` and ``/sources/{id}/fhir`` were
    open and the injected data fed the cards."""
    config = ConfigFile(sources=[Source(id="hospital-a")], cds=CdsConfig(trusted_issuers=[ISSUER]))
    client = await make_client(_settings(db_url, config=config))
    for base in ("/fhir", "/sources/hospital-a/fhir"):
        for r in await _every_write(client, base, {}):
            _refused(r)
    assert stored(engine) == {}


async def test_each_source_takes_only_its_own_credential(
    db_url: str, engine: Engine, make_client: Any
) -> None:
    config = ConfigFile.model_validate(
        {
            "sources": [
                {"id": "default", "inbound": {"bearer": "default-push"}},
                {"id": "hospital-a", "inbound": {"bearer": "a-push"}},
                {"id": "hospital-b"},
            ]
        }
    )
    client = await make_client(_settings(db_url, api_tokens=["reader"], config=config))
    _refused(await client.post("/fhir", content=body(patient()), headers={**FHIR, **READER}))
    _refused(
        await client.post(
            "/fhir", content=body(patient()), headers={**FHIR, "authorization": "Bearer a-push"}
        )
    )
    for r in await _every_write(client, "/sources/hospital-b/fhir", {"authorization": "Bearer a-push"}):
        _refused(r)
    r = await client.post(
        "/fhir", content=body(patient()), headers={**FHIR, "authorization": "Bearer default-push"}
    )
    assert r.status_code == 201, r.text
    r = await client.put(
        "/sources/hospital-a/fhir/Patient/P-2",
        content=body(patient("P-2")),
        headers={**FHIR, "authorization": "Bearer a-push"},
    )
    assert r.status_code == 201, r.text
    assert set(stored(engine)) == {("Patient", "P-1"), ("Patient", "P-2")}


async def test_a_source_open_by_configuration_takes_writes_without_a_credential(
    db_url: str, engine: Engine, make_client: Any
) -> None:
    config = ConfigFile(sources=[Source(id="default", open=True), Source(id="lab", open=True)])
    client = await make_client(_settings(db_url, api_tokens=["reader"], config=config))
    assert (await client.post("/fhir", content=body(patient()), headers=FHIR)).status_code == 201
    r = await client.put("/sources/lab/fhir/Patient/P-9", content=body(patient("P-9")), headers=FHIR)
    assert r.status_code == 201
    assert (await client.delete("/fhir/Patient/P-1")).status_code == 200
    _refused(await client.get("/fhir/Patient/P-9"))  # reads still need the API token


async def test_without_any_credential_everything_is_open_on_loopback(
    db_url: str, engine: Engine, make_client: Any
) -> None:
    client = await make_client(_settings(db_url, config=ConfigFile(sources=[Source(id="hospital-a")])))
    assert (await client.post("/fhir", content=body(patient()), headers=FHIR)).status_code == 201
    r = await client.post("/sources/hospital-a/fhir", content=body(patient("P-3")), headers=FHIR)
    assert r.status_code == 201


async def test_every_write_route_is_guarded(db_url: str, engine: Engine, make_client: Any) -> None:
    """A walk over the app's routes: any non-GET route under a FHIR base refuses without the
    source's credential (a route added later is covered, or this test names it)."""
    settings = _settings(db_url, api_tokens=["reader"], config=ConfigFile(sources=[Source(id="a")]))
    client = await make_client(settings)
    app = client._transport.app  # type: ignore[attr-defined]
    writes = sorted(
        (method, path)
        for method, path in _routes(app)
        if path.startswith(("/fhir", "/sources/")) and method != "GET"
    )
    assert len(writes) >= 12
    for method, path in writes:
        url = path.replace("{source_id}", "a").replace("{rtype}", "Procedure").replace("{rid}", "x")
        url = url.replace("{vid}", "1")
        _refused(await client.request(method, url, content=body(mbb("x")), headers={**FHIR, **READER}))


# --------------------------------------------------------------------- configuration, bind guard


def test_open_and_inbound_together_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sources: [{id: a, open: true, inbound: {bearer: t}}]")
    monkeypatch.setenv("PINPOINT_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match=r"sources\.0"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    ("kw", "allowed"),
    [
        pytest.param(
            {"config": ConfigFile(cds=CdsConfig(trusted_issuers=[ISSUER]))}, False, id="issuers-only"
        ),
        pytest.param(
            {"config": ConfigFile(sources=[Source(id="lab", open=True)])}, False, id="open-source-only"
        ),
        pytest.param({"api_tokens": ["r"]}, True, id="api-tokens"),
        pytest.param({"admin_tokens": ["b"]}, True, id="admin-tokens"),
        pytest.param(
            {"config": ConfigFile.model_validate({"sources": [{"id": "a", "inbound": {"bearer": "t"}}]})},
            True,
            id="inbound",
        ),
    ],
)
def test_bind_guard_counts_only_read_and_write_credentials(kw: dict[str, Any], allowed: bool) -> None:
    s = Settings(host="0.0.0.0", _env_file=None, **kw)  # type: ignore[call-arg]
    if allowed:
        s.check_bind()
    else:
        with pytest.raises(ConfigError, match=r"refusing to bind 0\.0\.0\.0"):
            s.check_bind()


def test_an_open_source_on_a_public_bind_is_named_in_a_warning() -> None:
    config = ConfigFile(sources=[Source(id="lab-feed", open=True), Source(id="closed")])
    s = Settings(host="0.0.0.0", api_tokens=["r"], config=config, _env_file=None)  # type: ignore[call-arg]
    with structlog.testing.capture_logs() as logs:
        assert s.check_bind() == ["lab-feed"]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["event"], e["source"]) for e in warnings] == [("config.source.open", "lab-feed")]
    with structlog.testing.capture_logs() as logs:
        assert s.check_bind("127.0.0.1") == []
    assert logs == []
