"""The evaluation queue as a dirty set: marking is an upsert that bumps the generation."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
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
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_MARK_PG, {"keys": keys, "now": now})
        return len(keys)
    table = EvaluationQueue.__table__  # type: ignore[attr-defined]
    stmt = sqlite_insert(table).values(
        [{"patient_key": k, "generation": 1, "dirty_since": now, "attempts": 0} for k in keys]
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["patient_key"], set_={"generation": table.c.generation + 1}
        )
    )
    return len(keys)


#: PostgreSQL: one round trip and one statement text whatever the number of keys (the upsert as a
#: data-modifying CTE over an array parameter; the wake-up of LISTENing workers, delivered at
#: commit, as its SELECT).
#: The marking itself (parameters ``keys``, sorted, and ``now``), for statements that do more.
MARK_PG_CTE = (
    "marked AS ("
    " INSERT INTO evaluation_queue (patient_key, generation, dirty_since, attempts)"
    " SELECT k, 1, :now, 0 FROM unnest(CAST(:keys AS varchar[])) AS k"
    " ON CONFLICT (patient_key) DO UPDATE SET generation = evaluation_queue.generation + 1"
    " RETURNING 1)"
)
_MARK_PG = sa.text("WITH " + MARK_PG_CTE + " SELECT pg_notify('pinpoint_dirty', '')")
