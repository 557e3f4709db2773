"""The patients' repository: a patient's stored input (the kept raw resources ingest wrote) and
whether Pinpoint knows the patient. Everything runs in the caller's transaction; nothing commits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    return {k: v.resources for k, v in load_patients(session, patient_keys).items()}


@dataclass(slots=True)
class Loaded:
    """A patient's stored input: the resources, the references outside them that were looked up
    (``(type, id)``, sorted) and, when asked for, the fingerprint of both (see :func:`fingerprints`)."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    refs: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str | None = None


def load_patients(
    session: Session, patient_keys: Sequence[str], fingerprint: bool = False
) -> dict[str, Loaded]:
    """:func:`load_resources` with what was looked up, and each patient's fingerprint if asked."""
    out: dict[str, Loaded] = {k: Loaded() for k in patient_keys}
    refs_of: dict[str, set[tuple[str, str]]] = {k: set() for k in patient_keys}
    have: dict[str, set[tuple[str, str]]] = {k: set() for k in patient_keys}
    own: dict[str, list[tuple[str, str, str]]] = {k: [] for k in patient_keys}
    rows = session.connection().execute(_BY_PATIENT, {"keys": list(patient_keys)}).all()
    for key, rtype, rid, digest, text in rows:
        if key is None:
            continue
        own[key].append((rtype, rid, digest))
        raw = _decode(text) if text else None
        if not raw:
            continue
        out[key].resources.append(raw)
        have[key].add((rtype, rid))
        refs_of[key].update(_references(text))
    for key, loaded in out.items():
        loaded.refs = sorted(refs_of[key] - have[key])
    found = _referenced(session, {k: v.refs for k, v in out.items()})
    for key, loaded in out.items():
        for ref in loaded.refs:
            _, raw = found.get((key.partition(":")[0], *ref), ("", None))
            if raw:
                loaded.resources.append(dict(raw))
        if fingerprint:
            loaded.fingerprint = _fingerprint(own[key], loaded.refs, found, key)
    return out


def fingerprints(session: Session, refs: Mapping[str, Sequence[Sequence[str]]]) -> dict[str, str]:
    """The fingerprint of each patient named (``refs``: the references outside the patient that its
    resources make, as :func:`load_patients` found them) without reading any resource's JSON:
    a hash of the content hash of every stored resource of the patient and of every referenced one
    (a missing one counted as missing). Equal fingerprints, equal input: any write, deletion or
    change of patient of a resource changes them (its content hash or its presence); so does a
    change to a resource referenced — and a change to which ones are referenced is a change to
    the patient's own resources."""
    keys = list(refs)
    own: dict[str, list[tuple[str, str, str]]] = {k: [] for k in keys}
    for key, rtype, rid, digest in session.connection().execute(_HASHES, {"keys": keys}):
        own[key].append((rtype, rid, digest))
    wanted = {k: [(str(t), str(i)) for t, i in v] for k, v in refs.items()}
    found = _referenced(session, wanted, with_raw=False)
    return {k: _fingerprint(own[k], wanted[k], found, k) for k in keys}


def _referenced(
    session: Session, refs: Mapping[str, Sequence[tuple[str, str]]], with_raw: bool = True
) -> dict[tuple[str, str, str], tuple[str, Any]]:
    """``(source, type, id)`` → ``(content hash, raw)`` of the referenced resources found."""
    wanted: dict[str, set[tuple[str, str]]] = {}
    for key, items in refs.items():
        if items:
            wanted.setdefault(key.partition(":")[0], set()).update(items)
    found: dict[tuple[str, str, str], tuple[str, Any]] = {}
    for source, pairs in wanted.items():
        conds = [sa.and_(_TABLE.c.resource_type == t, _TABLE.c.resource_id == i) for t, i in sorted(pairs)]
        columns = [_TABLE.c.resource_type, _TABLE.c.resource_id, _TABLE.c.content_hash]
        if with_raw:
            columns.append(_TABLE.c.raw)
        extra = session.connection().execute(
            sa.select(*columns).where(_TABLE.c.source == source, _TABLE.c.deleted.is_(False), sa.or_(*conds))
        )
        for row in extra:
            found[(source, row[0], row[1])] = (row[2], row[3] if with_raw else None)
    return found


def _fingerprint(
    own: list[tuple[str, str, str]],
    refs: Sequence[tuple[str, str]],
    found: Mapping[tuple[str, str, str], tuple[str, Any]],
    key: str,
) -> str:
    source = key.partition(":")[0]
    h = hashlib.sha256()
    for rtype, rid, digest in sorted(own):
        h.update(f"{rtype}/{rid}={digest}\n".encode())
    h.update(b"--\n")
    for rtype, rid in refs:
        digest = found.get((source, rtype, rid), ("-", None))[0]
        h.update(f"{rtype}/{rid}={digest}\n".encode())
    return h.hexdigest()


_TABLE = Resource.__table__  # type: ignore[attr-defined]
#: one statement (SQLAlchemy Core: no ORM work per row), the JSON as text
_BY_PATIENT = sa.select(
    _TABLE.c.patient_key,
    _TABLE.c.resource_type,
    _TABLE.c.resource_id,
    _TABLE.c.content_hash,
    sa.cast(_TABLE.c.raw, sa.Text),
).where(_TABLE.c.patient_key.in_(sa.bindparam("keys", expanding=True)), _TABLE.c.deleted.is_(False))
_HASHES = sa.select(
    _TABLE.c.patient_key, _TABLE.c.resource_type, _TABLE.c.resource_id, _TABLE.c.content_hash
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
