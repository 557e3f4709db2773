"""The evaluation queue as a dirty set: marking is an upsert that bumps the generation."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import orjson
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from shared.db.models import EvaluationQueue, utcnow
from shared.db.session import driver_rows


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
        driver_rows(session, _MARK_PG, mark_params(keys, now))
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
#: data-modifying CTE over the keys as one JSON array, sorted: orjson writes it in C where psycopg
#: dumps an array item by item in Python; the wake-up of LISTENing workers, delivered at commit, as
#: its SELECT). In the driver's parameter style (:func:`shared.db.session.driver_rows`);
#: ``MARK_PG_CTE`` is the marking alone, for statements that do more.
def mark_pg_cte(keys: str) -> str:
    """The ``marked`` CTE: the patients ``keys`` (a query of one text column, in key order)
    marked dirty; in the driver's parameter style, ``%(now)s`` the marking time."""
    return (
        "marked AS ("
        " INSERT INTO evaluation_queue (patient_key, generation, dirty_since, attempts)"
        f" SELECT k, 1, %(now)s, 0 FROM ({keys}) AS m(k)"
        " ON CONFLICT (patient_key) DO UPDATE SET generation = evaluation_queue.generation + 1"
        " RETURNING 1)"
    )


MARK_PG_CTE = mark_pg_cte("SELECT jsonb_array_elements_text(CAST(%(keys)s AS jsonb))")
_MARK_PG = "WITH " + MARK_PG_CTE + " SELECT pg_notify('pinpoint_dirty', '')"


def mark_params(keys: list[str], now: datetime) -> dict[str, str | datetime]:
    """The parameters of :data:`MARK_PG_CTE` (``keys`` sorted: rows locked in key order)."""
    return {"keys": orjson.dumps(keys).decode(), "now": now}
