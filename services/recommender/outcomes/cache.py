"""The outcome cache (``outcome_cache``): each patient's summary rows as last computed, reused
only while provably the same (docs/function-and-outcomes.md, "Speed").

A stored entry is used for a patient when all hold, else the patient is evaluated again and the
entry replaced:

- ``engine``: the same policy (id, version and content) and the same rule code (a digest of the
  engine's and the domain's source files);
- ``fingerprint``: the same content hash of every stored resource of the patient and of every
  resource outside the patient that its resources reference (a write, a deletion, a change of
  patient, a re-import with new content — anything the patient's evaluation reads changes it);
- ``computed_for <= now < valid_until``: with the same input, the rows change with time only when a
  procedure ends, a reading or score's time is reached or a milestone falls due
  (:func:`~services.recommender.engine.practice.unchanged_until`).

One function computes a patient's rows and its entry, :func:`evaluate`: the summary calls it for
each patient it finds no usable entry for, and the worker for each patient it evaluates (from the
facts it has already normalised; the entry written in the worker's batch transaction, so that the
first summary after a backfill finds every patient warm).

The summary's writes are best effort (a read-only replica still gets its summary): a failed write
is logged by count, never with patient data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

import services.recommender.engine as _engine_pkg
import shared.domain as _domain_pkg
from services.recommender.assessor import Assessor
from services.recommender.engine import PatientContext
from services.recommender.patients.repository import Loaded
from shared.db.models import OutcomeCache
from shared.domain.facts import PatientFacts
from shared.logging import get_logger

log = get_logger("pinpoint.outcomes")

TABLE = OutcomeCache.__table__  # type: ignore[attr-defined]


@cache
def _code_digest() -> str:
    h = hashlib.sha256()
    for package in (_engine_pkg, _domain_pkg):
        root = Path(str(package.__file__)).parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:24]


def engine_tag(assessor: Assessor) -> str:
    """The policy and the rule code the rows were computed with."""
    ref = assessor.ref
    policy = hashlib.sha256(repr(assessor.policy).encode()).hexdigest()[:16]
    return f"{ref.id}|{ref.version}|{policy}|{_code_digest()}"[:300]


@dataclass(frozen=True, slots=True)
class Entry:
    fingerprint: str
    refs: list[list[str]]
    rows: list[tuple[Mapping[str, Any], bool | None]]


Rows = list[tuple[Mapping[str, Any], bool | None]]


def evaluate(
    assessor: Assessor,
    tag: str,
    key: str,
    patient: Loaded,
    now: datetime,
    facts: Mapping[str, PatientFacts] | Mapping[str, PatientContext] | None = None,
) -> tuple[Rows, dict[str, Any]]:
    """A patient's rows at ``now`` (:meth:`Assessor.outcomes_of`) and its cache entry: the
    fingerprint ``patient`` was loaded with (``load_patients(…, fingerprint=True)``), the engine
    ``tag`` (:func:`engine_tag`), valid from ``now`` until the rows could change. ``facts``: the
    patient's resources already normalised, or their contexts (:meth:`Assessor.contexts`: the
    worker's, shared with its entry); else normalised here."""
    if patient.fingerprint is None:
        raise ValueError("the patient was loaded without its fingerprint")
    if facts is None:
        facts = assessor.facts(patient.resources)
    found, until = assessor.outcomes_of(facts.values(), now)
    return found, {
        "patient_key": key,
        "fingerprint": patient.fingerprint,
        "engine": tag,
        "computed_for": now,
        "valid_until": until,
        "refs": [list(r) for r in patient.refs],
        "rows": [[o, met] for o, met in found],
    }


#: the entries of ``keys`` computed with ``engine`` and valid at ``now``
_USABLE = sa.and_(
    TABLE.c.patient_key.in_(sa.bindparam("keys", expanding=True)),
    TABLE.c.engine == sa.bindparam("engine"),
    TABLE.c.computed_for <= sa.bindparam("now"),
    sa.or_(TABLE.c.valid_until.is_(None), TABLE.c.valid_until > sa.bindparam("now")),
)
_READ = sa.select(
    TABLE.c.patient_key,
    TABLE.c.fingerprint,
    sa.cast(TABLE.c.refs, sa.Text),
    sa.cast(TABLE.c.rows, sa.Text),
).where(_USABLE)
_FINGERPRINTS = sa.select(TABLE.c.patient_key, TABLE.c.fingerprint).where(_USABLE)


def usable(session: Session, keys: Sequence[str], tag: str, now: datetime) -> dict[str, Entry]:
    """The stored entries of ``keys`` computed with ``tag`` and valid at ``now`` (fingerprints not
    yet compared)."""
    out: dict[str, Entry] = {}
    params = {"keys": list(keys), "engine": tag, "now": now}
    for key, fingerprint, refs, rows in session.connection().execute(_READ, params):
        out[key] = Entry(
            fingerprint,
            orjson.loads(refs) if refs else [],
            [(o, met) for o, met in orjson.loads(rows)] if rows else [],
        )
    return out


def usable_fingerprints(session: Session, keys: Sequence[str], tag: str, now: datetime) -> dict[str, str]:
    """The fingerprints of the entries :func:`usable` would return, without reading their rows: a
    patient whose fingerprint is among them has a current entry that need not be written again."""
    params = {"keys": list(keys), "engine": tag, "now": now}
    return {key: fp for key, fp in session.connection().execute(_FINGERPRINTS, params)}


def upsert(conn: sa.Connection, entries: list[dict[str, Any]]) -> None:
    """Insert or replace entries in the caller's transaction (the worker's batch), one statement."""
    if not entries:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(TABLE)
    stmt = stmt.on_conflict_do_update(
        index_elements=["patient_key"],
        set_={
            c: getattr(stmt.excluded, c)
            for c in ("fingerprint", "engine", "computed_for", "valid_until", "refs", "rows")
        },
    )
    conn.execute(stmt, entries)


def store(engine: sa.Engine, entries: list[dict[str, Any]]) -> None:
    """Insert or replace entries in a transaction of their own (the summary's; best effort)."""
    if not entries:
        return
    try:
        with engine.begin() as conn:
            upsert(conn, entries)
    except SQLAlchemyError as exc:
        log.warning("outcomes.cache_write_failed", entries=len(entries), error=type(exc).__name__)


def prune(engine: sa.Engine, alive: Sequence[str]) -> None:
    """Forget the entries of patients not in ``alive`` (those with stored resources, which the
    summary has just listed): best effort, and no join with the resources."""
    try:
        with engine.begin() as conn:
            gone = sorted(set(conn.execute(sa.select(TABLE.c.patient_key)).scalars()) - set(alive))
            for i in range(0, len(gone), 1000):
                conn.execute(sa.delete(TABLE).where(TABLE.c.patient_key.in_(gone[i : i + 1000])))
    except SQLAlchemyError as exc:
        log.warning("outcomes.cache_prune_failed", error=type(exc).__name__)
