"""Issue 6 §3: duplicates, reordering, dropped events and missed heartbeats — the store ends equal
to the upstream server's state. The fake FHIR server runs on loopback; Pinpoint in-process."""

from __future__ import annotations

import httpx
from sqlalchemy.engine import Engine

from services.ingest.subscriptions.recovery import SubscriptionWorker
from tests.fakes.fhir_server import FakeFhirServer, Fault
from tests.integration.subscriptions.conftest import (
    Clock,
    inbox,
    mbb,
    pain,
    patient,
    stored,
    stored_versions,
    sub_state,
    topic_subscription,
    upstream_state,
)


def arrange(fake: FakeFhirServer, sid: str, n: int) -> None:
    """Patient p1 and n changes to pain procedures/observations, each an event of ``sid``."""
    fake.put(patient())
    fake.emit_event(sid, "Patient/p1")
    for i in range(1, n):
        resource = mbb(f"proc-{i}") if i % 2 else pain(f"obs-{i}", i)
        fake.put(resource)
        fake.emit_event(sid, f"{resource['resourceType']}/{resource['id']}")


async def test_id_only_notifications_are_fetched_from_the_source(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, worker: SubscriptionWorker, engine: Engine
) -> None:
    sid = topic_subscription(fake, "id-only")
    arrange(fake, sid, 4)
    statuses = await fake.deliver(sid, pinpoint)
    assert statuses == [200]
    assert stored(engine) == {}  # acknowledged before anything was read
    assert sorted(r.reference or "" for r in inbox(engine)) == [
        "Observation/obs-2",
        "Patient/p1",
        "Procedure/proc-1",
        "Procedure/proc-3",
    ]
    report = await worker.run_once(reconcile=False)
    assert report.processed == 4
    assert stored_versions(engine) == upstream_state(fake)
    assert len(fake.requests_to("GET", "Procedure/*")) == 2
    state = sub_state(engine, sid)
    assert state is not None and state.last_event_number == 4


async def test_duplicate_deliveries_are_no_ops(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, worker: SubscriptionWorker, engine: Engine
) -> None:
    sid = topic_subscription(fake, "id-only")
    arrange(fake, sid, 3)
    assert await fake.deliver(sid, pinpoint, per_event=True, duplicate=True) == [200] * 6
    assert len(inbox(engine)) == 3  # one fetch per event, not per delivery
    await worker.run_once(reconcile=False)
    reads = len(fake.requests_to("GET", "*/*"))
    # a full replay of everything already received changes nothing and reads nothing
    fake._delivered.clear()
    assert await fake.deliver(sid, pinpoint) == [200]
    await worker.run_once(reconcile=False)
    assert len(inbox(engine)) == 3
    assert len(fake.requests_to("GET", "*/*")) == reads
    assert stored_versions(engine) == upstream_state(fake)


async def test_reordered_full_resource_deliveries_keep_the_newest_version(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
) -> None:
    sid = topic_subscription(fake, "full-resource")
    fake.put(patient())
    fake.emit_event(sid, "Patient/p1")
    for value in (3, 5, 8):  # three versions of one observation, one event each
        fake.put(pain("obs-1", value))
        fake.emit_event(sid, "Observation/obs-1")
    # one bundle per event, delivered newest first: 4, 3, 2, 1
    assert await fake.deliver(sid, pinpoint, per_event=True, reverse=True) == [200] * 4
    clock.advance(30)  # past the grace period of the gap seen when event 4 came first
    await worker.run_once(reconcile=False)
    assert stored(engine)[("Observation", "obs-1")]["valueInteger"] == 8
    assert stored_versions(engine) == upstream_state(fake)


async def test_a_dropped_event_is_recovered_by_events_operation(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
) -> None:
    sid = topic_subscription(fake, "full-resource")
    await fake.deliver(sid, pinpoint, kind="handshake")
    arrange(fake, sid, 5)
    assert await fake.deliver(sid, pinpoint, per_event=True, drop={2, 3}) == [200] * 3
    await worker.run_once(reconcile=False)  # within the grace period: nothing yet
    assert [r for r in inbox(engine) if r.kind == "gap"] == []
    assert not fake.requests_to("GET", "Subscription/*/$events")
    clock.advance(30)
    await worker.run_once(reconcile=False)
    [gap] = [r for r in inbox(engine) if r.kind == "gap"]
    assert gap.reference == "2-3" and gap.status == "done"
    [call] = fake.requests_to("GET", "Subscription/sub-1/$events")
    assert ("eventsSinceNumber", "2") in call.params and ("eventsUntilNumber", "3") in call.params
    assert stored_versions(engine) == upstream_state(fake)
    state = sub_state(engine, sid)
    assert state is not None and state.gaps_detected == 1 and state.last_event_number == 5


async def test_without_events_operation_a_gap_is_closed_by_search(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
) -> None:
    sid = topic_subscription(fake, "full-resource")
    await fake.deliver(sid, pinpoint, kind="handshake")
    arrange(fake, sid, 5)
    await fake.deliver(sid, pinpoint, per_event=True, drop={3})
    fake.inject("GET", "Subscription/*/$events", Fault.error(404, "not-supported"))
    clock.advance(30)
    await worker.run_once(reconcile=False)
    assert fake.requests_to("GET", "Procedure")  # the _lastUpdated catch-up search
    assert stored_versions(engine) == upstream_state(fake)


