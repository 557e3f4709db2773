"""SMART Backend Services (SMART App Launch 2.2.0, ``client-confidential-asymmetric``).

:class:`SmartBackendAuth` is an :class:`httpx.Auth` (async flow only) that obtains a bearer token
with the ``client_credentials`` grant authenticated by a ``private_key_jwt`` client assertion, and
puts it on every request::

    auth = SmartBackendAuth(SmartCredentials(client_id=..., token_url=..., private_key_pem=pem,
                                             alg="RS384", scopes="system/Observation.rs"))
    fhir = FhirClient(base_url, http_client, auth=auth)

- the assertion: header ``alg`` (RS384|ES384), ``kid``, ``typ: JWT``; claims ``iss`` = ``sub`` =
  client_id, ``aud`` = token URL, ``exp`` at most 5 minutes ahead, a fresh ``jti``, ``iat``;
- the key: a PEM private key, or a JWK / JWKS JSON holding a private key for ``alg`` (the
  ``kid`` then defaults to the JWK's); for a PEM without ``kid`` the RFC 7638 thumbprint is used;
- the token is cached until ``refresh_margin`` seconds before ``expires_in``; under concurrency
  one request fetches it while the others wait (an :class:`asyncio.Lock`);
- a 401 from the resource server drops the cached token (if it is still the one used), fetches a
  new one and re-sends the request once.

The token request goes through the same :class:`httpx.AsyncClient` as the FHIR requests (the auth
flow yields it), so one transport serves both and tests mock both with respx or the fake server.
Token-endpoint failures raise :class:`~shared.fhir.errors.SmartAuthError`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shared.errors import ConfigError
from shared.fhir.errors import SmartAuthError

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "SmartBackendAuth",
    "SmartCredentials",
    "SmartKey",
    "load_signing_key",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300.0  # SMART: exp no more than five minutes in the future

SmartAlg = Literal["RS384", "ES384"]
_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_log = structlog.get_logger("shared.fhir.smart")


@dataclass(frozen=True)
class SmartCredentials:
    """What a source's ``outbound.smart`` configuration maps onto.

    ``private_key_pem`` holds the private key as PEM text, or as JWK / JWKS JSON text.
    ``scopes`` is the space-separated scope string to request.
    """

    client_id: str
    token_url: str
    private_key_pem: str
    alg: str
    scopes: str
    kid: str | None = None

    def __repr__(self) -> str:  # never print the key
        return (
            f"SmartCredentials(client_id={self.client_id!r}, token_url={self.token_url!r}, "
            f"alg={self.alg!r}, kid={self.kid!r}, private_key_pem=<redacted>)"
        )


@dataclass(frozen=True, repr=False)
class SmartKey:
    """A loaded signing key: the cryptography key object, its alg and kid."""

    key: _PrivateKey
    alg: SmartAlg
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK (with ``kid``, ``alg``, ``use``) to register with the authorization server."""
        jwk = _public_jwk_members(self.key)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig", "key_ops": ["verify"]})
        return jwk


