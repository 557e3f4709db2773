"""The patients' repository: a patient's stored input (the kept raw resources ingest wrote) and
whether Pinpoint knows the patient. Everything runs in the caller's transaction; nothing commits.
"""

from __future__ import annotations

import json
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
    referenced patient-less resources). The JSON is read as text and decoded with orjson (several
    times cheaper than the driver's standard-library decoding), its references found in the text."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in patient_keys}
    refs_of: dict[str, set[tuple[str, str]]] = {k: set() for k in patient_keys}
    have: dict[str, set[tuple[str, str]]] = {k: set() for k in patient_keys}
    rows = session.connection().execute(_BY_PATIENT, {"keys": list(patient_keys)})
    for key, rtype, rid, text in rows:
        if key is None or not text:
            continue
        raw = _decode(text)
        if not raw:
            continue
        out[key].append(raw)
        have[key].add((rtype, rid))
        refs_of[key].update(_references(text))
    wanted: dict[str, dict[tuple[str, str], list[str]]] = {}
    for key in out:
        source = key.partition(":")[0]
        for ref in refs_of[key] - have[key]:
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


_TABLE = Resource.__table__  # type: ignore[attr-defined]
#: one statement (SQLAlchemy Core: no ORM work per row), the JSON as text
_BY_PATIENT = sa.select(
    _TABLE.c.patient_key, _TABLE.c.resource_type, _TABLE.c.resource_id, sa.cast(_TABLE.c.raw, sa.Text)
).where(_TABLE.c.patient_key.in_(sa.bindparam("keys", expanding=True)), _TABLE.c.deleted.is_(False))


def _decode(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # what orjson refuses (integers beyond 64 bits…)
        return json.loads(text)


#: a relative reference in a resource's JSON text, as orjson writes it or as PostgreSQL's jsonb and
#: the standard library do (a space after the colon)
_REF_IN_JSON = re.compile(r'"reference":\s?"(?!Patient/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})"')


def _references(text: str) -> list[tuple[str, str]]:
    """``(type, id)`` of every relative reference inside a resource's JSON text, Patient excluded."""
    return _REF_IN_JSON.findall(text)


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
