"""Gap bookkeeping of topic-based notifications (STANDARDS §2.4 items 3, 4, 7), through the API."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from sqlalchemy.engine import Engine

from tests.integration.subscriptions.conftest import AUTH, inbox, sub_state

BASE = "/sources/hosp/fhir"


def status_bundle(kind: str, numbers: list[int], counter: int | None = None, sub: str | None = "s1") -> bytes:
    status: dict[str, Any] = {"resourceType": "SubscriptionStatus", "status": "active", "type": kind}
    if sub is not None:
        status["subscription"] = {"reference": f"https://elsewhere.example/fhir/Subscription/{sub}"}
    if counter is not None:
        status["eventsSinceSubscriptionStart"] = str(counter)
    if numbers:
        status["notificationEvent"] = [
            {"eventNumber": str(n), "focus": {"reference": f"Encounter/e{n}"}} for n in numbers
        ]
    bundle = {"resourceType": "Bundle", "type": "subscription-notification", "entry": [{"resource": status}]}
    return orjson.dumps(bundle)


def gaps(engine: Engine) -> list[str]:
    return [str(r.reference) for r in inbox(engine) if r.kind == "gap"]


def pending_gaps(engine: Engine) -> list[str]:
    return sorted(
        (str(r.reference) for r in inbox(engine) if r.kind == "gap" and r.status == "pending"),
        key=lambda ref: int(ref.split("-")[0]),
    )


async def test_a_hole_inside_one_notification_is_a_gap(client: httpx.AsyncClient, engine: Engine) -> None:
    assert (
        await client.post(BASE, content=status_bundle("handshake", [], 0), headers=AUTH)
    ).status_code == 200
    await client.post(BASE, content=status_bundle("event-notification", [1, 2, 5, 7], 7), headers=AUTH)
    assert gaps(engine) == ["3-4", "6-6"]
    state = sub_state(engine, "s1")
    assert state is not None and state.last_event_number == 7 and state.gaps_detected == 2
    # the late events arrive: processed (they are in open gaps), no new gap, nothing left to recover
    await client.post(BASE, content=status_bundle("event-notification", [3, 4, 6], 7), headers=AUTH)
    assert gaps(engine) == ["3-4", "6-6"]
    assert pending_gaps(engine) == []


async def test_a_late_event_inside_a_gap_leaves_only_what_is_still_missing(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    await client.post(BASE, content=status_bundle("handshake", [], 0), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [1, 8], 8), headers=AUTH)
    assert pending_gaps(engine) == ["2-7"]
    await client.post(BASE, content=status_bundle("event-notification", [4, 2], 8), headers=AUTH)
    assert pending_gaps(engine) == ["3-3", "5-7"]  # recovery asks for these only
    await client.post(BASE, content=status_bundle("event-notification", [7], 8), headers=AUTH)
    assert pending_gaps(engine) == ["3-3", "5-6"]
    await client.post(BASE, content=status_bundle("event-notification", [4], 8), headers=AUTH)  # a replay
    assert pending_gaps(engine) == ["3-3", "5-6"]
    state = sub_state(engine, "s1")
    assert state is not None and state.last_event_number == 8


async def test_a_heartbeat_whose_counter_is_ahead_is_a_gap(client: httpx.AsyncClient, engine: Engine) -> None:
    await client.post(BASE, content=status_bundle("handshake", [], 0), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [1], 1), headers=AUTH)
    await client.post(BASE, content=status_bundle("heartbeat", [], 3), headers=AUTH)
    assert gaps(engine) == ["2-3"]
    await client.post(BASE, content=status_bundle("heartbeat", [], 3), headers=AUTH)
    assert gaps(engine) == ["2-3"]  # tolerated: extra heartbeats change nothing


async def test_unknown_history_counts_as_missing(client: httpx.AsyncClient, engine: Engine) -> None:
    await client.post(BASE, content=status_bundle("heartbeat", [], 4), headers=AUTH)
    assert gaps(engine) == ["1-4"]


async def test_without_a_subscription_reference_numbers_make_no_gaps(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    await client.post(BASE, content=status_bundle("event-notification", [5], 5, sub=None), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [9], 9, sub=None), headers=AUTH)
    assert gaps(engine) == []
