"""Repository of ``subscription_state`` (per source × subscription), ``subscription_event`` (the
event numbers received) and ``inbox`` (work to fetch).

Special ``subscription`` keys: ``(source)`` holds a source's reconciliation watermark (its
server's time) and schedule; ``(classic)`` the last classic rest-hook delivery without a
subscription id (HAPI PUTs, pings); ``(unknown)`` topic notifications without a subscription
reference. Nothing here commits.

Event numbers are booked without a lock: each notification appends its numbers to
``subscription_event`` (a replay conflicts on the key: not new). ``last_event_number`` of a
subscription is where gap detection has got to: :func:`sweep` (the subscription worker) moves it
over the numbers received and turns the holes it passes into gaps; :func:`announce` (handshake,
heartbeat, ``$status``) moves it to the sender's counter, the numbers up to it not received being
gaps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from shared.db.models import Inbox, SubscriptionEvent, SubscriptionState, utcnow
from shared.db.session import driver_rows

SOURCE_ROW = "(source)"
CLASSIC_ROW = "(classic)"
UNKNOWN_ROW = "(unknown)"
STATE = SubscriptionState.__table__  # type: ignore[attr-defined]
INBOX = Inbox.__table__  # type: ignore[attr-defined]
EVENTS = SubscriptionEvent.__table__  # type: ignore[attr-defined]

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
#: The subscription rows whose bookkeeping this transaction did ahead (:func:`note_ahead`).
_AHEAD = "pinpoint.noted_ahead"


def note_ahead(session: Session, source: str, subscription: str) -> None:
    """The row's bookkeeping (:func:`touch`, :func:`note_topic`) is done for this transaction:
    later calls in it write nothing (they would take the row's lock out of key order)."""
    session.info.setdefault(_AHEAD, set()).add((source, subscription))


def _noted_ahead(session: Session, source: str, subscription: str) -> bool:
    return (source, subscription) in session.info.get(_AHEAD, ())


def touch(session: Session, source: str, subscription: str, *, now: datetime, every: float = 1.0) -> None:
    """Note a delivery cheaply: at most one write per ``every`` seconds per subscription (and
    none at all when this process wrote it less than ``every`` seconds ago)."""
    if _noted_ahead(session, source, subscription):
        return
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


_NOTED: dict[tuple[int, str, str, str], tuple[datetime, str | None, str | None]] = {}


def note_topic(
    session: Session,
    source: str,
    subscription: str,
    *,
    now: datetime,
    status: str | None,
    topic: str | None,
    every: float = 1.0,
) -> None:
    """A topic notification's bookkeeping on the subscription's row (created if missing): its
    time, status and topic. Written when the status or topic differ from what this process last
    wrote, else at most once per ``every`` seconds: the row is not locked by every notification."""
    if _noted_ahead(session, source, subscription):
        return
    bind = session.get_bind()
    key = (id(bind), str(bind.engine.url), source, subscription)
    status = status[:32] if status else None
    topic = topic[:2000] if topic else None
    last = _NOTED.get(key)
    if (
        last is not None
        and timedelta(0) <= now - last[0] < timedelta(seconds=every)
        and (status is None or status == last[1])
        and (topic is None or topic == last[2])
    ):
        return
    _NOTED[key] = (now, status or (last[1] if last else None), topic or (last[2] if last else None))
    values: dict[str, Any] = {"last_notification_at": now, "updated_at": now}
    if status:
        values["status"] = status
    if topic:
        values["topic"] = topic
    result = session.execute(
        sa.update(STATE).where(STATE.c.source == source, STATE.c.subscription == subscription).values(values)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        stmt = _insert(session)(STATE).values(
            source=source,
            subscription=subscription,
            status=status or "active",
            topic=topic,
            last_notification_at=now,
            updated_at=now,
            gaps_detected=0,
        )
        session.execute(stmt.on_conflict_do_nothing(index_elements=["source", "subscription"]))


#: PostgreSQL: one statement text whatever the number of event numbers (an array parameter).
_LOG_PG = sa.text(
    "INSERT INTO subscription_event (source, subscription, event_number, received_at)"
    " SELECT :source, :subscription, n, :now FROM unnest(CAST(:numbers AS bigint[])) AS n"
    " ON CONFLICT DO NOTHING RETURNING event_number"
)


#: PostgreSQL: the event numbers of a whole batch, every subscription, inserted in key order;
#: the keys as one JSON document (written by orjson in C; psycopg dumps arrays item by item in
#: Python), or, for one number (the usual batch at a moderate rate), as plain parameters.
_BOOK_PG = (
    "INSERT INTO subscription_event (source, subscription, event_number, received_at)"
    " SELECT s, b, n, %s FROM jsonb_to_recordset(%s::jsonb) AS t(s text, b text, n bigint)"
    " ORDER BY s, b, n ON CONFLICT DO NOTHING RETURNING source, subscription, event_number"
)
_BOOK_ONE_PG = (
    "INSERT INTO subscription_event (source, subscription, event_number, received_at)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING source, subscription, event_number"
)

_BOOKED = "pinpoint.booked_events"
Key = tuple[str, str]


def book_events(session: Session, wanted: dict[Key, set[int]], *, now: datetime) -> None:
    """Append the event numbers of a whole transaction (every subscription) to the log at once,
    in one global key order (source, subscription, number): two transactions booking the same
    numbers wait for each other in the same order and never deadlock. :func:`log_events` then
    answers from what this booked; what no :func:`log_events` claims is taken out again by
    :func:`unclaimed_events` (the log holds what was booked by a delivery, nothing else)."""
    keys = sorted((source, sub, n) for (source, sub), numbers in wanted.items() for n in numbers)
    booked: dict[Key, tuple[set[int], set[int]]] = {k: (set(v), set()) for k, v in wanted.items() if v}
    session.info[_BOOKED] = booked
    if not keys:
        return
    if session.get_bind().dialect.name == "postgresql":
        if len(keys) == 1:
            rows = driver_rows(session, _BOOK_ONE_PG, (*keys[0], now))
        else:
            doc = orjson.dumps([{"s": a, "b": b, "n": n} for a, b, n in keys]).decode()
            rows = driver_rows(session, _BOOK_PG, (now, doc))
    else:
        values = [{"source": a, "subscription": b, "event_number": n, "received_at": now} for a, b, n in keys]
        stmt = sqlite_insert(EVENTS).values(values).on_conflict_do_nothing()
        cols = (EVENTS.c.source, EVENTS.c.subscription, EVENTS.c.event_number)
        rows = list(session.execute(stmt.returning(*cols)))
    for source, sub, n in rows:
        booked[(str(source), str(sub))][1].add(int(n))


def unclaimed_events(session: Session) -> None:
    """Before the commit: numbers :func:`book_events` inserted that no delivery claimed (a body
    that did not reach the booking after all) are taken out of the log again."""
    booked: dict[Key, tuple[set[int], set[int]]] | None = session.info.pop(_BOOKED, None)
    for (source, sub), (_, fresh) in (booked or {}).items():
        if fresh:
            session.execute(
                sa.delete(EVENTS).where(
                    EVENTS.c.source == source,
                    EVENTS.c.subscription == sub,
                    EVENTS.c.event_number.in_(sorted(fresh)),
                )
            )


def log_events(
    session: Session, source: str, subscription: str, numbers: Iterable[int], *, now: datetime
) -> set[int]:
    """Append event numbers to the log; returns those received for the first time. No lock: a
    concurrent delivery of the same number waits for the first one's commit and finds it there.
    Numbers :func:`book_events` booked for this transaction are answered from its booking (the
    first delivery of the transaction to claim a number gets it as new, a repeat does not)."""
    wanted = sorted(set(numbers))
    if not wanted:
        return set()
    booked: tuple[set[int], set[int]] | None = session.info.get(_BOOKED, {}).get((source, subscription))
    if booked is not None and booked[0].issuperset(wanted):
        fresh = booked[1]
        mine: set[int] = fresh.intersection(wanted)
        fresh.difference_update(mine)  # claimed: a repeat in the transaction is not new
        return mine
    if session.get_bind().dialect.name == "postgresql":
        params = {"source": source, "subscription": subscription, "numbers": wanted, "now": now}
        return {int(n) for n in session.execute(_LOG_PG, params).scalars()}
    key = {"source": source, "subscription": subscription, "received_at": now}
    rows = [{**key, "event_number": n} for n in wanted]
    stmt = sqlite_insert(EVENTS).values(rows).on_conflict_do_nothing().returning(EVENTS.c.event_number)
    return {int(n) for n in session.execute(stmt).scalars()}


def logged(session: Session, source: str, subscription: str, low: int, high: int) -> set[int]:
    """The event numbers of ``low..high`` received."""
    rows = session.execute(
        sa.select(EVENTS.c.event_number).where(
            EVENTS.c.source == source,
            EVENTS.c.subscription == subscription,
            EVENTS.c.event_number.between(low, high),
        )
    ).scalars()
    return {int(n) for n in rows}


def highest_logged(session: Session, source: str, subscription: str) -> int | None:
    value = session.execute(
        sa.select(sa.func.max(EVENTS.c.event_number)).where(
            EVENTS.c.source == source, EVENTS.c.subscription == subscription
        )
    ).scalar()
    return None if value is None else int(value)


def holes(low: int, high: int, present: Iterable[int]) -> list[tuple[int, int]]:
    """The ranges of ``low..high`` not in ``present``."""
    out: list[tuple[int, int]] = []
    start = low
    for n in sorted(n for n in set(present) if low <= n <= high):
        if n > start:
            out.append((start, n - 1))
        start = n + 1
    if start <= high:
        out.append((start, high))
    return out


def announce(session: Session, row: SubscriptionState, counter: int) -> list[tuple[int, int]]:
    """The sender says ``counter`` events were sent (handshake, heartbeat, ``$status``): the
    numbers after ``last_event_number`` up to it not received are gaps (returned); the row, which
    the caller holds locked, moves to the counter."""
    last = row.last_event_number
    floor = 0 if last is None else last
    if counter <= floor:
        if last is None:
            row.last_event_number = counter
        return []
    found = holes(floor + 1, counter, logged(session, row.source, row.subscription, floor + 1, counter))
    row.last_event_number = counter
    return found


def unswept(session: Session) -> list[tuple[str, str]]:
    """Subscriptions with event numbers received beyond where gap detection has got to."""
    ahead = (
        sa.select(sa.literal(1))
        .where(
            EVENTS.c.source == STATE.c.source,
            EVENTS.c.subscription == STATE.c.subscription,
            EVENTS.c.event_number > sa.func.coalesce(STATE.c.last_event_number, 0),
        )
        .exists()
    )
    topic_rows = ~STATE.c.subscription.startswith("(")
    query = sa.select(STATE.c.source, STATE.c.subscription).where(topic_rows, ahead)
    return [(str(a), str(b)) for a, b in session.execute(query)]


def sweep(
    session: Session, source: str, subscription: str, *, now: datetime, grace: timedelta, limit: int = 50_000
) -> tuple[SubscriptionState, list[tuple[int, int]]]:
    """Move ``last_event_number`` over the numbers received after it (the row locked): numbers
    that follow on are passed at once; a hole is a gap (returned) once a number above it was
    received more than ``grace`` ago (a reordered delivery has had that long to arrive), else
    detection stops below it for now."""
    row = lock_state(session, source, subscription)
    floor = 0 if row.last_event_number is None else row.last_event_number
    mine = sa.and_(
        EVENTS.c.source == source, EVENTS.c.subscription == subscription, EVENTS.c.event_number > floor
    )
    upper = session.execute(
        sa.select(sa.func.max(EVENTS.c.event_number)).where(mine, EVENTS.c.received_at <= now - grace)
    ).scalar()
    numbers = session.execute(
        sa.select(EVENTS.c.event_number).where(mine).order_by(EVENTS.c.event_number).limit(limit)
    ).scalars()
    current = floor
    found: list[tuple[int, int]] = []
    for n in numbers:
        if n == current + 1:
            current = n
        elif upper is not None and n <= upper:
            found.append((current + 1, n - 1))
            current = n
        else:
            break
    if current != floor:
        row.last_event_number = current
        session.add(row)
    return row, found


def last_event(session: Session, source: str, subscription: str) -> int | None:
    """The highest event number of a subscription received or announced (gap detection may
    not have got there yet)."""
    row = session.get(SubscriptionState, (source, subscription))
    swept = row.last_event_number if row else None
    values = [v for v in (swept, highest_logged(session, source, subscription)) if v is not None]
    return max(values, default=None)


def prune_events(session: Session, *, before: datetime) -> int:
    """Forget event numbers received before ``before`` that gap detection has passed (or of
    subscriptions without gap detection): a replay of one that old is booked again, harmlessly."""
    last = (
        sa.select(sa.func.coalesce(STATE.c.last_event_number, 0))
        .where(STATE.c.source == EVENTS.c.source, STATE.c.subscription == EVENTS.c.subscription)
        .scalar_subquery()
    )
    result = session.execute(
        sa.delete(EVENTS).where(
            EVENTS.c.received_at < before,
            sa.or_(EVENTS.c.subscription.startswith("("), EVENTS.c.event_number <= sa.func.coalesce(last, 0)),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


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


def gap_range(reference: str | None) -> tuple[int, int] | None:
    """``low..high`` of a gap row's reference ``"low-high"``."""
    low, _, high = (reference or "").partition("-")
    return (int(low), int(high)) if low.isdigit() and high.isdigit() else None


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
