"""SMART Backend Services auth: assertions checked with the PUBLIC vector keys, caching, 401."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from shared.errors import ConfigError
from shared.fhir.client import FhirClient, RetryPolicy
from shared.fhir.errors import FhirAuthError, SmartAuthError
from shared.fhir.smart import CLIENT_ASSERTION_TYPE, SmartBackendAuth, SmartCredentials, load_signing_key
from tests.conftest import SHARED_COPIES
from tests.unit.fhir.conftest import BASE, TOKEN_URL, RecordingSleep

VECTORS = SHARED_COPIES / "vectors"
ALGS = ["RS384", "ES384"]
PATIENT = {"resourceType": "Patient", "id": "p1"}
SCOPES = "system/Patient.r system/Observation.rs"


def vector(name: str) -> str:
    return (VECTORS / name).read_text()


def private_jwks(alg: str) -> str:
    return vector(f"smart-jwks-{alg}-private-EXAMPLE-ONLY.json")


def public_key(alg: str) -> Any:
    jwks = json.loads(vector(f"smart-jwks-{alg}-public.json"))
    return jwt.PyJWK(jwks["keys"][0], alg).key


def pem_of(alg: str) -> str:
    key = load_signing_key(private_jwks(alg), alg).key
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


class Clock:
    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def credentials(alg: str = "RS384", key: str | None = None, kid: str | None = None) -> SmartCredentials:
    return SmartCredentials(
        client_id="pinpoint",
        token_url=TOKEN_URL,
        private_key_pem=key if key is not None else private_jwks(alg),
        alg=alg,
        scopes=SCOPES,
        kid=kid,
    )


def token_response(token: str = "tok-1", expires_in: int = 300, **extra: Any) -> httpx.Response:
    body = {"access_token": token, "token_type": "bearer", "expires_in": expires_in, "scope": SCOPES, **extra}
    return httpx.Response(200, json=body)


def fhir(http: httpx.AsyncClient, auth: SmartBackendAuth, sleep: RecordingSleep | None = None) -> FhirClient:
    return FhirClient(
        BASE,
        http,
        auth=auth,
        sleep=sleep or RecordingSleep(),
        rng=random.Random(1),
        retry=RetryPolicy(max_attempts=3),
    )


# ---------------------------------------------------------------- the client assertion


@pytest.mark.parametrize("alg", ALGS)
def test_assertion_verifies_with_the_public_vector_key(alg: str) -> None:
    clock = Clock()
    auth = SmartBackendAuth(credentials(alg), clock=clock)

    token = auth.build_assertion()

    header = jwt.get_unverified_header(token)
    expected_kid = json.loads(vector(f"smart-jwks-{alg}-public.json"))["keys"][0]["kid"]
    assert header == {"alg": alg, "kid": expected_kid, "typ": "JWT"}
    claims = jwt.decode(
        token,
        public_key(alg),
        algorithms=[alg],
        audience=TOKEN_URL,
        options={"verify_exp": False},
    )
    assert claims["iss"] == claims["sub"] == "pinpoint"
    assert claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - clock.now <= 300
    assert set(claims) == {"iss", "sub", "aud", "exp", "jti"}
    assert claims["jti"]


@pytest.mark.parametrize("alg", ALGS)
def test_a_signature_by_another_key_does_not_verify(alg: str) -> None:
    other = "ES384" if alg == "RS384" else "RS384"
    token = SmartBackendAuth(credentials(other), clock=Clock()).build_assertion()
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(
            token, public_key(alg), algorithms=[alg], audience=TOKEN_URL, options={"verify_exp": False}
        )


def test_every_assertion_has_a_fresh_jti() -> None:
    auth = SmartBackendAuth(credentials(), clock=Clock())
    jtis = {jwt.decode(auth.build_assertion(), options={"verify_signature": False})["jti"] for _ in range(20)}
    assert len(jtis) == 20


@pytest.mark.parametrize("alg", ALGS)
def test_pem_keys_work_and_the_kid_defaults_to_the_jwk_thumbprint(alg: str) -> None:
    auth = SmartBackendAuth(credentials(alg, key=pem_of(alg)), clock=Clock())
    token = auth.build_assertion()
    jwk = auth.public_jwks()["keys"][0]
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    # RFC 7638: SHA-256 over the required public members, sorted, no whitespace
    members = {k: jwk[k] for k in ("kty", "n", "e", "crv", "x", "y") if k in jwk}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    assert jwk["kid"] == base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    jwt.decode(token, public_key(alg), algorithms=[alg], audience=TOKEN_URL, options={"verify_exp": False})


def test_an_explicit_kid_wins() -> None:
    auth = SmartBackendAuth(credentials("ES384", key=pem_of("ES384"), kid="key-2025"), clock=Clock())
    assert jwt.get_unverified_header(auth.build_assertion())["kid"] == "key-2025"


@pytest.mark.parametrize(
    ("alg", "key_alg"),
    [("RS384", "ES384"), ("ES384", "RS384"), ("RS256", "RS384"), ("HS256", "RS384")],
    ids=["rs-with-ec-key", "es-with-rsa-key", "rs256", "hs256"],
)
def test_a_key_that_does_not_fit_the_alg_is_a_config_error(alg: str, key_alg: str) -> None:
    with pytest.raises(ConfigError):
        SmartBackendAuth(credentials(alg, key=pem_of(key_alg)))


def test_garbage_keys_and_public_only_jwks_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        SmartBackendAuth(credentials(key="not a key"))
    with pytest.raises(ConfigError):
        SmartBackendAuth(credentials("ES384", key=vector("smart-jwks-ES384-public.json")))


def test_credentials_repr_hides_the_key() -> None:
    text = repr(credentials())
    assert '"d"' not in text
    assert "redacted" in text


# ---------------------------------------------------------------- the token flow


async def test_the_token_request_is_a_client_credentials_grant(
    router: respx.Router, http: httpx.AsyncClient
) -> None:
    token_route = router.post(TOKEN_URL).mock(return_value=token_response())
    fhir_route = router.get(f"{BASE}/Patient/p1").respond(200, json=PATIENT)
    auth = SmartBackendAuth(credentials("ES384"))

    await fhir(http, auth).read("Patient", "p1")

    sent = token_route.calls.last.request
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = dict(parse_qsl(sent.content.decode()))
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == SCOPES
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    jwt.decode(form["client_assertion"], public_key("ES384"), algorithms=["ES384"], audience=TOKEN_URL)
    assert fhir_route.calls.last.request.headers["Authorization"] == "Bearer tok-1"
    assert auth.granted_scopes == SCOPES


async def test_the_token_is_cached_until_shortly_before_expiry(
    router: respx.Router, http: httpx.AsyncClient
) -> None:
    clock = Clock()
    token_route = router.post(TOKEN_URL)
    token_route.side_effect = [token_response("tok-1", 300), token_response("tok-2", 300)]
    fhir_route = router.get(f"{BASE}/Patient/p1").respond(200, json=PATIENT)
    client = fhir(http, SmartBackendAuth(credentials(), clock=clock, refresh_margin=30))

    await client.read("Patient", "p1")
    clock.now += 269  # still 31 s left: cached
    await client.read("Patient", "p1")
    assert token_route.call_count == 1
    clock.now += 2  # 29 s left: refreshed
    await client.read("Patient", "p1")

    assert token_route.call_count == 2
    assert [c.request.headers["Authorization"] for c in fhir_route.calls] == ["Bearer tok-1"] * 2 + [
        "Bearer tok-2"
    ]


async def test_concurrent_requests_share_one_token_fetch(
    router: respx.Router, http: httpx.AsyncClient
) -> None:
    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # long enough for all requests to be waiting on the lock
        return token_response()

    token_route = router.post(TOKEN_URL).mock(side_effect=slow_token)
    fhir_route = router.get(f"{BASE}/Patient/p1").respond(200, json=PATIENT)
    client = fhir(http, SmartBackendAuth(credentials()))

    await asyncio.gather(*(client.read("Patient", "p1") for _ in range(10)))

    assert token_route.call_count == 1
    assert fhir_route.call_count == 10


async def test_a_401_refreshes_the_token_and_retries_once(
    router: respx.Router, http: httpx.AsyncClient
) -> None:
    token_route = router.post(TOKEN_URL)
    token_route.side_effect = [token_response("stale"), token_response("fresh")]
    presented: list[str] = []

    def resource_server(request: httpx.Request) -> httpx.Response:
        presented.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer stale":
            return httpx.Response(401)
        return httpx.Response(200, json=PATIENT)

    router.get(f"{BASE}/Patient/p1").mock(side_effect=resource_server)

    assert await fhir(http, SmartBackendAuth(credentials())).read("Patient", "p1") == PATIENT

    assert token_route.call_count == 2
    assert presented == ["Bearer stale", "Bearer fresh"]


async def test_a_second_401_is_raised(router: respx.Router, http: httpx.AsyncClient) -> None:
    token_route = router.post(TOKEN_URL).mock(side_effect=[token_response("a"), token_response("b")])
    fhir_route = router.get(f"{BASE}/Patient/p1").respond(401)

    with pytest.raises(FhirAuthError) as caught:
        await fhir(http, SmartBackendAuth(credentials())).read("Patient", "p1")

    assert caught.value.upstream_status == 401
    assert token_route.call_count == 2
    assert fhir_route.call_count == 2


async def test_a_refused_assertion_raises_smart_auth_error(
    router: respx.Router, http: httpx.AsyncClient
) -> None:
    router.post(TOKEN_URL).respond(400, json={"error": "invalid_client", "error_description": "bad kid"})
    fhir_route = router.get(f"{BASE}/Patient/p1").respond(200, json=PATIENT)

    with pytest.raises(SmartAuthError) as caught:
        await fhir(http, SmartBackendAuth(credentials())).read("Patient", "p1")

    assert caught.value.oauth_error == "invalid_client"
    assert caught.value.retryable is False
    assert not fhir_route.called


async def test_a_failing_token_endpoint_is_retried_by_the_client(
    router: respx.Router, http: httpx.AsyncClient
) -> None:
    token_route = router.post(TOKEN_URL)
    token_route.side_effect = [httpx.Response(503), token_response()]
    router.get(f"{BASE}/Patient/p1").respond(200, json=PATIENT)
    sleep = RecordingSleep()

    assert await fhir(http, SmartBackendAuth(credentials()), sleep).read("Patient", "p1") == PATIENT

    assert token_route.call_count == 2
    assert len(sleep.delays) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "bearer", "expires_in": 300},
        {"access_token": "t", "token_type": "mac", "expires_in": 300},
    ],
    ids=["no-access-token", "not-bearer"],
)
async def test_unusable_token_responses(
    router: respx.Router, http: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    router.post(TOKEN_URL).respond(200, json=body)
    with pytest.raises(SmartAuthError):
        await fhir(http, SmartBackendAuth(credentials())).read("Patient", "p1")


async def test_token_type_is_compared_case_insensitively(
    router: respx.Router, http: httpx.AsyncClient
) -> None:
    router.post(TOKEN_URL).respond(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 300})
    route = router.get(f"{BASE}/Patient/p1").respond(200, json=PATIENT)
    await fhir(http, SmartBackendAuth(credentials())).read("Patient", "p1")
    assert route.calls.last.request.headers["Authorization"] == "Bearer t"


async def test_smart_configuration_is_fetched_without_a_token(
    router: respx.Router, http: httpx.AsyncClient
) -> None:
    token_route = router.post(TOKEN_URL).mock(return_value=token_response())
    route = router.get(f"{BASE}/.well-known/smart-configuration").respond(
        200, json={"token_endpoint": TOKEN_URL}
    )
    config = await fhir(http, SmartBackendAuth(credentials())).smart_configuration()
    assert config["token_endpoint"] == TOKEN_URL
    assert "Authorization" not in route.calls.last.request.headers
    assert route.calls.last.request.headers["Accept"] == "application/json"
    assert not token_route.called


def test_the_assertion_lifetime_cannot_exceed_five_minutes() -> None:
    with pytest.raises(ConfigError):
        SmartBackendAuth(credentials(), assertion_lifetime=301)


def test_sync_clients_are_refused() -> None:
    auth = SmartBackendAuth(credentials())
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    with httpx.Client(transport=transport) as client, pytest.raises(RuntimeError):
        client.get("https://x.example/", auth=auth)
