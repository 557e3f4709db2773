"""Issue 6 §1/§7: every notification shape a real sender uses, replayed against a source's base;
every vector and real payload; credential failures store nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.ingest.subscriptions.recovery import SubscriptionWorker
from services.server import Role, build_app
from shared.db.models import SubscriptionState
from shared.settings import Settings
from tests.api.ingest.helpers import dead_letters
from tests.conftest import SHARED, shared_path
from tests.fakes.fhir_server import FakeFhirServer, LiveServer
from tests.integration.subscriptions.conftest import (
    AUTH,
    classic_subscription,
    hosp_config,
    inbox,
    last_event,
    mbb,
    pain,
    patient,
    stored,
    stored_versions,
    sub_state,
    topic_subscription,
    upstream_state,
)

BASE = "/sources/hosp/fhir"
VECTORS = [
    "backport-r4-notification-event-empty.json",
    "backport-r4-notification-event-empty-NONCONFORMANT.json",
    "backport-r4-notification-event-full-resource.json",
    "backport-r4-notification-event-id-only.json",
    "backport-r4-notification-handshake.json",
    "backport-r4-notification-heartbeat.json",
    "r5-spec-notification-empty.json",
    "r5-spec-notification-handshake.json",
    "r5-spec-notification-id-only.json",
]
INFERNO = "realdata/subscriptions/inferno-subscriptions-test-kit"


def load(*parts: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(shared_path(*parts).read_bytes().removeprefix(b"\xef\xbb\xbf"))
    return data


def all_states(engine: Engine) -> list[SubscriptionState]:
    with Session(engine) as s:
        return list(s.exec(select(SubscriptionState)).all())


# ---------------------------------------------------------------- vectors and real payloads


@pytest.mark.parametrize("name", VECTORS)
async def test_every_vector_is_acknowledged_empty_and_booked(
    name: str, client: httpx.AsyncClient, engine: Engine
) -> None:
    bundle = load("vectors", name)
    r = await client.post(BASE, content=orjson.dumps(bundle), headers=AUTH)
    assert r.status_code == 200 and r.content == b""
    [state] = [s for s in all_states(engine) if not s.subscription.startswith("(")]
    assert state.subscription in ("123", "admission")  # the id of the sender's Subscription
    kind = "handshake" if "handshake" in name else "heartbeat" if "heartbeat" in name else "event"
    if kind == "event":
        assert last_event(engine, state.subscription) in (1, 2)
        assert state.last_heartbeat_at is None
    else:
        assert state.last_heartbeat_at is not None
    rows = inbox(engine)
    if "empty" in name:
        assert [r.kind for r in rows if r.kind != "gap"] == ["empty"]  # catch up by search
    else:
        # focuses are Encounters (not kept): nothing to fetch
        assert [r for r in rows if r.kind == "id-only"] == []
    assert dead_letters(engine) == []


@pytest.mark.parametrize(
    "name",
    [
        "empty_notification_bundle_example.json",
        "empty_notification_bundle_non_conformant_example.json",
        "full_resource_notification_bundle_example.json",
        "handshake_bundle_example.json",
        "heartbeat_bundle_example.json",
        "id_only_notification_bundle_example.json",
    ],
)
async def test_inferno_payloads_are_acknowledged(
    name: str, client: httpx.AsyncClient, engine: Engine
) -> None:
    r = await client.post(BASE, content=orjson.dumps(load(*INFERNO.split("/"), name)), headers=AUTH)
    assert r.status_code == 200 and r.content == b""
    assert all_states(engine)


@pytest.mark.parametrize("numbers_as_int", [False, True], ids=["strings", "integers"])
async def test_r5_event_numbers_as_strings_or_integers(
    numbers_as_int: bool,
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
) -> None:
    sid = topic_subscription(fake, "id-only")
    fake.put(patient())
    fake.put(mbb("proc-1"))
    fake.emit_event(sid, "Patient/p1")
    fake.emit_event(sid, "Procedure/proc-1")
    assert await fake.deliver(sid, pinpoint, shape="r5", numbers_as_int=numbers_as_int) == [200]
    assert last_event(engine, sid) == 2
    await worker.run_once(reconcile=False)
    assert stored_versions(engine) == upstream_state(fake)


async def test_id_only_vector_with_a_kept_focus_is_read_from_the_source_base_only(
    fake: FakeFhirServer, client: httpx.AsyncClient, worker: SubscriptionWorker, engine: Engine
) -> None:
    """The focus names another host (fhirserver.org): Pinpoint reads Type/id on its own source."""
    fake.put(patient())
    fake.put(mbb("86009987"))
    bundle = load("vectors", "backport-r4-notification-event-id-only.json")
    text = (
        orjson.dumps(bundle)
        .decode()
        .replace("Encounter/86009987-eabe-42bf-8c02-b112b18cb616", "Procedure/86009987")
    )
    r = await client.post(BASE, content=text.encode(), headers=AUTH)
    assert r.status_code == 200
    assert [row.reference for row in inbox(engine)] == ["Procedure/86009987"]
    await worker.run_once(reconcile=False)
    assert ("Procedure", "86009987") in stored(engine)
    assert fake.requests_to("GET", "Procedure/86009987")


async def test_full_resource_notification_is_stored_before_the_answer(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, engine: Engine
) -> None:
    sid = topic_subscription(fake, "full-resource")
    fake.put(patient())
    fake.put(pain("obs-1", 7))
    fake.emit_event(sid, "Patient/p1")
    fake.emit_event(sid, "Observation/obs-1")
    assert await fake.deliver(sid, pinpoint) == [200]
    assert stored_versions(engine) == upstream_state(fake)
    assert [r for r in inbox(engine) if r.kind == "id-only"] == []  # nothing left to fetch
    assert not fake.requests_to("GET", "*")


async def test_empty_content_notification_catches_up_by_search(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, worker: SubscriptionWorker, engine: Engine
) -> None:
    sid = topic_subscription(fake, "empty")
    fake.put(patient())
    fake.put(mbb("proc-1"))
    fake.emit_event(sid, "Procedure/proc-1")
    fake.emit_event(sid, "Procedure/proc-1")
    assert await fake.deliver(sid, pinpoint, per_event=True) == [200, 200]
    assert [r.kind for r in inbox(engine)] == ["empty"]  # coalesced
    await worker.run_once(reconcile=False)
    assert stored_versions(engine) == upstream_state(fake)


# ---------------------------------------------------------------- classic rest-hook senders


async def test_hapi_classic_put_and_delete(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, upstream: httpx.AsyncClient, engine: Engine
) -> None:
    classic_subscription(fake, "Procedure?code=http://www.ama-assn.org/go/cpt|64493")
    fake.put(patient())
    await upstream.put("Procedure/proc-1", json=mbb("proc-1"))
    await upstream.put("Procedure/proc-1", json={**mbb("proc-1"), "status": "entered-in-error"})
    await upstream.put("Procedure/proc-2", json=mbb("proc-2"))
    statuses = await fake.deliver("classic-1", pinpoint)
    assert statuses == [201, 200, 201]
    assert stored(engine)[("Procedure", "proc-1")]["status"] == "entered-in-error"
    await upstream.delete("Procedure/proc-2")
    assert await fake.deliver("classic-1", pinpoint) == [200]
    assert ("Procedure", "proc-2") not in stored(engine)
    assert sub_state(engine, "(classic)") is not None


async def test_hapi_put_with_a_version_suffix_is_accepted(client: httpx.AsyncClient, engine: Engine) -> None:
    r = await client.put(f"{BASE}/Patient/p1/_history/3", content=orjson.dumps(patient()), headers=AUTH)
    assert r.status_code == 201 and r.json()["id"] == "p1"
    assert ("Patient", "p1") in stored(engine)


async def test_classic_ping_without_payload_catches_up(
    fake: FakeFhirServer,
    pinpoint: httpx.AsyncClient,
    upstream: httpx.AsyncClient,
    worker: SubscriptionWorker,
    engine: Engine,
) -> None:
    classic_subscription(fake, "Procedure?code=http://www.ama-assn.org/go/cpt|64493", payload=False)
    fake.put(patient())
    await upstream.put("Procedure/proc-1", json=mbb("proc-1"))
    await upstream.put("Procedure/proc-2", json=mbb("proc-2"))
    assert await fake.deliver("classic-1", pinpoint) == [200, 200]
    assert [r.kind for r in inbox(engine)] == ["ping"]
    await worker.run_once(reconcile=False)
    assert stored_versions(engine) == upstream_state(fake)


@pytest.fixture
def medplum_settings(db_url: str, live: LiveServer) -> Settings:
    return Settings(
        database_url=db_url, config=hosp_config(live, hmac_secret="medplum-secret"), _env_file=None
    )  # type: ignore[call-arg]


@pytest.fixture
async def medplum_pinpoint(medplum_settings: Settings, engine: Engine) -> Any:
    app = build_app(medplum_settings, Role.all, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint") as c:
        yield c


async def test_medplum_posts_with_hmac_and_deletes_are_refused(
    fake: FakeFhirServer, medplum_pinpoint: httpx.AsyncClient, upstream: httpx.AsyncClient, engine: Engine
) -> None:
    classic_subscription(fake, "Procedure", secret="medplum-secret", sid="mp-1")
    fake.put(patient())
    await upstream.put("Procedure/proc-1", json=mbb("proc-1"))
    await upstream.put("Procedure/proc-2", json=mbb("proc-2"))
    assert await fake.deliver("mp-1", medplum_pinpoint, style="medplum") == [201, 201]
    assert set(stored(engine)) == {("Procedure", "proc-1"), ("Procedure", "proc-2")}
    state = sub_state(engine, "mp-1")
    assert state is not None and state.last_notification_at is not None
    # Medplum signs the resource, not the "{}" it sends for a delete: refused, nothing changes
    await upstream.delete("Procedure/proc-2")
    assert await fake.deliver("mp-1", medplum_pinpoint, style="medplum") == [401]
    assert ("Procedure", "proc-2") in stored(engine)
    assert dead_letters(engine) == []


async def test_medplum_delete_with_a_bearer_credential(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, upstream: httpx.AsyncClient, engine: Engine
) -> None:
    classic_subscription(fake, "Procedure", sid="mp-2")
    fake.put(patient())
    await upstream.put("Procedure/proc-1", json=mbb("proc-1"))
    assert await fake.deliver("mp-2", pinpoint, style="medplum") == [201]
    await upstream.delete("Procedure/proc-1")
    assert await fake.deliver("mp-2", pinpoint, style="medplum") == [200]
    assert stored(engine) == {}


# ---------------------------------------------------------------- credentials


async def test_bearer_failures_are_401_and_store_nothing(client: httpx.AsyncClient, engine: Engine) -> None:
    bundle = orjson.dumps(load("vectors", "backport-r4-notification-event-id-only.json"))
    for headers in ({"Content-Type": "application/fhir+json"}, {**AUTH, "Authorization": "Bearer wrong"}):
        for method, path, content in (
            ("POST", BASE, bundle),
            ("POST", BASE, b""),
            ("PUT", f"{BASE}/Patient/p1", orjson.dumps(patient())),
            ("PUT", f"{BASE}/Patient/p1/_history/2", orjson.dumps(patient())),
            ("DELETE", f"{BASE}/Patient/p1", b""),
        ):
            r = await client.request(method, path, content=content, headers=headers)
            assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    assert stored(engine) == {} and inbox(engine) == [] and all_states(engine) == []
    assert dead_letters(engine) == []


async def test_hmac_failures_are_401_and_store_nothing(
    medplum_pinpoint: httpx.AsyncClient, engine: Engine
) -> None:
    raw = orjson.dumps(mbb("proc-1"))
    good = hmac.new(b"medplum-secret", raw, hashlib.sha256).hexdigest()
    base = {"Content-Type": "application/fhir+json", "X-Medplum-Subscription": "mp-1"}
    r = await medplum_pinpoint.post(BASE, content=raw, headers={**base, "X-Signature": "0" * 64})
    assert r.status_code == 401
    r = await medplum_pinpoint.post(BASE, content=raw + b" ", headers={**base, "X-Signature": good})
    assert r.status_code == 401
    r = await medplum_pinpoint.post(BASE, content=b"", headers=base)
    assert r.status_code == 401
    assert stored(engine) == {} and inbox(engine) == [] and all_states(engine) == []
    r = await medplum_pinpoint.post(BASE, content=raw, headers={**base, "X-Signature": good})
    assert r.status_code == 201
    assert ("Procedure", "proc-1") in stored(engine)


def test_vector_list_covers_every_notification_vector() -> None:
    # every notification vector of ../shared (or, in a clone without it, of the suite's copies)
    folder: Path = SHARED / "vectors" if (SHARED / "vectors").is_dir() else shared_path("vectors")
    names = {
        p.name
        for p in folder.glob("*.json")
        if "notification" in p.name and ("backport" in p.name or "r5-spec" in p.name)
    }
    assert names == set(VECTORS)


async def test_hapi_topic_notification_posted_as_a_transaction(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    """HAPI sends topic notifications with its transaction client (STANDARDS §2.1)."""
    bundle = load("vectors", "backport-r4-notification-event-full-resource.json")
    bundle["type"] = "transaction"
    entry = bundle["entry"][1]
    entry["resource"] = patient("p-77")
    entry["fullUrl"] = "https://fhirserver.org/fhir/Patient/p-77"
    r = await client.post(BASE, content=orjson.dumps(bundle), headers=AUTH)
    assert r.status_code == 200 and r.content == b""
    assert ("Patient", "p-77") in stored(engine)
    assert last_event(engine, "123") == 1


def _athena_like(focus: str) -> dict[str, Any]:
    """R4B-draft SubscriptionStatus in an R4 history Bundle, numbered per bundle (always 1)."""
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "resource": {
                    "resourceType": "SubscriptionStatus",
                    "status": "active",
                    "type": "event-notification",
                    "eventsInNotification": 1,
                    "notificationEvent": [
                        {"eventNumber": "1", "focus": {"reference": focus}},
                    ],
                    "subscription": {"reference": "Subscription/athena-1"},
                }
            }
        ],
    }


async def test_per_bundle_event_numbers_still_fetch_every_focus(
    fake: FakeFhirServer, client: httpx.AsyncClient, worker: SubscriptionWorker, engine: Engine
) -> None:
    fake.put(patient())
    fake.put(mbb("proc-1"))
    fake.put(mbb("proc-2"))
    for focus in ("Patient/p1", "Procedure/proc-1", "Procedure/proc-2", "Procedure/proc-2"):
        r = await client.post(BASE, content=orjson.dumps(_athena_like(focus)), headers=AUTH)
        assert r.status_code == 200
    assert sorted(str(row.reference) for row in inbox(engine)) == [
        "Patient/p1",
        "Procedure/proc-1",
        "Procedure/proc-2",  # the replay of the same (number, focus) queued nothing
    ]
    await worker.run_once(reconcile=False)
    assert stored_versions(engine) == upstream_state(fake)


async def test_a_replayed_full_resource_notification_changes_nothing(
    fake: FakeFhirServer, pinpoint: httpx.AsyncClient, engine: Engine
) -> None:
    from tests.api.ingest.helpers import dirty

    sid = topic_subscription(fake, "full-resource")
    fake.put(patient())
    fake.emit_event(sid, "Patient/p1")
    await fake.deliver(sid, pinpoint)
    before = stored(engine)
    with Session(engine) as s:
        from shared.db.models import EvaluationQueue

        for row in s.exec(select(EvaluationQueue)).all():
            s.delete(row)
        s.commit()
    fake._delivered.clear()
    assert await fake.deliver(sid, pinpoint) == [200]
    assert stored(engine) == before
    assert dirty(engine) == []  # nothing to re-evaluate
