"""Writing and reading the worklist rows (``worklist_entry``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from services.recommender.worklist.rows import NO_DATE, Row, rows_for
from shared.db.models import Resource, WorklistEntry
from shared.db.session import NewRows

_COLUMNS = [f.name for f in fields(Row)]


def load_state(
    session: Session,
    patient_keys: Sequence[str],
    known: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> tuple[dict[str, list[WorklistEntry]], dict[str, dict[str, Any]]]:
    """For a batch of patients, one query each: their worklist rows, and their latest stored
    Patient resource (the name, birth date and identifiers a row shows). ``known``: the Patient
    resource of some of them, already read (None: none stored) — not read again."""
    rows: dict[str, list[WorklistEntry]] = {k: [] for k in patient_keys}
    known = known or {}
    patients: dict[str, dict[str, Any]] = {k: dict(v) for k, v in known.items() if v}
    if not patient_keys:
        return rows, patients
    for row in session.exec(select(WorklistEntry).where(col(WorklistEntry.patient_key).in_(patient_keys))):
        rows[row.patient_key].append(row)
    unknown = [k for k in patient_keys if k not in known]
    if not unknown:
        return rows, patients
    found = session.exec(
        select(Resource.patient_key, Resource.raw)
        .where(
            col(Resource.patient_key).in_(unknown),
            Resource.resource_type == "Patient",
            col(Resource.deleted).is_(False),
        )
        .order_by(col(Resource.received_at).desc())
    )
    for key, raw in found:
        if key is not None and raw and key not in patients:
            patients[key] = dict(raw)
    return rows, patients


def sync_worklist(
    session: Session,
    patient_key: str,
    assessments: Sequence[tuple[str, Mapping[str, Any]]],
    alerts: Sequence[Mapping[str, Any]],
    at: datetime,
    *,
    current: Sequence[WorklistEntry],
    patient: Mapping[str, Any] | None,
    new_rows: NewRows,
) -> None:
    """Make the patient's worklist rows match its current assessments (same transaction).
    ``current`` and ``patient``: the stored rows and Patient resource (:func:`load_state`), read
    for a whole batch at once so that nothing here queries (or flushes) per patient; new rows
    go to ``new_rows``."""
    existing = {r.key: r for r in current}
    wanted = rows_for(
        patient_key,
        [k for k, _ in assessments],
        [a for _, a in assessments],
        alerts,
        dict(patient) if assessments and patient else None,
    )
    for row in wanted:
        values = {name: getattr(row, name) for name in _COLUMNS}
        stored = existing.pop(row.key, None)
        if stored is not None and all(getattr(stored, n) == v for n, v in values.items()):
            continue
        if stored is None:
            new_rows.add(WorklistEntry, **values, evaluated_at=at)
            continue
        for name, value in values.items():
            setattr(stored, name, value)
        stored.evaluated_at = at
        session.add(stored)
    for gone in existing.values():
        session.delete(gone)


@dataclass(frozen=True)
class Filters:
    pathway: str | None = None
    verdict: str | None = None
    alert: str | None = None  # an alert code, or "any"
    source: str | None = None
    due_by: date | None = None  # earliest date on or before
    q: str | None = None  # name, identifier or id (case-insensitive, part of it)

    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Cursor:
    """The last row of a page: the next page starts after it."""

    attention: int
    due: date
    key: str

    def encode(self) -> str:
        return f"{self.attention}~{self.due.isoformat()}~{self.key}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        attention, due, key = text.split("~", 2)
        return cls(int(attention), date.fromisoformat(due), key)


def _where(query: Any, f: Filters) -> Any:
    if f.pathway:
        query = query.where(WorklistEntry.pathway == f.pathway)
    if f.verdict:
        query = query.where(WorklistEntry.verdict == f.verdict)
    if f.source:
        query = query.where(WorklistEntry.source == f.source)
    if f.alert == "any":
        query = query.where(WorklistEntry.alerts != "")
    elif f.alert:
        query = query.where(col(WorklistEntry.alerts).contains(f",{f.alert},", autoescape=True))
    if f.due_by:
        query = query.where(WorklistEntry.due <= f.due_by)
    if f.q and f.q.strip():
        query = query.where(col(WorklistEntry.search).contains(f.q.strip().lower(), autoescape=True))
    return query


_ORDER = (col(WorklistEntry.attention), col(WorklistEntry.due), col(WorklistEntry.key))


def page(
    session: Session, f: Filters, after: Cursor | None, limit: int
) -> tuple[list[WorklistEntry], Cursor | None]:
    """One page in attention order, and the cursor of the next page (None on the last)."""
    query = _where(select(WorklistEntry), f)
    if after is not None:
        query = query.where(sa.tuple_(*_ORDER) > sa.tuple_(after.attention, after.due, after.key))
    rows = list(session.exec(query.order_by(*_ORDER).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = Cursor(rows[-1].attention, rows[-1].due, rows[-1].key) if more and rows else None
    return rows, cursor


def count(session: Session, f: Filters) -> int:
    query = _where(select(sa.func.count()).select_from(WorklistEntry), f)
    return int(session.exec(query).one())


def every(session: Session, f: Filters, batch: int = 1000) -> Iterator[WorklistEntry]:
    """Every matching row in attention order, a keyset page at a time (memory stays flat)."""
    after: Cursor | None = None
    while True:
        rows, after = page(session, f, after, batch)
        yield from rows
        if after is None:
            return


__all__ = ["NO_DATE", "Cursor", "Filters", "count", "every", "load_state", "page", "sync_worklist"]
