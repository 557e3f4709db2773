"""Evidence links (CONTRACT §2 Security, §7 ``cds.evidence_link_ttl``, §8 SMART launch).

A card links to ``/evidence/cards/{card uuid}`` — the live evaluation when Pinpoint stores data
for the patient, else the card's evidence snapshot — signed and expiring (12 hours by default: a
chart left open through a clinic session still opens it). When the card's source has a SMART app
registration (``smart_app``), the link is a ``smart`` link to ``/smart/{source}/launch`` with the
card in ``appContext``: the EHR launches it with a fresh ``launch`` and ``iss`` whenever it is
opened, so it never expires. ``/patients/{id}/evidence`` links keep working as before.

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


def card_path(card: str) -> str:
    return f"/evidence/cards/{card}"


LABEL = "Evidence in Pinpoint"


@dataclass(frozen=True)
class EvidenceLinks:
    signer: LinkSigner
    base_url: str
    ttl: timedelta
    smart_sources: frozenset[str] = frozenset()  # sources with a SMART app registration

    @classmethod
    def from_settings(cls, settings: Settings) -> EvidenceLinks:
        secret = settings.link_secret
        return cls(
            LinkSigner(secret.get_secret_value() if secret is not None else None),
            settings.base_url,
            settings.config.cds.evidence_link_ttl,
            frozenset(s.id for s in settings.config.sources if s.smart_app is not None),
        )

    def card_url(self, card: str, *, now: datetime, ttl: timedelta | None = None) -> str:
        """``{base_url}/evidence/cards/{card}?exp=…&sig=…`` valid for ``ttl`` (default: the
        configured ``cds.evidence_link_ttl``)."""
        return self.base_url + self.signer.sign(
            card_path(card), now=now, ttl=ttl if ttl is not None else self.ttl
        )

    def card_valid(self, card: str, exp: str | None, sig: str | None, *, now: datetime) -> bool:
        return self.signer.verify(card_path(card), exp, sig, now=now)

    def launch_url(self, source: str) -> str:
        return f"{self.base_url}/smart/{quote(source, safe='')}/launch"

    def card_link(self, card: str, source: str, *, now: datetime) -> dict[str, str]:
        """The CDS Hooks link of a card: ``smart`` (launch URL, the card in ``appContext``) when
        ``source`` has a SMART app registration, else the signed ``absolute`` link."""
        if source in self.smart_sources:
            return {
                "label": LABEL,
                "url": self.launch_url(source),
                "type": "smart",
                "appContext": f"card={card}",
            }
        return {"label": LABEL, "url": self.card_url(card, now=now), "type": "absolute"}

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
