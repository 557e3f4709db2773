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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
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
        GAPS.labels(source.id).inc()
        sub = row.subscription
        log.warning("subscriptions.gap", source=source.id, subscription=sub, first=low, last=high)
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


def book_topic_notification(
    session: Session, source: Source, bundle: Mapping[str, Any], *, now: datetime | None = None
) -> Booking:
    """Book a topic-based notification (its status is the first entry).

    Event numbers are appended to the subscription's log (no lock: notifications of one
    subscription are booked side by side); the subscription worker finds the gaps between them
    (:func:`state.sweep`). A handshake or heartbeat, rare, locks the subscription's row to
    compare its counter with what was received (:func:`state.announce`)."""
    now = now or utcnow()
    note = read_status(first_resource(bundle) or {})
    NOTIFICATIONS.labels(source.id, note.type).inc()
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
        log.info("subscriptions.replay", source=source.id, subscription=sub, events=len(note.events))

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
        log.warning("subscriptions.unfetchable", source=source.id, subscription=sub, focuses=len(targets))
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
    NOTIFICATIONS.labels(source.id, "ping").inc()
    state.touch(session, source.id, subscription or state.CLASSIC_ROW, now=now)
    if source.fhir_base_url is None:
        return False
    if state.pending_of_kind(session, source.id, [state.EMPTY, state.PING]) is not None:
        return False
    state.enqueue(session, source.id, state.PING, now=now, subscription=subscription)
    return True


def note_classic(session: Session, source: Source, subscription: str | None) -> None:
    """A classic rest-hook delivery with payload (HAPI PUT, Medplum POST): lag bookkeeping."""
    NOTIFICATIONS.labels(source.id, "rest-hook").inc()
    state.touch(session, source.id, subscription or state.CLASSIC_ROW, now=utcnow())
