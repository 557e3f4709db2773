"""Booking a notification in the caller's transaction, before the 2xx (CONTRACT §2, STANDARDS §2.4).

Topic-based (R4 Backport / R4B / R5): the event numbers received are logged per subscription
and its heartbeat kept; ``full-resource`` entries are stored like a push by the caller; ``id-only``
focuses become inbox rows to read from the source; ``empty`` content a catch-up search. A hole
between event numbers (or a heartbeat whose counter is ahead) is a gap, recovered once a short
grace for out-of-order deliveries has passed (the worker finds the holes in the log). Events
already received are no-ops. Classic rest-hook pings become one coalesced catch-up row. No
patient data is logged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from prometheus_client import Counter
from sqlmodel import Session

from services.ingest.subscriptions import state
from services.ingest.subscriptions.status import (
    Notification,
    carried_resources,
    first_resource,
    listed_without_resource,
    read_status,
)
from shared.db.group_commit import when_settled
from shared.db.models import utcnow
from shared.domain.relevance import KEPT_TYPES
from shared.humanize import plural
from shared.logging import get_logger
from shared.settings import Source

log = get_logger("pinpoint.ingest.subscriptions")

NOTIFICATIONS = Counter(
    "pinpoint_subscription_notifications_total", "Subscription notifications received", ["source", "type"]
)
GAPS = Counter("pinpoint_subscription_gaps_total", "Event-number gaps detected", ["source"])

#: How long a gap may wait for late (reordered) deliveries before recovery starts.
GAP_GRACE = timedelta(seconds=5)


@dataclass(frozen=True)
class Booking:
    """What the caller does next: store the carried entries (or not, for a replay)."""

    notification: Notification
    store_entries: bool
    queued: int
    summary: str


def _gap_seen(source: str, subscription: str, low: int, high: int) -> None:
    GAPS.labels(source).inc()
    log.warning("subscriptions.gap", source=source, subscription=subscription, first=low, last=high)


def _empty_content(note: Notification, bundle: Mapping[str, Any]) -> bool:
    return bool(note.events) and all(e.focus is None for e in note.events) and not carried_resources(bundle)


def record_gaps(
    session: Session,
    source: Source,
    row: Any,
    found: list[tuple[int, int]],
    *,
    now: datetime,
    due: datetime,
) -> int:
    """Gaps of a subscription (its row held locked): counted, logged, and queued for recovery
    (``$events``, or the catch-up search) when the source has a server to ask. Returns how many
    were queued."""
    queued = 0
    for low, high in found:
        row.gaps_detected = (row.gaps_detected or 0) + 1
        when_settled(session, partial(_gap_seen, source.id, row.subscription, low, high))
        if source.fhir_base_url is None:
            continue
        state.enqueue(
            session,
            source.id,
            state.GAP,
            now=now,
            subscription=row.subscription,
            event_number=low,
            reference=f"{low}-{high}",
            due=due,
        )
        queued += 1
    return queued


_STATUS_READ = "pinpoint.status_read"


def status_read_ahead(session: Session, bundle: Mapping[str, Any], note: Notification | None) -> None:
    """``note``, the status of ``bundle`` read ahead from the same body (:func:`topic_ahead`), is
    what :func:`book_topic_notification` uses for this bundle instead of reading it again."""
    first = first_resource(bundle)
    if note is None or first is None:
        session.info.pop(_STATUS_READ, None)
    else:
        session.info[_STATUS_READ] = (id(first), note)


def _status_of(session: Session, bundle: Mapping[str, Any]) -> Notification:
    first = first_resource(bundle) or {}
    ahead: tuple[int, Notification] | None = session.info.pop(_STATUS_READ, None)
    if ahead is not None and ahead[0] == id(first):  # the very status object, still alive
        return ahead[1]
    return read_status(first)


def book_topic_notification(
    session: Session, source: Source, bundle: Mapping[str, Any], *, now: datetime | None = None
) -> Booking:
    """Book a topic-based notification (its status is the first entry).

    Event numbers are appended to the subscription's log (no lock: notifications of one
    subscription are booked side by side); the subscription worker finds the gaps between them
    (:func:`state.sweep`). A handshake or heartbeat, rare, locks the subscription's row to
    compare its counter with what was received (:func:`state.announce`)."""
    now = now or utcnow()
    note = _status_of(session, bundle)
    when_settled(session, NOTIFICATIONS.labels(source.id, note.type).inc)
    # Without a subscription reference, numbers of different subscriptions could mix: no gaps.
    numbered = note.subscription is not None
    sub = note.subscription or state.UNKNOWN_ROW
    fetchable = source.fhir_base_url is not None

    if note.type in ("handshake", "heartbeat"):
        row = state.lock_state(session, source.id, sub)
        row.last_notification_at = row.last_heartbeat_at = row.updated_at = now
        if note.topic:
            row.topic = note.topic[:2000]
        if note.status:
            row.status = note.status[:32]
        queued = 0
        counter = note.events_since_start
        if counter is not None:
            found = state.announce(session, row, counter)  # sent, never received
            if numbered:
                queued = record_gaps(session, source, row, found, now=now, due=now + GAP_GRACE)
        session.add(row)
        return Booking(note, False, queued, f"{note.type} received")

    state.note_topic(session, source.id, sub, now=now, status=note.status, topic=note.topic)
    if note.type not in ("event-notification", "query-event"):
        return Booking(note, False, 0, f"{note.type} notification received")

    numbers = {e.number for e in note.events if e.number is not None}
    fresh = state.log_events(session, source.id, sub, numbers, now=now)
    new_events = [e for e in note.events if e.number is None or e.number in fresh]
    replay = bool(note.events) and not new_events
    if replay:
        when_settled(
            session,
            partial(
                log.info, "subscriptions.replay", source=source.id, subscription=sub, events=len(note.events)
            ),
        )

    if _empty_content(note, bundle):
        if replay:
            return Booking(note, False, 0, "events already received; nothing to do")
        queued = 0
        if fetchable and state.pending_of_kind(session, source.id, [state.EMPTY, state.PING]) is None:
            highest = max(fresh, default=None)
            state.enqueue(session, source.id, state.EMPTY, now=now, subscription=sub, event_number=highest)
            queued = 1
        return Booking(note, False, queued, "empty notification received; catching up by search")

    # Full resources are stored whatever their event number (a replay stores nothing new: same
    # version, or older than what is kept). An id-only focus is fetched once per (event number,
    # focus): a replay queues nothing, while per-bundle numbering (1..n in every notification, as
    # some vendors do) still gets every focus read.
    carried = carried_resources(bundle)
    wanted = [(e.number, e.focus) for e in note.events if e.focus and e.focus not in carried]
    seen = state.seen_events(session, source.id, sub, [n for n, _ in wanted if n is not None])
    targets: dict[str, int | None] = {}
    skipped: set[str] = set()
    for event_number, focus in wanted:
        assert focus is not None
        if event_number is not None and (event_number, focus) in seen:
            skipped.add(focus)
            continue
        targets.setdefault(focus, event_number)
    for ref in listed_without_resource(bundle):
        if ref not in carried and ref not in skipped:
            targets.setdefault(ref, None)
    if targets and not fetchable:
        when_settled(
            session,
            partial(
                log.warning,
                "subscriptions.unfetchable",
                source=source.id,
                subscription=sub,
                focuses=len(targets),
            ),
        )
    queued = 0
    for ref, target_number in targets.items():
        if ref.split("/", 1)[0] not in KEPT_TYPES or not fetchable:
            continue
        state.enqueue(
            session,
            source.id,
            state.ID_ONLY,
            now=now,
            subscription=sub,
            event_number=target_number,
            reference=ref,
        )
        queued += 1
    return Booking(
        note, bool(carried), queued, f"{plural(len(note.events), 'event')} received; {queued} to fetch"
    )


def book_ping(session: Session, source: Source, *, subscription: str | None = None) -> bool:
    """A classic rest-hook without payload (empty POST): one coalesced catch-up search."""
    now = utcnow()
    when_settled(session, NOTIFICATIONS.labels(source.id, "ping").inc)
    state.touch(session, source.id, subscription or state.CLASSIC_ROW, now=now)
    if source.fhir_base_url is None:
        return False
    if state.pending_of_kind(session, source.id, [state.EMPTY, state.PING]) is not None:
        return False
    state.enqueue(session, source.id, state.PING, now=now, subscription=subscription)
    return True


def note_classic(session: Session, source: Source, subscription: str | None) -> None:
    """A classic rest-hook delivery with payload (HAPI PUT, Medplum POST): lag bookkeeping."""
    when_settled(session, NOTIFICATIONS.labels(source.id, "rest-hook").inc)
    state.touch(session, source.id, subscription or state.CLASSIC_ROW, now=utcnow())


@dataclass(slots=True)
class Ahead:
    """What a delivery will write on its subscription's row and event log, read from its body
    before the deliveries of its transaction run (:func:`book_ahead`)."""

    source: str
    subscription: str
    numbers: set[int] = field(default_factory=set)
    lock: bool = False  # a handshake or heartbeat: the row locked
    topic_note: tuple[str | None, str | None] | None = None  # a topic notification: (status, topic)
    classic: bool = False  # a classic delivery: the row touched
    note: Notification | None = None  # a topic notification: its status, read once


def topic_ahead(source: Source, bundle: Mapping[str, Any]) -> Ahead:
    """The :class:`Ahead` of a topic notification: what :func:`book_topic_notification` books."""
    note = read_status(first_resource(bundle) or {})
    sub = note.subscription or state.UNKNOWN_ROW
    if note.type in ("handshake", "heartbeat"):
        return Ahead(source.id, sub, lock=True, note=note)
    ahead = Ahead(source.id, sub, topic_note=(note.status, note.topic), note=note)
    if note.type in ("event-notification", "query-event"):
        ahead.numbers = {e.number for e in note.events if e.number is not None}
    return ahead


def classic_ahead(source: Source, subscription: str | None) -> Ahead:
    """The :class:`Ahead` of a classic rest-hook delivery (a ping, a HAPI PUT, a Medplum POST)."""
    return Ahead(source.id, subscription or state.CLASSIC_ROW, classic=True)


def book_ahead(session: Session, aheads: Iterable[Ahead], *, now: datetime | None = None) -> None:
    """At the start of a transaction of several deliveries: the rows of their subscriptions
    (locked, noted, touched) in key order, then every event number in one statement, in key order
    (:func:`state.book_events`). Every transaction takes these locks in the same order: two that
    book the same subscriptions or numbers (re-deliveries landing in two writers) wait for each
    other, never in a cycle. The deliveries then find their bookings done."""
    now = now or utcnow()
    rows: dict[tuple[str, str], list[Ahead]] = {}
    for ahead in aheads:
        rows.setdefault((ahead.source, ahead.subscription), []).append(ahead)
    for (source, sub), mine in sorted(rows.items()):
        if any(a.lock for a in mine):
            state.lock_state(session, source, sub)
            continue  # handshakes and heartbeats write the row they hold
        notes = [a.topic_note for a in mine if a.topic_note is not None]
        if notes:  # the status and topic the last of them leaves
            status = next((s for s, _ in reversed(notes) if s), None)
            topic = next((t for _, t in reversed(notes) if t), None)
            state.note_topic(session, source, sub, now=now, status=status, topic=topic)
        elif any(a.classic for a in mine):
            state.touch(session, source, sub, now=now)
        state.note_ahead(session, source, sub)
    numbers = {key: {n for a in mine for n in a.numbers} for key, mine in rows.items()}
    state.book_events(session, {k: v for k, v in numbers.items() if v}, now=now)
