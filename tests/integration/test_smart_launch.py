"""The evidence page as a SMART on FHIR app, launched end to end against the fake FHIR server
acting as the EHR (a real loopback server): EHR launch (``launch`` + ``iss``), discovery of
``.well-known/smart-configuration``, authorization code with PKCE S256, token exchange, the
patient from the token response, the page read from the EHR's FHIR server with the token.
The browser is played by the test: each redirect is followed by hand so every hop is checked."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from services.recommender.evidence.smart import code_challenge
from shared.settings import CdsConfig, ConfigFile, Settings, SmartApp, Source, TrustedIssuer
from tests.api.cds.conftest import CDS, ISSUER, CdsClient
from tests.api.cds.test_vignettes import hook_request
from tests.conftest import FIXTURES
from tests.fakes.fhir_server import FakeEhrAuth, FakeFhirServer, LiveServer, serve_in_thread

BASE = "http://pinpoint.test"
CLIENT = "pinpoint-evidence"
JWKS_PUBLIC = "smart-jwks-ES384-public.json"
REDIRECT = f"{BASE}/smart/ehr/callback"
V02 = FIXTURES / "vignettes" / "v02-two-concordant-blocks" / "bundle.json"
HTML = {"accept": "text/html,application/xhtml+xml"}


@pytest.fixture(scope="module")
def ehr() -> Iterator[LiveServer]:
    fake = FakeFhirServer(ehr=FakeEhrAuth(apps={CLIENT: [REDIRECT]}))
    fake.load_bundle(json.loads(V02.read_text()))
    with serve_in_thread(fake) as live:
        yield live


@dataclass
class Pinpoint:
    app: FastAPI
    client: httpx.AsyncClient  # the browser's view of Pinpoint
    ehr: LiveServer


@pytest.fixture
async def pinpoint(db_url: str, engine: Engine, ehr: LiveServer) -> AsyncIterator[Pinpoint]:
    from services.server import Role, build_app

    config = ConfigFile(
        sources=[Source(id="ehr", fhir_base_url=ehr.base_url, smart_app=SmartApp(client_id=CLIENT))],  # type: ignore[arg-type]
        cds=CdsConfig(
            trusted_issuers=[TrustedIssuer(iss=ISSUER, jwks_file=CDS / "smart-jwks-ES384-public.json")]
        ),
    )
    settings = Settings(
        database_url=db_url,
        public_base_url=BASE,  # type: ignore[arg-type]
        api_tokens=["reader"],
        config=config,
        _env_file=None,  # type: ignore[call-arg]
    )
    app = build_app(settings, Role.recommender, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Pinpoint(app, client, ehr)
    for hook in app.state.runtime.on_shutdown:
        await hook()


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def _launch(p: Pinpoint, launch: str) -> httpx.Response:
    """EHR → Pinpoint launch → EHR authorize → Pinpoint callback; the callback's answer."""
    r = await p.client.get("/smart/ehr/launch", params={"launch": launch, "iss": p.ehr.base_url})
    assert r.status_code == 302, r.text
    authorize = r.headers["location"]
    q = _query(authorize)
    assert authorize.startswith(p.ehr.origin + "/auth/authorize?")
    assert q["response_type"] == "code" and q["client_id"] == CLIENT and q["redirect_uri"] == REDIRECT
    assert q["launch"] == launch and q["aud"] == p.ehr.base_url and q["code_challenge_method"] == "S256"
    assert "launch" in q["scope"].split() and len(q["code_challenge"]) == 43 and q["state"]
    async with httpx.AsyncClient() as browser:  # the EHR's authorization server, over loopback
        back = await browser.get(authorize)
    assert back.status_code == 302, back.text
    callback = back.headers["location"]
    assert callback.startswith(REDIRECT + "?") and _query(callback)["state"] == q["state"]
    return await p.client.get(callback.removeprefix(BASE))


async def test_ehr_launch_with_pkce_opens_the_patients_evidence_read_from_the_ehr(pinpoint: Pinpoint) -> None:
    fake = pinpoint.ehr.fake
    fake.clear_requests()
    done = await _launch(pinpoint, fake.new_launch("P-001", "card=c0ffee"))
    assert done.status_code == 303 and done.headers["location"] == "/smart/evidence"
    cookie = done.headers["set-cookie"]
    assert "pinpoint_smart=" in cookie and "httponly" in cookie.lower() and "path=/smart" in cookie.lower()
    # the token request carried the verifier whose S256 hash was the challenge (the fake checks it)
    [token_request] = fake.requests_to("POST", "/auth/token")
    form = {k: v[0] for k, v in parse_qs(token_request.body.decode()).items()}
    assert form["grant_type"] == "authorization_code" and form["client_id"] == CLIENT
    authorize = fake.requests_to("GET", "/auth/authorize")[0]
    assert code_challenge(form["code_verifier"]) == dict(authorize.params)["code_challenge"]
    assert token_request.status == 200

    page = await pinpoint.client.get("/smart/evidence", headers=HTML)
    assert page.status_code == 200, page.text
    text = page.text
    assert "<h1>Base-L Testpatient</h1>" in text  # the header from the EHR's Patient resource
    assert "Born 12 Jun 1957" in text and "Female" in text
    assert "Read from the EHR just now." in text
    assert "Facet radiofrequency ablation — right lumbar L4-L5, L5-S1" in text
    assert "criteria met" in text.lower()
    # read from the EHR's FHIR server with the access token the launch obtained
    reads = [r for r in fake.requests if r.path.startswith(("Procedure", "Observation", "Patient/"))]
    tokens = {r.headers.get("authorization") for r in reads}
    assert reads and len(tokens) == 1 and next(iter(tokens), "").startswith("Bearer ")
    issued = next(iter(tokens)).removeprefix("Bearer ")
    assert fake.token_patients[issued] == "P-001"
    assert all(r.status == 200 for r in reads)


