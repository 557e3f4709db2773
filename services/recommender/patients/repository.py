"""The patients' repository: a patient's stored input (the kept raw resources ingest wrote) and
whether Pinpoint knows the patient. Everything runs in the caller's transaction; nothing commits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlmodel import Session, col, select

from shared.db.models import Assessment, Resource


def load_patient_resources(session: Session, patient_key: str) -> list[dict[str, Any]]:
    """The patient's kept resources (raw JSON), plus the patient-less ones they reference
    (Medication, BodyStructure …) from the same source."""
    return load_resources(session, [patient_key])[patient_key]


def load_resources(session: Session, patient_keys: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """:func:`load_patient_resources` for a batch of patients: one query (plus one per source for
    referenced patient-less resources)."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in patient_keys}
    have: dict[str, set[tuple[str, str]]] = {k: set() for k in patient_keys}
    rows = session.exec(
        select(Resource.patient_key, Resource.resource_type, Resource.resource_id, Resource.raw).where(
            col(Resource.patient_key).in_(patient_keys), col(Resource.deleted).is_(False)
        )
    ).all()
    for key, rtype, rid, raw in rows:
        if key is None or not raw:
            continue
        out[key].append(dict(raw))
        have[key].add((rtype, rid))
    wanted: dict[str, dict[tuple[str, str], list[str]]] = {}
    for key, resources in out.items():
        source = key.partition(":")[0]
        for ref in {r for raw in resources for r in _references(raw)} - have[key]:
            wanted.setdefault(source, {}).setdefault(ref, []).append(key)
    for source, refs in wanted.items():
        conds = [
            sa.and_(col(Resource.resource_type) == t, col(Resource.resource_id) == i) for t, i in sorted(refs)
        ]
        extra = session.exec(
            select(Resource.resource_type, Resource.resource_id, Resource.raw).where(
                Resource.source == source, col(Resource.deleted).is_(False), sa.or_(*conds)
            )
        ).all()
        for rtype, rid, raw in extra:
            for key in refs.get((rtype, rid), []):
                if raw:
                    out[key].append(dict(raw))
    return out


_REF_IN_JSON = re.compile(rb'"reference":"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})"')


def _references(value: Any) -> set[tuple[str, str]]:
    """``(type, id)`` of every relative reference inside a resource, Patient excluded."""
    found = _REF_IN_JSON.findall(orjson.dumps(value))
    return {(t.decode(), i.decode()) for t, i in found if t != b"Patient"}


def patient_keys_with_data(session: Session) -> list[str]:
    """Every patient with kept resources or current assessments (for a full re-evaluation)."""
    stored = session.exec(
        select(Resource.patient_key)
        .where(col(Resource.patient_key).is_not(None), col(Resource.deleted).is_(False))
        .distinct()
    ).all()
    assessed = session.exec(
        select(Assessment.patient_key).where(Assessment.status == "current").distinct()
    ).all()
    return sorted({k for k in stored if k} | set(assessed))


def patient_keys_with_resources(session: Session) -> list[str]:
    """Every patient with kept resources, in the database's order."""
    keys = session.exec(
        select(Resource.patient_key)
        .where(col(Resource.patient_key).is_not(None), col(Resource.deleted).is_(False))
        .distinct()
        .order_by(col(Resource.patient_key))
    ).all()
    return [k for k in keys if k]


def patient_known(session: Session, patient_key: str) -> bool:
    found = session.exec(select(Resource.pk).where(Resource.patient_key == patient_key).limit(1)).first()
    if found is not None:
        return True
    return (
        session.exec(select(Assessment.key).where(Assessment.patient_key == patient_key).limit(1)).first()
        is not None
    )
