"""Medplum's classic rest-hook (STANDARDS §2.1): ``POST {endpoint}`` with ``X-Medplum-*`` headers.

Creates and updates carry the resource; a delete carries ``{}`` and names the resource in
``X-Medplum-Deleted-Resource: Type/id``. Its ``X-Signature`` is computed over the resource, not
over the ``{}`` sent, so with an HMAC credential a delete cannot be verified: it is refused (401)
and the reconciliation notices the delete instead (CONTRACT §2 Security).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_DELETED = re.compile(r"^\s*([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})\s*$")


@dataclass(frozen=True)
class MedplumDelivery:
    subscription: str | None
    interaction: str | None
    deleted: tuple[str, str] | None


def medplum_delivery(headers: Mapping[str, str]) -> MedplumDelivery:
    subscription = (headers.get("x-medplum-subscription") or "").strip()[:200] or None
    interaction = (headers.get("x-medplum-interaction") or "").strip().lower() or None
    deleted = None
    match = _DELETED.match(headers.get("x-medplum-deleted-resource") or "")
    if match:
        deleted = (match.group(1), match.group(2))
    return MedplumDelivery(subscription, interaction, deleted)
