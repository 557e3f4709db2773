"""The evaluation queue as a dirty set: marking is an upsert that bumps the generation."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from shared.db.models import EvaluationQueue, utcnow


def mark_dirty(session: Session, patient_keys: Iterable[str]) -> int:
    """Mark patients for (re-)evaluation inside the caller's transaction; returns how many.

    An existing row keeps its ``dirty_since`` (the age of the oldest unprocessed change) and gets
    a new generation, so a worker evaluating it right now will not drop this mark.
    """
    keys = sorted(set(patient_keys))
    if not keys:
        return 0
    now = utcnow()
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = EvaluationQueue.__table__  # type: ignore[attr-defined]
    stmt = insert(table).values(
        [{"patient_key": k, "generation": 1, "dirty_since": now, "attempts": 0} for k in keys]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["patient_key"],
        set_={"generation": table.c.generation + 1},
    )
    session.execute(stmt)
    if dialect == "postgresql":
        session.execute(text("SELECT pg_notify('pinpoint_dirty', '')"))
    return len(keys)