async def test_the_session_is_the_launch_patients_only(pinpoint: Pinpoint) -> None:
    # no cookie: a browser is told what to do, an API client gets the OperationOutcome
    page = await pinpoint.client.get("/smart/evidence", headers=HTML)
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert "open Pinpoint again from the patient" in page.text
    api = await pinpoint.client.get("/smart/evidence", headers={"accept": "application/fhir+json"})
    assert api.status_code == 401 and api.json()["resourceType"] == "OperationOutcome"
    # a forged cookie opens nothing
    forged = await pinpoint.client.get("/smart/evidence", headers={"cookie": "pinpoint_smart=forged"})
    assert forged.status_code == 401


async def test_launch_refusals(pinpoint: Pinpoint) -> None:
    fake = pinpoint.ehr.fake
    # an iss that is not the source's FHIR server is never contacted
    fake.clear_requests()
    r = await pinpoint.client.get(
        "/smart/ehr/launch", params={"launch": "x", "iss": "http://127.0.0.1:9/evil"}, headers=HTML
    )
    assert r.status_code == 400 and "iss is not the FHIR server of source ehr" in r.text
    assert fake.requests == []
    # no launch parameters, or an unknown source
    assert (await pinpoint.client.get("/smart/ehr/launch")).status_code == 400
    assert (
        await pinpoint.client.get("/smart/nowhere/launch", params={"launch": "x", "iss": "y"})
    ).status_code == 404
    # a state Pinpoint did not issue (or replayed) is refused before any token request
    r = await pinpoint.client.get("/smart/ehr/callback", params={"code": "c", "state": "made-up"})
    assert r.status_code == 401
    # the EHR refusing the launch (unknown launch id) comes back as an error, not a session
    r = await _launch_unknown(pinpoint)
    assert r.status_code == 401 and "set-cookie" not in r.headers


async def _launch_unknown(p: Pinpoint) -> httpx.Response:
    r = await p.client.get("/smart/ehr/launch", params={"launch": "never-issued", "iss": p.ehr.base_url})
    async with httpx.AsyncClient() as browser:
        back = await browser.get(r.headers["location"])
    assert _query(back.headers["location"])["error"] == "invalid_request"
    return await p.client.get(back.headers["location"].removeprefix(BASE))


async def test_a_wrong_verifier_is_refused_by_the_ehr(pinpoint: Pinpoint) -> None:
    fake = pinpoint.ehr.fake
    r = await pinpoint.client.get(
        "/smart/ehr/launch", params={"launch": fake.new_launch("P-001"), "iss": pinpoint.ehr.base_url}
    )
    smart: Any = pinpoint.app.state.recommender.smart
    for pending in smart.pending.values():  # as if an attacker had swapped the code
        pending.verifier = "x" * 64
    async with httpx.AsyncClient() as browser:
        back = await browser.get(r.headers["location"])
    done = await pinpoint.client.get(back.headers["location"].removeprefix(BASE))
    assert done.status_code == 401 and "set-cookie" not in done.headers
    assert fake.requests_to("POST", "/auth/token")[-1].status == 400


async def test_a_card_of_a_smart_source_carries_a_smart_link_whose_launch_opens_its_evidence(
    pinpoint: Pinpoint,
) -> None:
    body, _ = hook_request("v02-two-concordant-blocks")
    body["fhirServer"] = pinpoint.ehr.base_url  # the prefetch is complete: nothing to fetch
    path = "/cds-services/pinpoint-order-sign"
    token = CdsClient(pinpoint.client, clock=time.time).token(path, claims={"aud": BASE + path})
    r = await pinpoint.client.post(path, json=body, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    [link] = card["links"]
    assert link == {
        "label": "Evidence in Pinpoint",
        "url": f"{BASE}/smart/ehr/launch",
        "type": "smart",
        "appContext": f"card={card['uuid']}",
    }
    await pinpoint.app.state.recommender.cds.snapshots.flush()
    fake = pinpoint.ehr.fake
    done = await _launch(pinpoint, fake.new_launch("P-001", link["appContext"]))
    assert done.status_code == 303
    # the EHR's FHIR server refuses the token now: the page falls back to the card's snapshot
    fake.revoke_tokens()
    page = await pinpoint.client.get("/smart/evidence", headers=HTML)
    assert page.status_code == 200, page.text
    assert "from the EHR&#39;s data (Pinpoint stores no data for this patient)" in page.text
    assert "<h1>Base-L Testpatient</h1>" in page.text


async def test_a_confidential_client_authenticates_with_its_secret(pinpoint: Pinpoint) -> None:
    fake = pinpoint.ehr.fake
    assert fake.ehr is not None
    smart: Any = pinpoint.app.state.recommender.smart
    config = smart.settings.config
    source = config.sources[0]
    app = source.smart_app.model_copy(update={"client_secret": SecretStr("s3cret/+")})
    sources = [source.model_copy(update={"smart_app": app})]
    smart.settings = smart.settings.model_copy(
        update={"config": config.model_copy(update={"sources": sources})}
    )
    fake.ehr.secrets[CLIENT] = "s3cret/+"
    try:
        done = await _launch(pinpoint, fake.new_launch("P-001"))
        assert done.status_code == 303
        token_request = fake.requests_to("POST", "/auth/token")[-1]
        assert token_request.headers["authorization"].startswith("Basic ")
        assert "client_id" not in parse_qs(token_request.body.decode())
        fake.ehr.secrets[CLIENT] = "another"  # a wrong secret: no session
        assert (await _launch(pinpoint, fake.new_launch("P-001"))).status_code == 401
    finally:
        del fake.ehr.secrets[CLIENT]
