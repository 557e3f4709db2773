"""Inbound credentials of a source (CONTRACT §2 Security, §7): a bearer token, or an HMAC-SHA256
over the raw body in ``X-Signature`` (hex) or ``X-Hub-Signature: sha256=<hex>``.

Compared in constant time. A failure is a 401 and nothing is stored, not even a dead letter.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from shared.errors import Unauthorized
from shared.settings import Source

HUB_HEADERS = ("x-hub-signature-256", "x-hub-signature")


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _signatures(headers: Mapping[str, str], configured: str) -> list[str]:
    """Candidate hex digests from the configured header and the WebSub-style headers."""
    found = []
    for name in (configured.lower(), "x-signature", *HUB_HEADERS):
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        if value.lower().startswith("sha256="):
            value = value[len("sha256=") :]
        found.append(value.lower())
    return found


def verify_inbound(source: Source, headers: Mapping[str, str], body: bytes) -> None:
    """Raise :class:`Unauthorized` unless the request carries the source's credential.

    A source without an inbound credential accepts everything (CONTRACT §2: with no
    credentials the service binds only to loopback).
    """
    inbound = source.inbound
    if inbound is None:
        return
    if inbound.bearer is not None:
        token = _bearer(headers)
        expected = inbound.bearer.get_secret_value().encode()
        if token is None or not hmac.compare_digest(token.encode(), expected):
            raise Unauthorized(f"A valid bearer token of source {source.id!r} is required")
        return
    if inbound.hmac_secret is not None:
        secret = inbound.hmac_secret.get_secret_value().encode()
        digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
        ok = False
        for candidate in _signatures(headers, inbound.header):
            ok |= hmac.compare_digest(candidate.encode(), digest.encode())
        if not ok:
            raise Unauthorized(f"The HMAC signature of source {source.id!r} does not match the body")
