"""Booking a notification in the caller's transaction, before the 2xx (CONTRACT §2, STANDARDS §2.4).

Topic-based (R4 Backport / R4B / R5): the subscription's last event number and heartbeat are
kept; ``full-resource`` entries are stored like a push by the caller; ``id-only`` focuses become
inbox rows to read from the source; ``empty`` content a catch-up search; an event number beyond
``last + 1`` (or a heartbeat whose counter is ahead) records a gap to recover after a short grace
(out-of-order delivery). Events already seen are no-ops. Classic rest-hook pings become one
coalesced catch-up row. No patient data is logged.
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


def _record_gap(
    session: Session, source: Source, sub: str, low: int, high: int, now: datetime, row: Any
) -> None:
    if high < low:
        return
    state.enqueue(
        session,
        source.id,
        state.GAP,
        now=now,
        subscription=sub,
        event_number=low,
        reference=f"{low}-{high}",
        due=now + GAP_GRACE,
    )
    row.gaps_detected = (row.gaps_detected or 0) + 1
    GAPS.labels(source.id).inc()
    log.warning("subscriptions.gap", source=source.id, subscription=sub, first=low, last=high)


def book_topic_notification(
    session: Session, source: Source, bundle: Mapping[str, Any], *, now: datetime | None = None
) -> Booking:
    """Book a topic-based notification (its status is the first entry)."""
    now = now or utcnow()
    note = read_status(first_resource(bundle) or {})
    NOTIFICATIONS.labels(source.id, note.type).inc()
    sub = note.subscription or "(unknown)"
    row = state.lock_state(session, source.id, sub)
    row.last_notification_at = now
    row.updated_at = now
    if note.topic:
        row.topic = note.topic[:2000]
    if note.status:
        row.status = note.status[:32]
    last = row.last_event_number
    counter = note.events_since_start
    queued = 0
    fetchable = source.fhir_base_url is not None

    # Without a subscription reference, numbers of different subscriptions could mix: no gaps.
    numbered = note.subscription is not None
    # Unknown history (no handshake seen, not created by `subscriptions sync`): every event
    # before the first one seen counts as missing.
    floor = 0 if last is None else last

    if note.type in ("handshake", "heartbeat"):
        row.last_heartbeat_at = now
        if counter is not None and numbered and counter > floor:
            _record_gap(session, source, sub, floor + 1, counter, now, row)  # sent, never received
            queued += 1
        if counter is not None and (last is None or counter > last):
            row.last_event_number = counter
        session.add(row)
        return Booking(note, False, queued, f"{note.type} received")

    if note.type not in ("event-notification", "query-event"):
        session.add(row)
        return Booking(note, False, 0, f"{note.type} notification received")

    late = any(e.number is not None and last is not None and e.number <= last for e in note.events)
    gaps = state.open_gaps(session, source.id, sub) if late else []

    def fresh(number: int | None) -> bool:
        if number is None or last is None or number > last:
            return True
        return any(low <= number <= high for low, high in gaps)

    new_events = [e for e in note.events if fresh(e.number)]
    if gaps:  # late deliveries close (or shrink) the gaps they fill
        late_numbers = [e.number for e in new_events if e.number is not None and e.number <= floor]
        state.fill_gaps(session, source.id, sub, late_numbers)
    replay = bool(note.events) and not new_events
    if replay:
        log.info("subscriptions.replay", source=source.id, subscription=sub, events=len(note.events))

    numbers = sorted({e.number for e in new_events if e.number is not None})
    if numbered:
        previous = floor
        for number in numbers:
            if number > previous + 1 and number > floor + 1:
                _record_gap(session, source, sub, max(previous, floor) + 1, number - 1, now, row)
                queued += 1
            previous = max(previous, number)
    # The counter may already be ahead (later events in flight): only event numbers count here.
    highest = max(numbers, default=None)
    if highest is not None and (last is None or highest > last):
        row.last_event_number = highest
    session.add(row)

    if _empty_content(note, bundle):
        if replay:
            return Booking(note, False, 0, "events already received; nothing to do")
        if fetchable and state.pending_of_kind(session, source.id, [state.EMPTY, state.PING]) is None:
            state.enqueue(session, source.id, state.EMPTY, now=now, subscription=sub, event_number=highest)
            queued += 1
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
    return Booking(note, bool(carried), queued, f"{len(note.events)} event(s) received; {queued} to fetch")


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
