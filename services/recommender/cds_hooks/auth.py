"""Trusting CDS clients (CDS Hooks 2.0 "Trusting CDS Clients", CONTRACT §2 Security).

With ``cds.trusted_issuers`` configured, every call (discovery, service, feedback) carries
``Authorization: Bearer <JWT>``. Without them, service calls and feedback are refused once any
other credential is configured (API, admin or source tokens): nothing that reads patient data or
writes stays open by accident; discovery, which holds no patient data, stays answerable.

- asymmetric algorithms only (never ``none``, never HMAC); ``kid`` required;
- ``iss`` allow-listed; its keys come from the configured ``jwks_file`` or ``jwks_url`` — the
  ``jku`` header is never followed; a JWKS URL is fetched, cached, and refetched at most once per
  ``REFRESH_MIN`` when an unknown ``kid`` arrives (key rotation);
- ``aud`` (string or array) contains ``settings.base_url`` + the path called;
- ``exp`` and ``iat`` checked against Pinpoint's clock with ``cds.clock_skew``;
- ``jti`` never seen before: the ``seen_jti`` table is the replay cache (it holds across replicas);
  the ids of concurrent calls are inserted in one transaction by one writer thread
  (:func:`jti_ledger`, a :class:`~shared.db.group_commit.GroupInsertNew`), and a call goes on only
  once its id is committed as new.

Every failure is a 401 OperationOutcome; the reason is logged without the token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import sqlalchemy as sa
from jwt import PyJWK
from sqlalchemy.engine import Connection, Engine

from shared.db.group_commit import GroupInsertNew
from shared.db.models import SeenJti
from shared.errors import Unauthorized
from shared.fhir.text import is_storable
from shared.logging import get_logger
from shared.settings import CdsConfig, TrustedIssuer

log = get_logger("pinpoint.cds.auth")

ALLOWED_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
JWKS_TTL = 300.0
REFRESH_MIN = 30.0


@dataclass
class _Jwks:
    keys: dict[str, dict[str, Any]]
    fetched: float
    #: Key objects built from ``keys`` (per kid and algorithm), kept as long as the JWKS is: the
    #: keys are cached, never a verification's result.
    parsed: dict[tuple[str, str], PyJWK] = field(default_factory=dict)


@dataclass
class JwksStore:
    """Keys per trusted issuer: pinned files read once, URLs fetched and cached."""

    http: Callable[[], httpx.AsyncClient]
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, _Jwks] = field(default_factory=dict)

    async def key(self, issuer: TrustedIssuer, kid: str) -> dict[str, Any] | None:
        cached = await self._keys(issuer, kid)
        return cached.keys.get(kid) if cached else None

    async def verifier(self, issuer: TrustedIssuer, kid: str, alg: str) -> PyJWK | None:
        """The key ``kid`` of ``issuer`` for ``alg``, built once per fetched JWKS; None when the
        issuer has no such key. Raises ``jwt.PyJWTError`` for a key that does not fit ``alg``."""
        cached = await self._keys(issuer, kid)
        jwk = cached.keys.get(kid) if cached else None
        if cached is None or jwk is None:
            return None
        key = cached.parsed.get((kid, alg))
        if key is None:
            key = cached.parsed[(kid, alg)] = PyJWK(jwk, algorithm=alg)
        return key

    async def _keys(self, issuer: TrustedIssuer, kid: str) -> _Jwks | None:
        cached = self._cache.get(issuer.iss)
        now = self.clock()
        stale = cached is None or (issuer.jwks_url is not None and now - cached.fetched > JWKS_TTL)
        if not stale and cached is not None and kid in cached.keys:
            return cached
        may_refresh = (
            cached is None or stale or (issuer.jwks_url is not None and now - cached.fetched > REFRESH_MIN)
        )
        if may_refresh:
            try:
                cached = _Jwks(await self._load(issuer), now)
            except (OSError, ValueError, httpx.HTTPError) as exc:
                log.warning("cds.jwks.unavailable", iss=issuer.iss, error=type(exc).__name__)
                if cached is None:
                    return None
            self._cache[issuer.iss] = cached
        return cached

    async def _load(self, issuer: TrustedIssuer) -> dict[str, dict[str, Any]]:
        if issuer.jwks_file is not None:
            data = json.loads(issuer.jwks_file.read_text())
        else:
            response = await self.http().get(str(issuer.jwks_url), timeout=5.0, follow_redirects=False)
            response.raise_for_status()
            data = response.json()
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise ValueError("JWKS has no keys array")
        return {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass(frozen=True)
class Caller:
    """Who called: the issuer (``anonymous`` when no issuers are configured)."""

    iss: str
    jti: str | None = None
    tenant: str | None = None


ANONYMOUS = Caller("anonymous")


def _reject(reason: str, **fields: Any) -> Unauthorized:
    log.info("cds.jwt.rejected", reason=reason, **fields)
    return Unauthorized(f"CDS client JWT rejected: {reason}")


async def verify_client_jwt(
    authorization: str | None,
    *,
    audience: str,
    cds: CdsConfig,
    jwks: JwksStore,
    seen: GroupInsertNew,
    now: datetime,
    locked: bool = False,
) -> Caller:
    """Check the CDS client's JWT for a call to ``audience``; raise 401 on any failure.

    Without trusted issuers the call is anonymous — unless ``locked``: a service call or feedback
    (patient data read, rows written) once any other credential is configured, which would
    otherwise be the one open door to stored patient data."""
    if not cds.trusted_issuers:
        if locked:
            raise _reject("credentials are configured but cds.trusted_issuers is empty")
        return ANONYMOUS
    token = bearer_token(authorization)
    if token is None:
        raise _reject("no bearer JWT")
    try:
        unverified_token = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _reject("malformed JWT") from None
    header, unverified = unverified_token["header"], unverified_token["payload"]
    if not isinstance(header, dict) or not isinstance(unverified, dict):
        raise _reject("malformed JWT")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise _reject("algorithm not allowed", alg=str(alg)[:20])
    if header.get("typ") not in (None, "JWT"):
        raise _reject("typ must be JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _reject("no kid in header")
    iss = unverified.get("iss")
    issuer = next((t for t in cds.trusted_issuers if t.iss == iss), None)
    if issuer is None:
        raise _reject("issuer not trusted")
    jwk = await jwks.key(issuer, kid)
    if jwk is None:
        raise _reject("unknown kid", iss=issuer.iss)
    if jwk.get("alg") not in (None, alg):
        raise _reject("algorithm does not match the key", iss=issuer.iss)
    try:
        key = await jwks.verifier(issuer, kid, alg)
        if key is None:  # the JWKS changed between the two look-ups
            raise _reject("unknown kid", iss=issuer.iss)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer.iss,
            options={
                "require": ["iss", "aud", "exp", "iat", "jti"],
                "verify_exp": False,  # checked below against Pinpoint's clock
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise _reject("wrong audience", iss=issuer.iss) from None
    except jwt.MissingRequiredClaimError as exc:
        raise _reject(f"missing claim {exc.claim}", iss=issuer.iss) from None
    except jwt.PyJWTError as exc:
        raise _reject(f"invalid ({type(exc).__name__})", iss=issuer.iss) from None
    skew = cds.clock_skew
    expires, issued = _instant(claims["exp"]), _instant(claims["iat"])
    if expires is None or issued is None:
        raise _reject("exp and iat must be finite NumericDates within years 1000–9000", iss=issuer.iss)
    if expires + skew <= now:
        raise _reject("expired", iss=issuer.iss)
    if issued - skew > now:
        raise _reject("issued in the future", iss=issuer.iss)
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > 200 or not is_storable(jti):
        raise _reject("jti must be a string of at most 200 characters", iss=issuer.iss)
    if not await seen.insert_new({"iss": issuer.iss, "jti": jti, "expires_at": max(expires + skew, now)}):
        raise _reject("jti already used (replay)", iss=issuer.iss)
    tenant = claims.get("tenant")
    return Caller(issuer.iss, jti, tenant if isinstance(tenant, str) else None)


def _instant(value: Any) -> datetime | None:
    """A JWT NumericDate as a UTC datetime; ``None`` for a non-number (booleans included), a
    non-finite one, or one outside years 1000–9000 (so the clock skew cannot overflow)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        instant = datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return instant if _EARLIEST < instant < _LATEST else None


#: NumericDates Pinpoint accepts: years 1000–9000, so that adding the clock skew cannot overflow.
_EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


SEEN_JTI = SeenJti.__table__  # type: ignore[attr-defined]


def jti_ledger(engine: Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> GroupInsertNew:
    """The replay cache's writer: each accepted (iss, jti) inserted once, in the transaction of
    the concurrent calls' ids; rows expired a minute ago are purged at most once a minute."""

    def purge(conn: Connection) -> None:
        conn.execute(sa.delete(SEEN_JTI).where(SEEN_JTI.c.expires_at < clock() - timedelta(minutes=1)))

    return GroupInsertNew(engine, SEEN_JTI, ("iss", "jti"), sweep=purge)
