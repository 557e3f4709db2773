"""Inbound credentials of a source (CONTRACT §2 Security, §7): a bearer token, or an HMAC-SHA256
over the raw body in ``X-Signature`` (hex) or ``X-Hub-Signature: sha256=<hex>``.

Compared in constant time. A failure is a 401 and nothing is stored, not even a dead letter.

The write-path rule (README "Security"): once any credential is configured (API or admin tokens,
a source's inbound credential, CDS trusted issuers), a source accepts writes only with its own
inbound credential, or when it says ``open: true`` in the config. ``/fhir`` is the source
``default`` like any other: its credential is the inbound credential of a source with id
``default``; API tokens grant reads, never writes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from shared.errors import Unauthorized
from shared.settings import Settings, Source

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


def check_writable(settings: Settings, source: Source) -> None:
    """Refuse (401, before the body is read) a write to a source that has no credential of its
    own and is not ``open: true`` while some credential is configured."""
    if source.inbound is None and not settings.writes_open(source):
        raise Unauthorized(
            f"Writes to source {source.id!r} need its credential, and none is configured for it "
            "(the source needs inbound, or open: true)"
        )


def verify_inbound(source: Source, headers: Mapping[str, str], body: bytes) -> None:
    """Raise :class:`Unauthorized` unless the request carries the source's credential.

    A source without an inbound credential passes here: :func:`check_writable` has already
    refused it unless it is open (``open: true``, or no credential configured at all).
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
