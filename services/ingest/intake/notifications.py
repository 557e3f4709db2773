"""Topic-based notifications (CONTRACT §2): ``history`` / ``subscription-notification`` Bundles
whose first entry is the status (R4 Backport ``Parameters``, R4B/R5 ``SubscriptionStatus``).

Hook point for issue 6 (subscriptions): handshake/heartbeat bookkeeping in
``subscription_state``, event-number gap detection, and inbox rows for ``id-only``/``empty``
content go in :func:`handle`. For now: every notification is acknowledged with 200 and an
informational OperationOutcome, and the full resources it carries are stored like batch entries
(in the caller's transaction, before the 2xx).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from services.ingest.intake.pipeline import informational
from shared.settings import Source

if TYPE_CHECKING:
    from services.ingest.intake.bundles import Result

STATUS_TYPES = frozenset({"Parameters", "SubscriptionStatus"})


def _first_resource(bundle: Mapping[str, Any]) -> Mapping[str, Any] | None:
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], Mapping):
        return None
    resource = entries[0].get("resource")
    return resource if isinstance(resource, Mapping) else None


def is_notification(bundle: Mapping[str, Any]) -> bool:
    first = _first_resource(bundle)
    return first is not None and first.get("resourceType") in STATUS_TYPES


def notification_type(status: Mapping[str, Any]) -> str:
    """``handshake``, ``heartbeat``, ``event-notification``, ``query-status``… (or ``unknown``)."""
    if status.get("resourceType") == "SubscriptionStatus":
        value = status.get("type")
        return value if isinstance(value, str) else "unknown"
    for param in status.get("parameter") or ():
        if isinstance(param, Mapping) and param.get("name") == "type":
            for key in ("valueCode", "valueString"):
                if isinstance(param.get(key), str):
                    return str(param[key])
    return "unknown"


def handle(
    session: Session,
    source: Source,
    bundle: Mapping[str, Any],
    store_entries: Callable[[Mapping[str, Any]], Result],
) -> Result:
    status = _first_resource(bundle) or {}
    kind = notification_type(status)
    rest = {"resourceType": "Bundle", "type": "collection", "entry": (bundle.get("entry") or [])[1:]}
    result = store_entries(rest)
    kept = result.tally.total("kept")
    result.status = 200
    result.body = informational(f"{kind} notification received; {kept} resource(s) kept")
    return result
