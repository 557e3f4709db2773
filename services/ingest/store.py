"""Writes kept resources: raw JSON + facts + the patient's dirty mark, in the caller's transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlmodel import Session, select

from shared.db.models import Resource, utcnow
from shared.db.queue import mark_dirty


def content_hash(resource: dict[str, Any]) -> str:
    """Hash of a resource's content, ignoring ``meta`` (a re-delivery with new meta is the same)."""
    body = {k: v for k, v in resource.items() if k != "meta"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def parse_instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


@dataclass(frozen=True)
class StoreResult:
    """What happened to one resource: ``created``, ``updated``, ``unchanged`` or ``stale``."""

    outcome: str
    resource_type: str
    resource_id: str
    version: str | None


def patient_key(source: str, reference: str | None) -> str | None:
    if not reference or not reference.startswith("Patient/"):
        return None
    return f"{source}:{reference.removeprefix('Patient/')}"


def upsert_resource(
    session: Session,
    *,
    source: str,
    resource: dict[str, Any],
    resource_id: str,
    patient_ref: str | None,
    facts: dict[str, Any] | None = None,
) -> StoreResult:
    """Keep the latest version of (source, type, id); older ``meta.lastUpdated`` never wins."""
    rtype = resource["resourceType"]
    meta = resource.get("meta") or {}
    last_updated = parse_instant(meta.get("lastUpdated"))
    digest = content_hash(resource)
    existing = session.exec(
        select(Resource).where(
            Resource.source == source, Resource.resource_type == rtype, Resource.resource_id == resource_id
        )
    ).first()
    pkey = patient_key(source, patient_ref)
    if existing is not None and not existing.deleted:
        if existing.content_hash == digest:
            return StoreResult("unchanged", rtype, resource_id, existing.version_id)
        if last_updated and existing.last_updated and last_updated < existing.last_updated:
            return StoreResult("stale", rtype, resource_id, existing.version_id)
    row = existing or Resource(
        source=source, resource_type=rtype, resource_id=resource_id, content_hash=digest
    )
    old_patient = row.patient_key
    row.patient_key = pkey
    row.version_id = meta.get("versionId")
    row.last_updated = last_updated
    row.content_hash = digest
    row.deleted = False
    row.raw = resource
    row.facts = facts
    row.received_at = utcnow()
    session.add(row)
    mark_dirty(session, [k for k in (pkey, old_patient) if k])
    return StoreResult("created" if existing is None else "updated", rtype, resource_id, row.version_id)


def read_resource(session: Session, source: str, rtype: str, rid: str) -> Resource | None:
    return session.exec(
        select(Resource).where(
            Resource.source == source, Resource.resource_type == rtype, Resource.resource_id == rid
        )
    ).first()
