"""Signed, expiring evidence links (CONTRACT §2 Security, §7 ``cds.evidence_link_ttl``).

One :class:`~shared.signing.LinkSigner` per process, keyed by ``PINPOINT_LINK_SECRET``; when unset a
random key is drawn at start, so links only verify on the process that made them — set the
secret when several replicas serve. The signed path is the canonical ``/patients/<source>:<id>/
evidence`` so ``P-1`` and ``default:P-1`` name the same page.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import quote

from shared.signing import LinkSigner
from shared.web import Runtime

_STATE_KEY = "evidence.link_signer"


def link_signer(runtime: Runtime) -> LinkSigner:
    """The process's signer (created on first use from ``settings.link_secret``)."""
    signer = runtime.state.get(_STATE_KEY)
    if signer is None:
        secret = runtime.settings.link_secret
        signer = LinkSigner(secret.get_secret_value() if secret is not None else None)
        runtime.state[_STATE_KEY] = signer
    assert isinstance(signer, LinkSigner)
    return signer


def canonical_path(patient_key: str) -> str:
    """``default:P-1`` → ``/patients/default:P-1/evidence`` (what the signature covers)."""
    return f"/patients/{patient_key}/evidence"


def signed_evidence_url(
    runtime: Runtime, patient: str, *, now: datetime, ttl: timedelta | None = None
) -> str:
    """``{base_url}/patients/{patient}/evidence?exp=…&sig=…`` valid for ``ttl`` (default: the
    configured ``cds.evidence_link_ttl``); ``patient`` is a /patients/{id} id."""
    from services.recommender.api.suggestions import patient_key

    ttl = ttl if ttl is not None else runtime.settings.config.cds.evidence_link_ttl
    signed = link_signer(runtime).sign(canonical_path(patient_key(patient)), now=now, ttl=ttl)
    query = signed.partition("?")[2]
    return f"{runtime.settings.base_url}/patients/{quote(patient, safe=':')}/evidence?{query}"


def link_valid(
    runtime: Runtime, patient_key: str, exp: str | None, sig: str | None, *, now: datetime
) -> bool:
    return link_signer(runtime).verify(canonical_path(patient_key), exp, sig, now=now)