async def test_a_missed_heartbeat_is_noticed_and_recovered(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
    upstream: httpx.AsyncClient,
) -> None:
    sid = topic_subscription(fake, "id-only")
    fake.put(patient())
    await fake.deliver(sid, pinpoint, kind="handshake")
    await worker.run_once(reconcile=False)
    # Pinpoint learns the heartbeat period (as `subscriptions sync` records it)
    from sqlmodel import Session

    from services.ingest.subscriptions import state as st

    with Session(engine) as s:
        row = st.lock_state(s, "hosp", sid)
        row.heartbeat_period = 60
        s.add(row)
        s.commit()
    # events happen upstream, the sender's deliveries fail silently and it marks itself `error`
    arrange(fake, sid, 4)
    sub = fake.get("Subscription", sid)
    assert sub is not None
    fake.put({**sub, "status": "error"})
    clock.advance(30)
    report = await worker.run_once(reconcile=False)
    assert report.heartbeat_checks == 0  # still within period × 1.5 + margin
    clock.advance(120)
    report = await worker.run_once(reconcile=False)
    assert report.heartbeat_checks == 1
    assert fake.requests_to("GET", "Subscription/sub-1/$status")
    assert stored_versions(engine) == upstream_state(fake)
    repaired = fake.get("Subscription", sid)
    assert repaired is not None and repaired["status"] == "active"  # PUT back to requested → active
    assert any(r.method == "PUT" for r in fake.requests_to("PUT", "Subscription/sub-1"))


async def test_reconciliation_closes_holes_and_notices_deletes(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
    upstream: httpx.AsyncClient,
) -> None:
    fake.put(patient())
    fake.put(mbb("proc-1"))
    fake.put(mbb("proc-2"))
    report = await worker.run_once()
    assert report.reconciled == ["hosp"]
    assert stored_versions(engine) == upstream_state(fake)
    # changes nobody notified: an update, a new resource, a delete
    fake.put({**mbb("proc-1"), "status": "entered-in-error"})
    fake.put(pain("obs-9", 6))
    assert (await upstream.delete("Procedure/proc-2")).status_code == 204
    assert (await worker.run_once()).reconciled == []  # not due yet
    clock.advance(16 * 60)
    assert (await worker.run_once()).reconciled == ["hosp"]
    assert stored_versions(engine) == upstream_state(fake)
    assert ("Procedure", "proc-2") not in stored(engine)
    searches = fake.requests_to("GET", "Observation")
    assert any(p[0] == "_lastUpdated" and p[1].startswith("gt") for r in searches for p in r.params)


async def test_fetch_failures_retry_with_backoff_then_succeed(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
) -> None:
    sid = topic_subscription(fake, "id-only")
    fake.put(patient())
    fake.emit_event(sid, "Patient/p1")
    await fake.deliver(sid, pinpoint)
    fake.inject("GET", "Patient/p1", Fault.error(503), Fault.error(503))  # both attempts of one read
    report = await worker.run_once(reconcile=False)
    assert report.failed == 1 and stored(engine) == {}
    [row] = inbox(engine)
    assert row.status == "pending" and row.attempts == 1 and row.last_error
    clock.advance(10)
    await worker.run_once(reconcile=False)
    assert stored_versions(engine) == upstream_state(fake)
    assert inbox(engine)[0].status == "done"


async def test_a_fetch_that_keeps_failing_becomes_a_dead_letter(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
) -> None:
    from tests.api.ingest.helpers import dead_letters

    sid = topic_subscription(fake, "id-only")
    fake.put(patient())
    fake.emit_event(sid, "Patient/p1")
    await fake.deliver(sid, pinpoint)
    fake.inject("GET", "Patient/p1", *[Fault.error(500)] * 3)  # 500 is not retried within a round
    for _ in range(3):
        await worker.run_once(reconcile=False)
        clock.advance(60)
    assert inbox(engine)[0].status == "failed"
    [dl] = dead_letters(engine)
    assert dl.kind == "fetch" and dl.source == "hosp"
    # the operator replays it once the server is fixed: queued again, then fetched
    from services.ingest.deadletters.replay import replay

    assert replay(engine, worker.settings, dl.id, {}).status == "replayed"
    await worker.run_once(reconcile=False)
    assert stored_versions(engine) == upstream_state(fake)


async def test_the_heartbeat_of_a_subscription_pinpoint_did_not_create_is_learned_and_watched(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
) -> None:
    sid = topic_subscription(fake, "id-only")
    sub = fake.get("Subscription", sid)
    assert sub is not None
    sub["channel"]["extension"] = [
        {
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period",
            "valueUnsignedInt": 60,
        }
    ]
    fake.put(sub)
    await fake.deliver(sid, pinpoint, kind="handshake")
    await worker.run_once(reconcile=False)
    state = sub_state(engine, sid)
    assert state is not None and state.heartbeat_period == 60
    arrange(fake, sid, 3)  # happens upstream; every delivery is lost
    clock.advance(200)
    report = await worker.run_once(reconcile=False)
    assert report.heartbeat_checks == 1
    assert stored_versions(engine) == upstream_state(fake)


async def test_a_late_delivery_after_its_gap_was_found_is_not_asked_for_again(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
    clock: Clock,
) -> None:
    sid = topic_subscription(fake, "full-resource")
    await fake.deliver(sid, pinpoint, kind="handshake")
    arrange(fake, sid, 5)
    await fake.deliver(sid, pinpoint, per_event=True, drop={2, 3})
    clock.advance(30)
    assert worker.find_gaps() == 1  # 2-3, queued
    fake._delivered.clear()
    assert await fake.deliver(sid, pinpoint, per_event=True, drop={1, 2, 4, 5}) == [200]  # 3, late
    await worker.run_once(reconcile=False)
    [call] = fake.requests_to("GET", "Subscription/sub-1/$events")
    assert ("eventsSinceNumber", "2") in call.params and ("eventsUntilNumber", "2") in call.params
    assert stored_versions(engine) == upstream_state(fake)
