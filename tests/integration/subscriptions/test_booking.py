"""Gap bookkeeping of topic-based notifications (STANDARDS §2.4 items 3, 4, 7), through the API.

Event numbers are logged as notifications arrive; the subscription worker finds the holes
(``find_gaps``) once a later number has waited past the grace for reordered deliveries. A
handshake or heartbeat counter ahead of what was received is a gap at once."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from sqlalchemy.engine import Engine

from services.ingest.subscriptions.recovery import SubscriptionWorker
from tests.fakes.fhir_server import FakeFhirServer
from tests.integration.subscriptions.conftest import AUTH, Clock, inbox, last_event, sub_state

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


def after_grace(worker: SubscriptionWorker, clock: Clock) -> int:
    clock.advance(30)
    return worker.find_gaps()


async def test_a_hole_inside_one_notification_is_a_gap(
    client: httpx.AsyncClient, engine: Engine, worker: SubscriptionWorker, clock: Clock, fake: FakeFhirServer
) -> None:
    assert (
        await client.post(BASE, content=status_bundle("handshake", [], 0), headers=AUTH)
    ).status_code == 200
    await client.post(BASE, content=status_bundle("event-notification", [1, 2, 5, 7], 7), headers=AUTH)
    assert last_event(engine, "s1") == 7
    assert worker.find_gaps() == 0 and gaps(engine) == []  # within the grace: late deliveries may come
    state = sub_state(engine, "s1")
    assert state is not None and state.last_event_number == 2  # detection waits below the hole
    assert after_grace(worker, clock) == 2
    assert pending_gaps(engine) == ["3-4", "6-6"]
    state = sub_state(engine, "s1")
    assert state is not None and state.last_event_number == 7 and state.gaps_detected == 2
    # the late events arrive after all: stored as new events, and nothing of the gaps is left to ask for
    await client.post(BASE, content=status_bundle("event-notification", [3, 4, 6], 7), headers=AUTH)
    assert after_grace(worker, clock) == 0
    await worker.drain()
    [done] = {r.status for r in inbox(engine) if r.kind == "gap"}
    assert done == "done" and not fake.requests_to("GET", "Subscription/*/$events")


async def test_late_events_inside_the_grace_leave_only_what_is_still_missing(
    client: httpx.AsyncClient, engine: Engine, worker: SubscriptionWorker, clock: Clock
) -> None:
    await client.post(BASE, content=status_bundle("handshake", [], 0), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [1, 8], 8), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [4, 2], 8), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [7], 8), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [4], 8), headers=AUTH)  # a replay
    assert after_grace(worker, clock) == 2
    assert pending_gaps(engine) == ["3-3", "5-6"]  # recovery asks for these only
    state = sub_state(engine, "s1")
    assert state is not None and state.last_event_number == 8 and state.gaps_detected == 2


async def test_a_replay_is_not_a_new_event(client: httpx.AsyncClient, engine: Engine) -> None:
    body = status_bundle("event-notification", [1], 1)
    await client.post(BASE, content=body, headers=AUTH)
    fetches = [r.reference for r in inbox(engine) if r.kind == "id-only"]
    await client.post(BASE, content=body, headers=AUTH)
    assert [r.reference for r in inbox(engine) if r.kind == "id-only"] == fetches


async def test_a_heartbeat_whose_counter_is_ahead_is_a_gap(client: httpx.AsyncClient, engine: Engine) -> None:
    await client.post(BASE, content=status_bundle("handshake", [], 0), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [1], 1), headers=AUTH)
    await client.post(BASE, content=status_bundle("heartbeat", [], 4), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [3], 4), headers=AUTH)
    assert gaps(engine) == ["2-4"]  # at once: the sender says 4 were sent
    await client.post(BASE, content=status_bundle("heartbeat", [], 5), headers=AUTH)
    assert gaps(engine) == ["2-4", "5-5"]
    await client.post(BASE, content=status_bundle("heartbeat", [], 5), headers=AUTH)
    assert gaps(engine) == ["2-4", "5-5"]  # tolerated: extra heartbeats change nothing


async def test_unknown_history_counts_as_missing(client: httpx.AsyncClient, engine: Engine) -> None:
    await client.post(BASE, content=status_bundle("heartbeat", [], 4), headers=AUTH)
    assert gaps(engine) == ["1-4"]


async def test_without_a_subscription_reference_numbers_make_no_gaps(
    client: httpx.AsyncClient, engine: Engine, worker: SubscriptionWorker, clock: Clock
) -> None:
    await client.post(BASE, content=status_bundle("event-notification", [5], 5, sub=None), headers=AUTH)
    await client.post(BASE, content=status_bundle("event-notification", [9], 9, sub=None), headers=AUTH)
    assert after_grace(worker, clock) == 0
    assert gaps(engine) == []


async def test_event_numbers_that_cannot_be_counts_are_booked_as_events_without_a_number(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    for bad in ("99999999999999999999", "-3", "²", "1e3"):
        bundle = orjson.loads(status_bundle("event-notification", [], sub="s1"))
        bundle["entry"][0]["resource"]["notificationEvent"] = [
            {"eventNumber": bad, "focus": {"reference": "Encounter/e1"}}
        ]
        bundle["entry"][0]["resource"]["eventsSinceSubscriptionStart"] = bad
        r = await client.post(BASE, content=orjson.dumps(bundle), headers=AUTH)
        assert r.status_code == 200, bad
    assert last_event(engine, "s1") is None
    assert gaps(engine) == []
