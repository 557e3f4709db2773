"""Dead letters: every rejected payload and parked delivery, kept verbatim for inspection/replay."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from shared.db.models import DeadLetter, utcnow
from shared.db.session import session_scope
from shared.fhir.text import storable_copy

#: ``content_type`` is a header we were sent: kept up to the column's width.
CONTENT_TYPE_CHARS = 200


def payload_digest(source: str, kind: str, payload: bytes) -> str:
    """What makes two rejections "the same": source, kind and the payload's bytes."""
    return hashlib.sha256(b"%s\0%s\0%s" % (source.encode(), kind.encode(), payload)).hexdigest()


def add_dead_letters(session: Session, rows: list[DeadLetter]) -> list[DeadLetter]:
    """Add rejected payloads in the caller's transaction. One already waiting (status ``new``)
    with the same digest is counted (``occurrences``, ``last_seen_at``) instead of added again:
    re-deliveries and re-imports leave one row to inspect and replay. Returns the rows that
    stand for ``rows``, in order."""
    if not rows:
        return []
    for row in rows:
        # The payload is bytes (any bytes are kept); the text beside it may quote the payload
        # and must be storable on PostgreSQL too (no NUL, no lone surrogate).
        row.reason = storable_copy(row.reason)
        row.content_type = storable_copy(row.content_type[:CONTENT_TYPE_CHARS]) if row.content_type else None
        row.outcome = storable_copy(row.outcome)
        row.context = storable_copy(row.context)
        row.digest = row.digest or payload_digest(row.source, row.kind, row.payload)
        row.last_seen_at = row.last_seen_at or row.created_at
    digests = {row.digest for row in rows}
    open_rows = {
        r.digest: r
        for r in session.exec(
            select(DeadLetter).where(col(DeadLetter.digest).in_(digests), DeadLetter.status == "new")
        )
    }
    out: list[DeadLetter] = []
    for row in rows:
        same = open_rows.get(row.digest)
        if same is None:
            session.add(row)
            open_rows[row.digest] = row
            out.append(row)
            continue
        same.occurrences += 1
        same.last_seen_at = row.created_at
        out.append(same)
    session.flush()
    return out


def record_dead_letter(
    engine: Engine,
    *,
    source: str,
    kind: str,
    reason: str,
    payload: bytes,
    content_type: str | None = None,
    outcome: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> int:
    """Store a rejected payload in its own transaction (the caller's may have rolled back);
    a repeat of one still waiting is counted on it (see :func:`add_dead_letters`)."""
    with session_scope(engine) as session:
        row = DeadLetter(
            source=source,
            kind=kind,
            reason=reason[:2000],
            content_type=content_type,
            payload=payload,
            outcome=outcome,
            context=context,
            created_at=utcnow(),
        )
        (kept,) = add_dead_letters(session, [row])
        assert kept.id is not None
        return kept.id


def list_dead_letters(session: Session, *, status: str | None = None, limit: int = 100) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(col(DeadLetter.id).desc()).limit(limit)
    if status:
        query = query.where(DeadLetter.status == status)
    return list(session.exec(query))


#: Replays a dead letter of one ``kind``: ``(engine, settings, dead letter id) -> {"status":
#: "replayed" | "failed", "reason": str | None}``. Ingest replays its own kinds (push,
#: notification, import); the composition root hands it the replayers of other services' kinds
#: (the recommender's ``delivery``), so ``pinpoint dead-letters replay`` and ``POST
#: /admin/dead-letters/{id}/replay`` dispatch by kind without one service importing another.
Replayer = Callable[[Engine, Any, int], dict[str, Any]]
