"""Topic-based notifications (CONTRACT §2): ``history`` / ``subscription-notification`` Bundles
whose first entry is the status (R4 Backport ``Parameters``, R4B/R5 ``SubscriptionStatus``).

Booked in the caller's transaction, before the 2xx (:mod:`services.ingest.subscriptions.intake`):
handshake and heartbeat bookkeeping, gap detection, inbox rows for ``id-only``/``empty``
content; the full resources a notification carries are stored like batch entries. The answer is
an empty 200 (STANDARDS §2.4: senders want a fast, empty 2xx).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlmodel import Session

from services.ingest.intake.pipeline import Result, Tally
from services.ingest.subscriptions.intake import book_topic_notification
from services.ingest.subscriptions.status import carried_resources, first_resource, read_status
from shared.settings import Source

STATUS_TYPES = frozenset({"Parameters", "SubscriptionStatus"})


def is_notification(bundle: Mapping[str, Any]) -> bool:
    first = first_resource(bundle)
    return first is not None and first.get("resourceType") in STATUS_TYPES


def is_transaction_notification(bundle: Mapping[str, Any]) -> bool:
    """HAPI FHIR posts topic notifications with its transaction client: a ``transaction`` Bundle
    whose first entry is the status (with a ``type`` and a ``subscription``)."""
    first = first_resource(bundle)
    if first is None or first.get("resourceType") not in STATUS_TYPES:
        return False
    note = read_status(first)
    return note.type != "unknown" and note.subscription is not None


def notification_type(status: Mapping[str, Any]) -> str:
    """``handshake``, ``heartbeat``, ``event-notification``, ``query-status``… (or ``unknown``)."""
    return read_status(status).type


def handle(
    session: Session,
    source: Source,
    bundle: Mapping[str, Any],
    store_entries: Callable[[Mapping[str, Any]], Result],
) -> Result:
    # Carried resources first, the subscription's row last: the row (locked per subscription
    # on PostgreSQL) is then held only for the end of the transaction. Replays store nothing new.
    if carried_resources(bundle):
        rest = {"resourceType": "Bundle", "type": "collection", "entry": (bundle.get("entry") or [])[1:]}
        result = store_entries(rest)
    else:
        result = Result(200, {}, Tally())
    book_topic_notification(session, source, bundle)
    # The answer is empty: no summary is written for it (it cost a few µs a notification).
    result.status = 200
    result.body = {}
    result.empty = True
    return result