def _public_jwk_members(key: _PrivateKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        members: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        members = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {k: members[k] for k in ("kty", "n", "e", "crv", "x", "y") if k in members}


def _thumbprint(key: _PrivateKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key."""
    members = _public_jwk_members(key)
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def _check_key_matches(key: object, alg: SmartAlg) -> _PrivateKey:
    if alg == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError("outbound.smart.private_key: RS384 needs an RSA private key")
        if key.key_size < 2048:
            raise ConfigError("outbound.smart.private_key: RSA keys must have at least 2048 bits")
        return key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise ConfigError("outbound.smart.private_key: ES384 needs an EC P-384 private key")
    return key


def load_signing_key(text: str, alg: str, kid: str | None = None) -> SmartKey:
    """Load a private key for ``alg`` from PEM, a JWK or a JWKS (JSON text).

    From a JWKS the first private key whose ``alg``/``kty`` fits (and whose ``kid`` equals ``kid``
    when given) is used. Raises :class:`~shared.errors.ConfigError` with a one-line reason.
    """
    if alg not in ("RS384", "ES384"):
        raise ConfigError("outbound.smart.alg must be RS384 or ES384")
    smart_alg: SmartAlg = "RS384" if alg == "RS384" else "ES384"
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
        except ValueError as exc:
            raise ConfigError("outbound.smart.private_key: not valid JSON") from exc
        candidates = document.get("keys", [document]) if isinstance(document, dict) else []
        wanted_kty = "RSA" if smart_alg == "RS384" else "EC"
        for jwk in candidates:
            if not isinstance(jwk, dict) or "d" not in jwk or jwk.get("kty") != wanted_kty:
                continue
            if jwk.get("alg") not in (None, smart_alg) or (kid is not None and jwk.get("kid") != kid):
                continue
            try:
                loaded = jwt.PyJWK(jwk, smart_alg).key
            except jwt.PyJWTError as exc:
                raise ConfigError(f"outbound.smart.private_key: unusable JWK ({type(exc).__name__})") from exc
            key = _check_key_matches(loaded, smart_alg)
            return SmartKey(key, smart_alg, kid or str(jwk.get("kid") or _thumbprint(key)))
        raise ConfigError(f"outbound.smart.private_key: no {smart_alg} private key in the JWK(S)")
    try:
        loaded_pem = load_pem_private_key(stripped.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("outbound.smart.private_key: not an unencrypted PEM private key") from exc
    key = _check_key_matches(loaded_pem, smart_alg)
    return SmartKey(key, smart_alg, kid or _thumbprint(key))


@dataclass
class _Token:
    value: str
    refresh_at: float


class SmartBackendAuth(httpx.Auth):
    """httpx auth flow for SMART Backend Services (async clients only).

    ``clock`` (epoch seconds) drives ``exp``/``iat`` and the cache; ``jti`` returns a fresh nonce.
    ``assertion_lifetime`` must not exceed 300 s; the default leaves a minute for clock skew.
    ``token_timeout`` bounds the token request when the FHIR request carries no timeout.
    """

    def __init__(
        self,
        credentials: SmartCredentials,
        *,
        clock: Callable[[], float] = time.time,
        jti: Callable[[], str] = lambda: uuid.uuid4().hex,
        assertion_lifetime: float = 240.0,
        refresh_margin: float = 30.0,
        token_timeout: httpx.Timeout | None = None,
    ) -> None:
        if not 0 < assertion_lifetime <= MAX_ASSERTION_LIFETIME:
            raise ConfigError("SMART assertion lifetime must be within (0, 300] seconds")
        try:
            token_url = httpx.URL(credentials.token_url)
        except httpx.InvalidURL as exc:
            raise ConfigError("outbound.smart.token_url is not a URL") from exc
        if token_url.scheme not in ("http", "https") or not token_url.host:
            raise ConfigError("outbound.smart.token_url must be an absolute http(s) URL")
        if not credentials.client_id:
            raise ConfigError("outbound.smart.client_id must not be empty")
        self._credentials = credentials
        self._key = load_signing_key(credentials.private_key_pem, credentials.alg, credentials.kid)
        self._clock = clock
        self._jti = jti
        self._lifetime = assertion_lifetime
        self._margin = refresh_margin
        self._token_timeout = token_timeout or httpx.Timeout(10.0)
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.granted_scopes: str | None = None
        """The ``scope`` the server granted with the last token (may be narrower than requested)."""
        self.tokens_fetched = 0
        """How many tokens this instance obtained (for metrics and tests)."""

    @property
    def key(self) -> SmartKey:
        return self._key

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS to register with the authorization server (public key only)."""
        return {"keys": [self._key.public_jwk()]}

    def build_assertion(self) -> str:
        """A fresh signed client assertion JWT (one-time use)."""
        now = int(self._clock())
        claims = {
            "iss": self._credentials.client_id,
            "sub": self._credentials.client_id,
            "aud": self._credentials.token_url,
            "iat": now,
            "exp": now + int(self._lifetime),
            "jti": self._jti(),
        }
        headers = {"kid": self._key.kid, "typ": "JWT"}
        return jwt.encode(claims, self._key.key, algorithm=self._key.alg, headers=headers)

    def invalidate(self) -> None:
        """Forget the cached token; the next request fetches a new one."""
        self._token = None

    def _valid_token(self) -> str | None:
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token.value
        return None

    def _token_request(self, timeout: Any) -> httpx.Request:
        form = {
            "grant_type": "client_credentials",
            "scope": self._credentials.scopes,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.build_assertion(),
        }
        return httpx.Request(
            "POST",
            self._credentials.token_url,
            data=form,
            headers={"Accept": "application/json"},
            extensions={"timeout": timeout},
        )

    async def _store_token(self, response: httpx.Response) -> str:
        await response.aread()
        status = response.status_code
        try:
            body = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if status != 200:
            oauth_error = body.get("error") if isinstance(body.get("error"), str) else None
            _log.warning("smart.token.refused", status=status, oauth_error=oauth_error)
            raise SmartAuthError(
                f"SMART token endpoint answered {status}" + (f" ({oauth_error})" if oauth_error else ""),
                upstream_status=status,
                oauth_error=oauth_error,
                retryable=status in (429, 500, 502, 503, 504),
            )
        access_token = body.get("access_token")
        token_type = body.get("token_type")
        if not isinstance(access_token, str) or not access_token:
            raise SmartAuthError("SMART token response has no access_token", upstream_status=status)
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise SmartAuthError("SMART token response is not a bearer token", upstream_status=status)
        expires_in = body.get("expires_in", 300)
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
            expires_in = 300
        # Refresh `margin` seconds early, but never later than half-way for very short tokens.
        lifetime = max(float(expires_in) - self._margin, float(expires_in) / 2)
        self._token = _Token(access_token, self._clock() + lifetime)
        scope = body.get("scope")
        self.granted_scopes = scope if isinstance(scope, str) else None
        self.tokens_fetched += 1
        _log.info("smart.token.obtained", expires_in=expires_in, fetched=self.tokens_fetched)
        return access_token

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("SmartBackendAuth supports httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        timeout = request.extensions.get("timeout") or self._token_timeout.as_dict()
        token = self._valid_token()
        if token is None:
            async with self._lock:  # single flight: the others wait, then reuse the new token
                token = self._valid_token()
                if token is None:
                    token_response = yield self._token_request(timeout)
                    token = await self._store_token(token_response)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        async with self._lock:
            current = self._valid_token()
            if current is None or current == token:
                self.invalidate()
                token_response = yield self._token_request(timeout)
                current = await self._store_token(token_response)
        _log.info("smart.token.retry_after_401")
        request.headers["Authorization"] = f"Bearer {current}"
        yield request
