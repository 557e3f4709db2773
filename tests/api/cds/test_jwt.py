"""Trusting CDS clients: every call needs a valid JWT once issuers are trusted (401 otherwise)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx
import sqlalchemy as sa

from services.recommender.cds_hooks.auth import JwksStore, jti_ledger, verify_client_jwt
from shared.db.models import SeenJti
from shared.errors import Unauthorized
from shared.settings import CdsConfig, TrustedIssuer
from tests.api.cds.conftest import (
    BASE,
    CDS,
    ISSUER,
    RSA_ISSUER,
    CdsApp,
    private_key,
    request_with_context,
    unsigned,
    vector,
)

PV = "/cds-services/pinpoint-patient-view"


def _body() -> dict[str, Any]:
    body = request_with_context("cdshooks-context-patient-view-0-examples.json", "patient-view")
    body["prefetch"] = {"patient": None}
    return body


def _assert_401(r: httpx.Response, why: str) -> None:
    assert r.status_code == 401, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "login"
    assert why in outcome["issue"][0]["diagnostics"]


async def test_valid_es384_and_rs384_tokens_are_accepted_everywhere(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    assert (await es.get("/cds-services")).status_code == 200
    assert (await es.post(PV, _body())).status_code == 200
    fb = "/cds-services/pinpoint-patient-view/feedback"
    assert (
        await es.post(fb, vector("cdshooks-feedback-overridden-no-reason-spec-example.json"))
    ).status_code == 200
    rs = cds_secured.signer(
        iss=RSA_ISSUER, key_file="smart-jwks-RS384-private-EXAMPLE-ONLY.json", alg="RS384"
    )
    assert (await rs.post(PV, _body())).status_code == 200


async def test_audience_may_be_an_array_containing_the_endpoint(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    token = es.token(PV, claims={"aud": ["https://elsewhere.example", BASE + PV]})
    assert (await es.post(PV, _body(), token)).status_code == 200


async def test_missing_token_is_401(cds_secured: CdsApp) -> None:
    _assert_401(await cds_secured.client.get("/cds-services"), "no bearer JWT")
    _assert_401(await cds_secured.client.post(PV, json=_body()), "no bearer JWT")


async def test_alg_none_is_refused(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    claims = json.loads(json.dumps({"iss": ISSUER, "aud": BASE + PV, "exp": 2e9, "iat": 1.7e9, "jti": "x"}))
    token = unsigned(claims, {"alg": "none", "typ": "JWT", "kid": "cd520211e5661dbba2256f67f6d53f97"})
    _assert_401(await es.post(PV, _body(), token), "algorithm not allowed")


async def test_hs256_signed_with_the_public_key_is_refused(cds_secured: CdsApp) -> None:
    """The classic key-confusion attack: HMAC keyed with the issuer's public JWKS bytes."""
    es = cds_secured.signer()
    public = (CDS / "smart-jwks-ES384-public.json").read_bytes()
    header = {"alg": "HS256", "typ": "JWT", "kid": "cd520211e5661dbba2256f67f6d53f97"}
    now = int(es.clock())
    claims = {"iss": ISSUER, "aud": BASE + PV, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    head = unsigned(claims, header).rsplit(".", 1)[0]
    sig = hmac.new(public, head.encode(), hashlib.sha256).digest()
    _assert_401(await es.post(PV, _body(), unsigned(claims, header, sig)), "algorithm not allowed")


async def test_bad_signature_is_refused(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    token = es.token(PV)
    head, _payload, sig = token.split(".")
    forged_payload = es.token(PV, claims={"iss": ISSUER, "jti": "other"}).split(".")[1]
    _assert_401(await es.post(PV, _body(), f"{head}.{forged_payload}.{sig}"), "invalid")


async def test_wrong_audience_is_refused(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    # a token for another endpoint of ours, and one for the right path on another host
    _assert_401(await es.post(PV, _body(), es.token("/cds-services/pinpoint-order-sign")), "wrong audience")
    token = es.token(PV, claims={"aud": "https://evil.example" + PV})
    _assert_401(await es.post(PV, _body(), token), "wrong audience")


async def test_expired_and_future_tokens_are_refused(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    now = int(es.clock())
    skew = 300  # cds.clock_skew default 5 min
    old = es.token(PV, claims={"iat": now - 4000, "exp": now - skew - 1})
    _assert_401(await es.post(PV, _body(), old), "expired")
    future = es.token(PV, claims={"iat": now + skew + 60, "exp": now + skew + 600})
    _assert_401(await es.post(PV, _body(), future), "issued in the future")
    # within the skew both are fine
    near = es.token(PV, claims={"iat": now + 60, "exp": now - 60})
    assert (await es.post(PV, _body(), near)).status_code == 200


async def test_replayed_jti_is_refused_and_kept_in_the_database(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    token = es.token(PV)
    assert (await es.post(PV, _body(), token)).status_code == 200
    _assert_401(await es.post(PV, _body(), token), "replay")
    with cds_secured.engine.connect() as conn:
        rows = conn.execute(sa.select(SeenJti.__table__.c.iss)).all()  # type: ignore[attr-defined]
    assert [r[0] for r in rows] == [ISSUER]


async def test_unknown_kid_and_unlisted_issuer_are_refused(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    _assert_401(await es.post(PV, _body(), es.token(PV, kid="rotated-away")), "unknown kid")
    stranger = cds_secured.signer(iss="https://stranger.example")
    _assert_401(await stranger.post(PV, _body()), "issuer not trusted")


async def test_key_of_another_trusted_issuer_is_not_accepted(cds_secured: CdsApp) -> None:
    """The RS384 key belongs to RSA_ISSUER: a token claiming ISSUER with it finds no such kid."""
    mixed = cds_secured.signer(iss=ISSUER, key_file="smart-jwks-RS384-private-EXAMPLE-ONLY.json", alg="RS384")
    _assert_401(await mixed.post(PV, _body()), "unknown kid")


# ------------------------------------------------------------------------- verifier unit tests


def _spec_config(tmp_path: Path) -> CdsConfig:
    spec = vector("cdshooks-client-jwt-es384-spec-example.json")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(spec["jwks_public"]))
    return CdsConfig(trusted_issuers=[TrustedIssuer(iss=spec["jwt_payload"]["iss"], jwks_file=jwks)])


async def test_spec_example_jwt_verifies_with_a_pinned_clock_and_never_follows_jku(
    tmp_path: Path, engine: sa.engine.Engine
) -> None:
    spec = vector("cdshooks-client-jwt-es384-spec-example.json")
    cds = _spec_config(tmp_path)
    store = JwksStore(http=lambda: httpx.AsyncClient())
    header = f"Bearer {spec['authorization_header_jwt']}"
    aud = spec["jwt_payload"]["aud"]
    then = datetime(2015, 1, 29, 12, tzinfo=UTC)
    with respx.mock(assert_all_mocked=True) as mock:
        caller = await verify_client_jwt(
            header,
            audience=aud,
            cds=cds,
            jwks=store,
            seen=jti_ledger(engine, lambda: then),
            now=then,
        )
        assert (
            caller.iss == "https://fhir-ehr.example.com/" and caller.tenant == spec["jwt_payload"]["tenant"]
        )
        with pytest.raises(Unauthorized, match="replay"):
            await verify_client_jwt(
                header,
                audience=aud,
                cds=cds,
                jwks=store,
                seen=jti_ledger(engine, lambda: then),  # another replica's writer
                now=then,
            )
    assert mock.calls.call_count == 0  # the jku header (fhir-ehr.example.com) was not fetched


async def test_spec_example_jwt_is_expired_today(tmp_path: Path, engine: sa.engine.Engine) -> None:
    spec = vector("cdshooks-client-jwt-es384-spec-example.json")
    with pytest.raises(Unauthorized, match="expired"):
        await verify_client_jwt(
            f"Bearer {spec['authorization_header_jwt']}",
            audience=spec["jwt_payload"]["aud"],
            cds=_spec_config(tmp_path),
            jwks=JwksStore(http=lambda: httpx.AsyncClient()),
            seen=jti_ledger(engine),
            now=datetime.now(UTC),
        )


async def test_jwks_url_is_fetched_once_cached_and_refreshed_for_a_new_kid(engine: sa.engine.Engine) -> None:
    """Only the configured JWKS URL is ever fetched; a second call uses the cache; an unknown kid
    triggers at most one refresh per REFRESH_MIN."""
    spec = vector("cdshooks-client-jwt-es384-spec-example.json")
    url = "https://ehr.example/jwks.json"
    cds = CdsConfig(trusted_issuers=[TrustedIssuer(iss=spec["jwt_payload"]["iss"], jwks_url=url)])  # type: ignore[arg-type]
    clock = [1000.0]
    async with httpx.AsyncClient() as http:
        store = JwksStore(http=lambda: http, clock=lambda: clock[0])
        with respx.mock(assert_all_mocked=True) as mock:
            route = mock.get(url).respond(json=spec["jwks_public"])
            key = await store.key(cds.trusted_issuers[0], "example-kid")
            assert key is not None and key["crv"] == "P-384"
            assert await store.key(cds.trusted_issuers[0], "example-kid") == key
            assert route.call_count == 1
            assert await store.key(cds.trusted_issuers[0], "new-kid") is None
            assert await store.key(cds.trusted_issuers[0], "new-kid") is None
            assert route.call_count == 1  # a fresh cache is not refetched for every unknown kid
            clock[0] += 31
            assert await store.key(cds.trusted_issuers[0], "new-kid") is None
            assert route.call_count == 2


async def test_wrong_typ_is_refused(cds_secured: CdsApp) -> None:
    es = cds_secured.signer()
    kid, key = private_key("smart-jwks-ES384-private-EXAMPLE-ONLY.json")
    now = int(es.clock())
    claims = {"iss": ISSUER, "aud": BASE + PV, "exp": now + 60, "iat": now, "jti": str(uuid.uuid4())}
    token = jwt.encode(claims, key, algorithm="ES384", headers={"kid": kid, "typ": "at+jwt"})
    _assert_401(await es.post(PV, _body(), token), "typ must be JWT")


async def test_cors_preflight_from_a_configured_origin(db_url: str, engine: sa.engine.Engine) -> None:
    from services.server import Role, build_app
    from tests.api.cds.conftest import make_settings

    settings = make_settings(db_url).model_copy(update={"cors_origins": ["https://ehr.example"]})
    app = build_app(settings, Role.all, engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        headers = {
            "Origin": "https://ehr.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        r = await client.options(PV, headers=headers)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ehr.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = await client.options(PV, headers={**headers, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
