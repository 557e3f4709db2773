"""Repository of ``subscription_state`` (per source × subscription) and ``inbox`` (work to fetch).

Special ``subscription`` keys: ``(source)`` holds a source's reconciliation watermark (its
server's time) and schedule; ``(classic)`` the last classic rest-hook delivery without a
subscription id (HAPI PUTs, pings). Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from shared.db.models import Inbox, SubscriptionState, utcnow

SOURCE_ROW = "(source)"
CLASSIC_ROW = "(classic)"
STATE = SubscriptionState.__table__  # type: ignore[attr-defined]
INBOX = Inbox.__table__  # type: ignore[attr-defined]

#: Inbox kinds: a resource to read, a catch-up search (empty content, a ping), a range of events.
ID_ONLY, EMPTY, PING, GAP = "id-only", "empty", "ping", "gap"
PENDING, WORKING, DONE, FAILED = "pending", "working", "done", "failed"


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def ensure_state(session: Session, source: str, subscription: str) -> None:
    """Create the row if missing (safe under concurrency)."""
    now = utcnow()
    stmt = _insert(session)(STATE).values(
        source=source, subscription=subscription, status="active", updated_at=now, gaps_detected=0
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["source", "subscription"]))


def lock_state(session: Session, source: str, subscription: str) -> SubscriptionState:
    """The row of a subscription, created if missing and locked for this transaction (PostgreSQL
    ``FOR UPDATE``: notifications of one subscription are booked one after the other)."""
    query = select(SubscriptionState).where(
        SubscriptionState.source == source, SubscriptionState.subscription == subscription
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    query = query.execution_options(populate_existing=True)
    row = session.exec(query).first()
    if row is None:  # first notification of this subscription
        ensure_state(session, source, subscription)
        row = session.exec(query).one()
    return row


_TOUCHED: dict[tuple[int, str, str, str], datetime] = {}


def touch(session: Session, source: str, subscription: str, *, now: datetime, every: float = 1.0) -> None:
    """Note a delivery cheaply: at most one write per ``every`` seconds per subscription (and
    none at all when this process wrote it less than ``every`` seconds ago)."""
    bind = session.get_bind()
    key = (id(bind), str(bind.engine.url), source, subscription)
    last = _TOUCHED.get(key)
    if last is not None and timedelta(0) <= now - last < timedelta(seconds=every):
        return
    _TOUCHED[key] = now
    result = session.execute(
        sa.update(STATE)
        .where(
            STATE.c.source == source,
            STATE.c.subscription == subscription,
            sa.or_(
                STATE.c.last_notification_at.is_(None),
                STATE.c.last_notification_at < now - timedelta(seconds=every),
            ),
        )
        .values(last_notification_at=now, updated_at=now)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        stmt = _insert(session)(STATE).values(
            source=source,
            subscription=subscription,
            status="active",
            last_notification_at=now,
            updated_at=now,
            gaps_detected=0,
        )
        session.execute(stmt.on_conflict_do_nothing(index_elements=["source", "subscription"]))


def states(session: Session, source: str | None = None) -> list[SubscriptionState]:
    query = select(SubscriptionState).order_by(
        col(SubscriptionState.source), col(SubscriptionState.subscription)
    )
    if source is not None:
        query = query.where(SubscriptionState.source == source)
    return list(session.exec(query))


def enqueue(
    session: Session,
    source: str,
    kind: str,
    *,
    now: datetime,
    subscription: str | None = None,
    event_number: int | None = None,
    reference: str | None = None,
    due: datetime | None = None,
) -> Inbox:
    row = Inbox(
        source=source,
        subscription=subscription,
        event_number=event_number,
        kind=kind,
        reference=reference,
        status=PENDING,
        next_attempt_at=due or now,
        received_at=now,
    )
    session.add(row)
    return row


def pending_of_kind(session: Session, source: str, kinds: Sequence[str]) -> Inbox | None:
    """A pending row of one of ``kinds`` not yet started (to coalesce catch-up requests)."""
    return session.exec(
        select(Inbox)
        .where(Inbox.source == source, col(Inbox.kind).in_(kinds), Inbox.status == PENDING)
        .limit(1)
    ).first()


def seen_events(
    session: Session, source: str, subscription: str, numbers: Sequence[int]
) -> set[tuple[int, str]]:
    """(event number, focus) of the id-only rows already queued for ``numbers`` (any state)."""
    if not numbers:
        return set()
    rows = session.exec(
        select(Inbox.event_number, Inbox.reference).where(
            Inbox.source == source,
            Inbox.subscription == subscription,
            Inbox.kind == ID_ONLY,
            col(Inbox.event_number).in_(list(numbers)),
        )
    )
    return {(n, ref) for n, ref in rows if n is not None and ref is not None}


def _range(reference: str | None) -> tuple[int, int] | None:
    low, _, high = (reference or "").partition("-")
    return (int(low), int(high)) if low.isdigit() and high.isdigit() else None


def open_gaps(session: Session, source: str, subscription: str) -> list[tuple[int, int]]:
    """Event ranges still to recover for a subscription."""
    rows = session.exec(
        select(Inbox.reference).where(
            Inbox.source == source,
            Inbox.subscription == subscription,
            Inbox.kind == GAP,
            col(Inbox.status).in_([PENDING, WORKING]),
        )
    )
    return [r for r in map(_range, rows) if r is not None]


def fill_gaps(session: Session, source: str, subscription: str, numbers: Iterable[int]) -> int:
    """Late deliveries that fall inside a gap not yet being recovered: those event numbers leave
    it (a gap left empty is done; one cut in the middle becomes two rows, due as before), so a
    reordered stream does not pile up gaps and recovery asks only for what is still missing.
    Gaps a worker is recovering right now are left alone. Returns how many gaps changed."""
    received = sorted(set(numbers))
    if not received:
        return 0
    rows = session.exec(
        select(Inbox).where(
            Inbox.source == source,
            Inbox.subscription == subscription,
            Inbox.kind == GAP,
            Inbox.status == PENDING,
            col(Inbox.event_number) <= received[-1],
        )
    ).all()
    changed = 0
    for row in rows:
        span = _range(row.reference)
        if span is None:
            continue
        low, high = span
        inside = [n for n in received if low <= n <= high]
        if not inside:
            continue
        missing: list[tuple[int, int]] = []
        start = low
        for n in inside:
            if n > start:
                missing.append((start, n - 1))
            start = n + 1
        if start <= high:
            missing.append((start, high))
        changed += 1
        if not missing:
            row.status = DONE
        else:
            row.event_number, row.reference = missing[0][0], f"{missing[0][0]}-{missing[0][1]}"
            for first, last in missing[1:]:
                session.add(
                    Inbox(
                        source=row.source,
                        subscription=row.subscription,
                        event_number=first,
                        kind=GAP,
                        reference=f"{first}-{last}",
                        status=PENDING,
                        next_attempt_at=row.next_attempt_at,
                        received_at=row.received_at,
                    )
                )
        session.add(row)
    return changed


def claim_due(engine: Engine, *, now: datetime, limit: int, lease: timedelta) -> list[Inbox]:
    """Claim up to ``limit`` due rows (pending, or working with an expired lease); each claimed
    row is ``working`` with ``next_attempt_at`` = the lease end, so a crashed worker's rows return."""
    claimed: list[Inbox] = []
    with Session(engine, expire_on_commit=False) as session:
        candidates = session.exec(
            select(Inbox)
            .where(col(Inbox.status).in_([PENDING, WORKING]), Inbox.next_attempt_at <= now)
            .order_by(col(Inbox.next_attempt_at), col(Inbox.id))
            .limit(limit)
        ).all()
        for row in candidates:
            result = session.execute(
                sa.update(INBOX)
                .where(
                    INBOX.c.id == row.id,
                    INBOX.c.status == row.status,
                    INBOX.c.next_attempt_at == row.next_attempt_at,
                )
                .values(status=WORKING, next_attempt_at=now + lease)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                row.status = WORKING
                claimed.append(row)
        session.commit()
    return claimed


def finish(session: Session, row_id: int, *, status: str = DONE, error: str | None = None) -> None:
    session.execute(sa.update(INBOX).where(INBOX.c.id == row_id).values(status=status, last_error=error))


def retry_later(session: Session, row_id: int, *, attempts: int, due: datetime, error: str) -> None:
    session.execute(
        sa.update(INBOX)
        .where(INBOX.c.id == row_id)
        .values(status=PENDING, attempts=attempts, next_attempt_at=due, last_error=error[:500])
    )


def inbox_counts(session: Session) -> dict[str, int]:
    rows = session.execute(sa.select(INBOX.c.status, sa.func.count()).group_by(INBOX.c.status))
    return {str(status): int(n) for status, n in rows}


def oldest_pending(session: Session) -> datetime | None:
    value = session.execute(
        sa.select(sa.func.min(INBOX.c.received_at)).where(INBOX.c.status.in_([PENDING, WORKING]))
    ).scalar()
    return value if isinstance(value, datetime) else None


def prune_done(session: Session, *, before: datetime) -> int:
    result = session.execute(sa.delete(INBOX).where(INBOX.c.status == DONE, INBOX.c.received_at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
