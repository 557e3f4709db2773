"""The status entry of a topic-based notification, read leniently (STANDARDS §2.2–§2.4).

R4 Backport ``Parameters`` (kebab-case names, ``valueString`` counters) and R4B/R5
``SubscriptionStatus`` (camelCase, integer64 as a JSON string — or a number, as several official
examples write it). Tolerated: ``subscription`` as ``valueString``, ``focus`` holding only an
identifier, missing ``entry.request``, R4B drafts with ``eventsInNotification``.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``Type/id`` (optionally ``/_history/vid``) at the end of a reference, absolute or relative.
_REFERENCE = re.compile(
    r"(?:^|/)([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?/?$"
)


@dataclass(frozen=True, slots=True)
class Event:
    """One ``notification-event``: its number (None when absent or unreadable) and focus
    (``Type/id`` relative to the source's base; None when absent or not a literal reference)."""

    number: int | None
    focus: str | None
    timestamp: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """What the status says: which subscription, what kind, its counter and events."""

    subscription: str | None  # the Subscription's logical id at its server
    topic: str | None
    status: str | None
    type: str
    events_since_start: int | None
    events: tuple[Event, ...] = field(default=())

    @property
    def highest_event(self) -> int | None:
        numbers = [e.number for e in self.events if e.number is not None]
        if numbers:
            return max(numbers)
        return None


#: Event numbers and counters are integer64 counts: 0 … 2⁶³ − 1.
MAX_COUNT = 2**63 - 1


def as_int(value: Any) -> int | None:
    """A count (event number, events since start) as a JSON string or number; None when absent,
    not an integer, or outside 0 … 2⁶³ − 1 (such a number cannot be stored: the event is booked
    as one without a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and 0 <= value <= MAX_COUNT:
        return value
    return None


def local_reference(reference: Any) -> str | None:
    """``Type/id`` of a literal reference (absolute URLs reduced to their last segments)."""
    if isinstance(reference, Mapping):
        reference = reference.get("reference")
    if not isinstance(reference, str):
        return None
    match = _REFERENCE.search(reference.split("?")[0])
    return f"{match.group(1)}/{match.group(2)}" if match else None


def subscription_id(reference: Any) -> str | None:
    """The logical id of ``Subscription/{id}`` in a reference or string (None if not one)."""
    if isinstance(reference, Mapping):
        reference = reference.get("reference") or reference.get("display")
    if not isinstance(reference, str):
        return None
    local = local_reference(reference)
    if local and local.startswith("Subscription/"):
        return local.split("/", 1)[1]
    text = reference.strip()
    return text[:200] if text and "/" not in text else None


def _value(param: Mapping[str, Any]) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            return value
    return None


def _from_parameters(status: Mapping[str, Any]) -> Notification:
    values: dict[str, Any] = {}
    events: list[Event] = []
    for param in status.get("parameter") or ():
        if not isinstance(param, Mapping):
            continue
        name = param.get("name")
        if name == "notification-event":
            parts = {p.get("name"): _value(p) for p in param.get("part") or () if isinstance(p, Mapping)}
            events.append(
                Event(
                    as_int(parts.get("event-number")),
                    local_reference(parts.get("focus")),
                    parts.get("timestamp") if isinstance(parts.get("timestamp"), str) else None,
                )
            )
        elif isinstance(name, str):
            values.setdefault(name, _value(param))
    return Notification(
        subscription=subscription_id(values.get("subscription")),
        topic=values.get("topic") if isinstance(values.get("topic"), str) else None,
        status=values.get("status") if isinstance(values.get("status"), str) else None,
        type=str(values.get("type") or "unknown"),
        events_since_start=as_int(values.get("events-since-subscription-start")),
        events=tuple(events),
    )


def _from_subscription_status(status: Mapping[str, Any]) -> Notification:
    events = tuple(
        Event(
            as_int(e.get("eventNumber")),
            local_reference(e.get("focus")),
            e.get("timestamp") if isinstance(e.get("timestamp"), str) else None,
        )
        for e in status.get("notificationEvent") or ()
        if isinstance(e, Mapping)
    )
    topic = status.get("topic")
    return Notification(
        subscription=subscription_id(status.get("subscription")),
        topic=topic if isinstance(topic, str) else None,
        status=status.get("status") if isinstance(status.get("status"), str) else None,
        type=str(status.get("type") or "unknown"),
        events_since_start=as_int(status.get("eventsSinceSubscriptionStart")),
        events=events,
    )


def read_status(status: Mapping[str, Any]) -> Notification:
    """The :class:`Notification` of a status resource (``Parameters`` or ``SubscriptionStatus``)."""
    if status.get("resourceType") == "SubscriptionStatus":
        return _from_subscription_status(status)
    return _from_parameters(status)


def first_resource(bundle: Mapping[str, Any]) -> Mapping[str, Any] | None:
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], Mapping):
        return None
    resource = entries[0].get("resource")
    return resource if isinstance(resource, Mapping) else None


def carried_resources(bundle: Mapping[str, Any]) -> set[str]:
    """``Type/id`` of every resource the notification carries in full (entries after the status)."""
    found: set[str] = set()
    for entry in (bundle.get("entry") or [])[1:]:
        if isinstance(entry, Mapping) and isinstance(entry.get("resource"), Mapping):
            resource = entry["resource"]
            if isinstance(resource.get("resourceType"), str) and isinstance(resource.get("id"), str):
                found.add(f"{resource['resourceType']}/{resource['id']}")
            elif isinstance(entry.get("fullUrl"), str):
                local = local_reference(entry["fullUrl"])
                if local:
                    found.add(local)
    return found


def listed_without_resource(bundle: Mapping[str, Any]) -> list[str]:
    """``Type/id`` of entries that name a resource without carrying it (id-only extra entries,
    or full-resource entries the server could not include)."""
    found: list[str] = []
    for entry in (bundle.get("entry") or [])[1:]:
        if not isinstance(entry, Mapping) or isinstance(entry.get("resource"), Mapping):
            continue
        raw_request = entry.get("request")
        request: Mapping[str, Any] = raw_request if isinstance(raw_request, Mapping) else {}
        if str(request.get("method", "")).upper() == "DELETE":
            continue
        local = local_reference(entry.get("fullUrl")) or local_reference(request.get("url"))
        if local:
            found.append(local)
    return found
