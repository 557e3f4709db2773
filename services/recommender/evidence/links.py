"""Signed, expiring evidence links (CONTRACT §2 Security, §7 ``cds.evidence_link_ttl``).

One :class:`EvidenceLinks` per process (built by the composition root), keyed by
``PINPOINT_LINK_SECRET``; when unset a random key is drawn at start, so links only verify on the
process that made them — set the secret when several replicas serve. The signed path is the
canonical ``/patients/<source>:<id>/evidence`` so ``P-1`` and ``default:P-1`` name the same page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from services.recommender.patients.ids import patient_key
from shared.settings import Settings
from shared.signing import LinkSigner


def canonical_path(patient_key: str) -> str:
    """``default:P-1`` → ``/patients/default:P-1/evidence`` (what the signature covers)."""
    return f"/patients/{patient_key}/evidence"


@dataclass(frozen=True)
class EvidenceLinks:
    signer: LinkSigner
    base_url: str
    ttl: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> EvidenceLinks:
        secret = settings.link_secret
        return cls(
            LinkSigner(secret.get_secret_value() if secret is not None else None),
            settings.base_url,
            settings.config.cds.evidence_link_ttl,
        )

    def url(self, patient: str, *, now: datetime, ttl: timedelta | None = None) -> str:
        """``{base_url}/patients/{patient}/evidence?exp=…&sig=…`` valid for ``ttl`` (default: the
        configured ``cds.evidence_link_ttl``); ``patient`` is a /patients/{id} id."""
        signed = self.signer.sign(
            canonical_path(patient_key(patient)), now=now, ttl=ttl if ttl is not None else self.ttl
        )
        query = signed.partition("?")[2]
        return f"{self.base_url}/patients/{quote(patient, safe=':')}/evidence?{query}"

    def valid(self, patient_key: str, exp: str | None, sig: str | None, *, now: datetime) -> bool:
        return self.signer.verify(canonical_path(patient_key), exp, sig, now=now)
