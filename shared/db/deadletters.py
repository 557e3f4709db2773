"""Dead letters: every rejected payload and parked delivery, kept verbatim for inspection/replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from shared.db.models import DeadLetter, utcnow
from shared.db.session import session_scope


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
    """Store a rejected payload in its own transaction (the caller's may have rolled back)."""
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
        session.add(row)
        session.flush()
        assert row.id is not None
        return row.id


def list_dead_letters(session: Session, *, status: str | None = None, limit: int = 100) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(col(DeadLetter.id).desc()).limit(limit)
    if status:
        query = query.where(DeadLetter.status == status)
    return list(session.exec(query))


#: Replays a dead letter of one ``kind``: ``(engine, settings, dead letter id) -> {"status":
#: "replayed" | "failed", "reason": str | None}``. Ingest replays its own kinds (push,
#: notification, import); other services register theirs here (the recommender: ``delivery``), so
#: ``pinpoint dead-letters replay`` and ``POST /admin/dead-letters/{id}/replay`` dispatch by kind
#: without one service importing another.
Replayer = Callable[[Engine, Any, int], dict[str, Any]]
_REPLAYERS: dict[str, Replayer] = {}


def register_replayer(kind: str, replayer: Replayer) -> None:
    _REPLAYERS[kind] = replayer


def replayer_for(kind: str) -> Replayer | None:
    return _REPLAYERS.get(kind)
