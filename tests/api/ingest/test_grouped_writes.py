"""Pushes and notifications arriving together share the group writer's transactions: each sender
still gets its own answer (a bad one its 400 and its dead letter, the others their 2xx), every
event number of a subscription is booked once however the deliveries interleave, and a graceful
stop loses nothing that was acknowledged. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.ingest.subscriptions import state
from tests.api.ingest.helpers import FHIR, body, dead_letters, pain, stored


def _invalid(oid: str) -> dict[str, Any]:
    broken = pain(oid)
    broken["effectiveDateTime"] = "yesterday"
    return broken


def notification(number: int, oid: str) -> dict[str, Any]:
    """A Backport R4 ``history`` notification of subscription ``s1`` carrying its resource."""
    status = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": "Subscription/s1"}},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": str(number)},
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "focus", "valueReference": {"reference": f"Observation/{oid}"}},
                ],
            },
        ],
    }
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {"resource": status, "request": {"method": "GET", "url": "Subscription/s1/$status"}},
            {
                "fullUrl": f"Observation/{oid}",
                "resource": pain(oid),
                "request": {"method": "PUT", "url": f"Observation/{oid}"},
            },
        ],
    }


async def test_concurrent_pushes_with_bad_ones_answer_each_its_own(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _conn: commits.append(1))
    good = [
        client.put(f"/fhir/Observation/obs-{i}", content=body(pain(f"obs-{i}")), headers=FHIR)
        for i in range(30)
    ]
    invalid = client.put("/fhir/Observation/bad", content=body(_invalid("bad")), headers=FHIR)
    not_json = client.post("/fhir", content=b"{not json", headers=FHIR)
    *answers, bad, unparsable = await asyncio.gather(*good, invalid, not_json)
    assert [r.status_code for r in answers] == [201] * 30
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    assert unparsable.status_code == 400 and unparsable.json()["resourceType"] == "OperationOutcome"
    assert set(stored(engine)) == {("Observation", f"obs-{i}") for i in range(30)}
    assert sorted(dl.payload for dl in dead_letters(engine)) == sorted([body(_invalid("bad")), b"{not json"])
    assert len(commits) < 30, "concurrent pushes were not grouped"


async def test_a_resource_sent_several_times_at_once_is_stored_once(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = body(pain("obs-1"))
    answers = await asyncio.gather(
        *(client.put("/fhir/Observation/obs-1", content=raw, headers=FHIR) for _ in range(5))
    )
    assert {r.status_code for r in answers} <= {200, 201} and 201 in {r.status_code for r in answers}
    assert set(stored(engine)) == {("Observation", "obs-1")}
    assert (await client.put("/fhir/Observation/obs-1", content=raw, headers=FHIR)).status_code == 200


async def test_concurrent_notifications_of_one_subscription_book_each_number_once(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    numbers = [*range(1, 41), 3, 17, 40]  # re-deliveries among them
    answers = await asyncio.gather(
        *(client.post("/fhir", content=body(notification(n, f"obs-{n}")), headers=FHIR) for n in numbers)
    )
    assert [r.status_code for r in answers] == [200] * len(numbers)
    with Session(engine) as s:
        logged = s.execute(
            sa.select(state.EVENTS.c.event_number).where(state.EVENTS.c.subscription == "s1")
        ).scalars()
        assert sorted(logged) == list(range(1, 41))
    assert set(stored(engine)) == {("Observation", f"obs-{n}") for n in range(1, 41)}


async def test_a_graceful_stop_loses_nothing_acknowledged(
    client: httpx.AsyncClient, app: Any, engine: Engine
) -> None:
    sending = [
        asyncio.create_task(
            client.put(f"/fhir/Observation/obs-{i}", content=body(pain(f"obs-{i}")), headers=FHIR)
        )
        for i in range(40)
    ]
    await asyncio.sleep(0.01)  # some are being written, some queued
    await app.state.ingest.aclose()
    answers = await asyncio.gather(*sending)
    acknowledged = {("Observation", f"obs-{i}") for i, r in enumerate(answers) if r.status_code == 201}
    assert acknowledged and acknowledged <= set(stored(engine))
