"""The real FhirClient + SmartBackendAuth against the fake FHIR server on 127.0.0.1."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest

from shared.errors import PinpointError
from shared.fhir.client import FhirClient, RetryPolicy
from shared.fhir.errors import (
    FhirAuthError,
    FhirHttpError,
    FhirNotFound,
    FhirVersionConflict,
    ForeignUrlError,
    SmartAuthError,
)
from shared.fhir.smart import CLIENT_ASSERTION_TYPE, SmartBackendAuth, SmartCredentials
from tests.conftest import FIXTURES, SHARED_COPIES
from tests.fakes.fhir_server import FakeFhirServer, FakeSmartAuth, Fault, LiveServer, serve_in_thread

VECTORS = SHARED_COPIES / "vectors"
SYSTEM = "urn:pinpoint:test"


def vector(name: str) -> str:
    return (VECTORS / name).read_text()


class NoSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def fake() -> FakeFhirServer:
    return FakeFhirServer(default_page_size=10)


@pytest.fixture
def live(fake: FakeFhirServer) -> Iterator[LiveServer]:
    with serve_in_thread(fake) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        yield client


@pytest.fixture
def no_sleep() -> NoSleep:
    return NoSleep()


@pytest.fixture
def client(live: LiveServer, http: httpx.AsyncClient, no_sleep: NoSleep) -> FhirClient:
    return FhirClient(
        live.base_url, http, sleep=no_sleep, rng=random.Random(3), retry=RetryPolicy(max_attempts=4)
    )


def patient(value: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}]}


def observation(patient_id: str, n: int = 0) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueInteger": n,
    }


# ---------------------------------------------------------------- SMART end to end


@pytest.fixture
def secured() -> FakeFhirServer:
    clients = {
        "pinpoint-rs": json.loads(vector("smart-jwks-RS384-public.json")),
        "pinpoint-es": json.loads(vector("smart-jwks-ES384-public.json")),
    }
    return FakeFhirServer(auth=FakeSmartAuth(clients=clients))


@pytest.fixture
def secured_live(secured: FakeFhirServer) -> Iterator[LiveServer]:
    with serve_in_thread(secured) as running:
        yield running


def smart_auth(live: LiveServer, alg: str) -> SmartBackendAuth:
    client_id = "pinpoint-rs" if alg == "RS384" else "pinpoint-es"
    key = vector(f"smart-jwks-{alg}-private-EXAMPLE-ONLY.json")
    return SmartBackendAuth(SmartCredentials(client_id, live.token_url, key, alg, "system/*.cruds"))


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_smart_backend_services_end_to_end(
    secured: FakeFhirServer, secured_live: LiveServer, http: httpx.AsyncClient, alg: str
) -> None:
    auth = smart_auth(secured_live, alg)
    client = FhirClient(secured_live.base_url, http, auth=auth)

    created = await client.create(patient("e2e"))
    assert (await client.read("Patient", str(created.id)))["id"] == created.id
    assert len(await client.search_all("Patient", {"identifier": f"{SYSTEM}|e2e"})) == 1

    assert secured.tokens_issued == 1
    resource_calls = [r for r in secured.requests if r.path.startswith("Patient")]
    assert len(resource_calls) == 3
    assert all(r.headers["authorization"].startswith("Bearer ") for r in resource_calls)
    assert auth.granted_scopes == "system/*.cruds"


async def test_without_a_token_the_secured_server_answers_401(
    secured_live: LiveServer, http: httpx.AsyncClient
) -> None:
    client = FhirClient(secured_live.base_url, http)
    assert (await client.capabilities())["rest"][0]["security"]  # metadata stays open
    with pytest.raises(FhirAuthError) as caught:
        await client.read("Patient", "1")
    assert caught.value.upstream_status == 401
    assert caught.value.issue_codes == ["login"]


async def test_revoked_tokens_lead_to_one_reauthentication(
    secured: FakeFhirServer, secured_live: LiveServer, http: httpx.AsyncClient
) -> None:
    client = FhirClient(secured_live.base_url, http, auth=smart_auth(secured_live, "ES384"))
    created = await client.create(patient("revoked"))

    secured.revoke_tokens()
    assert (await client.read("Patient", str(created.id)))["id"] == created.id

    assert secured.tokens_issued == 2
    assert [r.status for r in secured.requests_to("GET", "Patient/*")] == [401, 200]


async def test_the_fake_token_endpoint_rejects_bad_assertions(
    secured: FakeFhirServer, secured_live: LiveServer, http: httpx.AsyncClient
) -> None:
    async def token_call(assertion: str) -> httpx.Response:
        form = {
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        return await http.post(secured_live.token_url, data=form)

    # the SMART spec's own example: valid signature, but exp in 2015 and another aud
    examples = json.loads(vector("smart-client-assertion-jwt-examples.json"))
    assert (await token_call(examples["es384_client_assertion"])).json()["error"] == "invalid_client"

    auth = smart_auth(secured_live, "RS384")
    good = auth.build_assertion()
    assert (await token_call(good)).status_code == 200
    replay = await token_call(good)
    assert (replay.status_code, replay.json()["error_description"]) == (401, "jti replayed")

    key = auth.key
    too_long = jwt.encode(
        {
            "iss": "pinpoint-rs",
            "sub": "pinpoint-rs",
            "aud": secured_live.token_url,
            "exp": int(time.time()) + 3600,
            "jti": uuid.uuid4().hex,
        },
        key.key,
        algorithm="RS384",
        headers={"kid": key.kid},
    )
    assert (await token_call(too_long)).json()["error_description"] == "exp is more than five minutes ahead"

    wrong_aud = jwt.encode(
        {
            "iss": "pinpoint-rs",
            "sub": "pinpoint-rs",
            "aud": "https://elsewhere.example/token",
            "exp": int(time.time()) + 60,
            "jti": uuid.uuid4().hex,
        },
        key.key,
        algorithm="RS384",
        headers={"kid": key.kid},
    )
    assert (await token_call(wrong_aud)).status_code == 401
    assert secured.tokens_issued == 1


async def test_an_unregistered_client_gets_a_smart_auth_error(
    secured_live: LiveServer, http: httpx.AsyncClient
) -> None:
    key = vector("smart-jwks-RS384-private-EXAMPLE-ONLY.json")
    auth = SmartBackendAuth(SmartCredentials("stranger", secured_live.token_url, key, "RS384", "system/*.rs"))
    with pytest.raises(SmartAuthError) as caught:
        await FhirClient(secured_live.base_url, http, auth=auth).read("Patient", "1")
    assert caught.value.oauth_error == "invalid_client"


# ---------------------------------------------------------------- writes


async def test_conditional_create_twice_gives_one_resource(fake: FakeFhirServer, client: FhirClient) -> None:
    first = await client.create(patient("once"), if_none_exist={"identifier": f"{SYSTEM}|once"})
    second = await client.create(patient("once"), if_none_exist={"identifier": f"{SYSTEM}|once"})

    assert (first.status, first.created) == (201, True)
    assert (second.status, second.created) == (200, False)
    assert first.id == second.id
    assert len(fake.all("Patient")) == 1


async def test_if_match_conflict_surfaces_as_412(fake: FakeFhirServer, client: FhirClient) -> None:
    created = await client.create(patient("versioned"))
    assert (created.version_id, created.etag) == ("1", 'W/"1"')
    resource = dict(created.resource or {})

    updated = await client.update({**resource, "active": True}, if_match=created.version_id or "")
    assert updated.version_id == "2"

    with pytest.raises(FhirVersionConflict) as caught:
        await client.update({**resource, "active": False}, if_match="1")  # stale version

    assert caught.value.upstream_status == 412
    assert caught.value.issue_codes == ["processing"]
    assert fake.get("Patient", str(created.id))["active"] is True  # type: ignore[index]


async def test_conditional_update_creates_then_updates(fake: FakeFhirServer, client: FhirClient) -> None:
    criteria = {"identifier": f"{SYSTEM}|cu"}
    first = await client.conditional_update(patient("cu"), criteria)
    second = await client.conditional_update({**patient("cu"), "active": True}, criteria)

    assert (first.created, second.created, first.id == second.id, second.version_id) == (
        True,
        False,
        True,
        "2",
    )
    assert len(fake.all("Patient")) == 1


async def test_delete_then_read_is_gone(client: FhirClient) -> None:
    created = await client.create(patient("gone"))
    await client.delete("Patient", str(created.id))
    with pytest.raises(FhirNotFound) as caught:
        await client.read("Patient", str(created.id))
    assert caught.value.upstream_status == 410


def writeback_bundle(
    patient_id: str, key: str, *, extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    request_url = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": request_url,
                "resource": {
                    "resourceType": "ServiceRequest",
                    "identifier": [{"system": SYSTEM, "value": f"sr-{key}"}],
                    "status": "draft",
                    "intent": "proposal",
                    "subject": {"reference": f"Patient/{patient_id}"},
                },
                "request": {
                    "method": "POST",
                    "url": "ServiceRequest",
                    "ifNoneExist": f"identifier={SYSTEM}|sr-{key}",
                },
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "CarePlan",
                    "identifier": [{"system": SYSTEM, "value": f"cp-{key}"}],
                    "status": "draft",
                    "intent": "proposal",
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "activity": [{"reference": {"reference": request_url}}],
                },
                "request": {
                    "method": "POST",
                    "url": "CarePlan",
                    "ifNoneExist": f"identifier={SYSTEM}|cp-{key}",
                },
            },
            *(extra or []),
        ],
    }


async def test_a_transaction_is_all_or_nothing(fake: FakeFhirServer, client: FhirClient) -> None:
    created = await client.create(patient("tx"))
    stale_put = {
        "resource": {**(created.resource or {}), "active": True},
        "request": {"method": "PUT", "url": f"Patient/{created.id}", "ifMatch": 'W/"99"'},
    }

    with pytest.raises(FhirVersionConflict):
        await client.transaction(writeback_bundle(str(created.id), "a", extra=[stale_put]))

    assert fake.all("ServiceRequest") == [] and fake.all("CarePlan") == []
    assert "active" not in (fake.get("Patient", str(created.id)) or {})


async def test_a_transaction_resolves_references_and_is_idempotent(
    fake: FakeFhirServer, client: FhirClient
) -> None:
    created = await client.create(patient("tx2"))
    bundle = writeback_bundle(str(created.id), "b")

    response = await client.transaction(bundle)
    again = await client.transaction(bundle)

    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK", "200 OK"]
    service_request = fake.all("ServiceRequest")[0]
    care_plan = fake.all("CarePlan")[0]
    assert response["entry"][0]["response"]["location"].startswith(f"ServiceRequest/{service_request['id']}/")
    assert response["entry"][0]["response"]["etag"] == 'W/"1"'
    assert care_plan["activity"][0]["reference"]["reference"] == f"ServiceRequest/{service_request['id']}"
    assert len(fake.all("CarePlan")) == 1


# ---------------------------------------------------------------- search and paging


async def test_paging_follows_next_links(fake: FakeFhirServer, client: FhirClient) -> None:
    for n in range(25):
        fake.put(observation("p1", n))
    fake.put(observation("p2"))

    found = await client.search_all("Observation", {"patient": "p1", "_count": "10"})

    assert sorted(r["valueInteger"] for r in found) == list(range(25))
    assert len(fake.requests_to("GET", "Observation")) == 3


async def test_last_updated_search_finds_only_newer_resources(
    fake: FakeFhirServer, client: FhirClient
) -> None:
    old = fake.put(observation("p1", 1))
    fake.put(observation("p1", 2))
    newer = await client.search_all(
        "Observation", {"patient": "p1", "_lastUpdated": f"gt{old['meta']['lastUpdated']}"}
    )
    assert [r["valueInteger"] for r in newer] == [2]


async def test_an_unsupported_search_parameter_is_refused(client: FhirClient) -> None:
    with pytest.raises(FhirHttpError) as caught:
        await client.search_all("Observation", {"date": "ge2024"})
    assert caught.value.issue_codes == ["not-supported"]


async def test_a_next_link_to_another_host_is_refused(http: httpx.AsyncClient, no_sleep: NoSleep) -> None:
    fake = FakeFhirServer(default_page_size=2, next_link_base="http://127.0.0.2:9/fhir")  # a confused proxy
    for n in range(3):
        fake.put(observation("p1", n))
    with serve_in_thread(fake) as live:
        client = FhirClient(live.base_url, http, sleep=no_sleep)
        with pytest.raises(ForeignUrlError):
            await client.search_all("Observation", {"patient": "p1"})
    assert len(fake.requests_to("GET", "Observation")) == 1


# ---------------------------------------------------------------- faults


async def test_injected_faults_are_retried_then_succeed(
    fake: FakeFhirServer, client: FhirClient, no_sleep: NoSleep
) -> None:
    stored = fake.put(patient("faults"))
    fake.inject("GET", "Patient/*", Fault.error(503), Fault.throttle(retry_after="2"), Fault.error(504))

    assert (await client.read("Patient", stored["id"]))["id"] == stored["id"]

    assert [r.status for r in fake.requests_to("GET", "Patient/*")] == [503, 429, 504, 200]
    assert no_sleep.delays[1] == 2.0  # Retry-After honoured


async def test_a_response_slower_than_the_timeout_is_retried(
    fake: FakeFhirServer, live: LiveServer, no_sleep: NoSleep
) -> None:
    stored = fake.put(patient("slow"))
    fake.inject("GET", "Patient/*", Fault.slow(0.5))
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.1)) as quick:
        client = FhirClient(live.base_url, quick, sleep=no_sleep)
        assert (await client.read("Patient", stored["id"]))["id"] == stored["id"]
    assert len(no_sleep.delays) == 1


async def test_a_plain_create_is_not_repeated_after_a_502(fake: FakeFhirServer, client: FhirClient) -> None:
    fake.inject("POST", "Patient", Fault.error(502))
    with pytest.raises(FhirHttpError) as caught:
        await client.create(patient("once-only"))
    assert caught.value.upstream_status == 502
    assert len(fake.requests_to("POST", "Patient")) == 1


# ---------------------------------------------------------------- subscriptions


async def test_subscription_events_can_be_fetched_by_number(fake: FakeFhirServer, client: FhirClient) -> None:
    subscription = await client.create(
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "pinpoint",
            "criteria": "Observation?patient=p1",
            "channel": {
                "type": "rest-hook",
                "endpoint": "http://127.0.0.1:1/hook",
                "payload": "application/fhir+json",
            },
        }
    )
    assert (subscription.resource or {})["status"] == "active"
    for n in range(4):
        await client.create(observation("p1", n))
    await client.create(observation("p2"))  # does not match the criteria

    history = await client.operation(
        f"Subscription/{subscription.id}/$events",
        {"eventsSinceNumber": "2", "eventsUntilNumber": "3", "content": "full-resource"},
    )

    assert history["type"] == "history"
    status = history["entry"][0]["resource"]
    params = {p["name"]: p for p in status["parameter"]}
    assert params["type"]["valueCode"] == "query-event"
    assert params["events-since-subscription-start"]["valueString"] == "4"
    numbers = [
        part["valueString"]
        for p in status["parameter"]
        if p["name"] == "notification-event"
        for part in p["part"]
        if part["name"] == "event-number"
    ]
    assert numbers == ["2", "3"]
    assert [e["resource"]["valueInteger"] for e in history["entry"][1:]] == [1, 2]


# ---------------------------------------------------------------- pushing notifications


class Receiver:
    """A stand-in subscriber endpoint on an ASGI transport (host "receiver")."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        return httpx.Response(self.status)


TOPIC = "http://example.org/topics/procedure-completed"


def topic_subscription(content: str = "full-resource") -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "pinpoint",
        "criteria": TOPIC,
        "channel": {
            "type": "rest-hook",
            "endpoint": "http://receiver/fhir-notify",
            "header": ["X-Pinpoint-Secret: s3cret"],
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
                        "valueCode": content,
                    }
                ]
            },
        },
    }


async def test_topic_notifications_are_pushed_once_with_headers() -> None:
    fake = FakeFhirServer()
    sub = fake.put(topic_subscription())
    procedure = fake.put(
        {"resourceType": "Procedure", "status": "completed", "subject": {"reference": "Patient/p1"}}
    )
    fake.emit_event(sub["id"], f"Procedure/{procedure['id']}")
    fake.emit_event(sub["id"], f"Procedure/{procedure['id']}")
    receiver = Receiver()

    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        assert await fake.deliver(sub["id"], http, kind="handshake") == [200]
        assert await fake.deliver(sub["id"], http) == [200]
        assert await fake.deliver(sub["id"], http) == []  # nothing new

    handshake, event = (json.loads(c.content) for c in receiver.calls)
    assert {p["name"]: p.get("valueCode") for p in handshake["entry"][0]["resource"]["parameter"]}[
        "type"
    ] == "handshake"
    status = {p["name"]: p for p in event["entry"][0]["resource"]["parameter"]}
    assert status["type"]["valueCode"] == "event-notification"
    assert status["events-since-subscription-start"]["valueString"] == "2"
    assert status["topic"]["valueCanonical"] == TOPIC
    assert event["entry"][1]["resource"]["id"] == procedure["id"]
    assert receiver.calls[1].headers["X-Pinpoint-Secret"] == "s3cret"
    assert receiver.calls[1].headers["Content-Type"] == "application/fhir+json"


async def test_classic_payload_subscriptions_put_the_resource_hapi_style() -> None:
    fake = FakeFhirServer()
    sub = fake.put(
        {
            "resourceType": "Subscription",
            "status": "requested",
            "criteria": "Observation?patient=p1",
            "channel": {
                "type": "rest-hook",
                "endpoint": "http://receiver/hook",
                "payload": "application/fhir+json",
            },
        }
    )
    stored = fake.put(observation("p1", 5))
    receiver = Receiver()
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        assert await fake.deliver(sub["id"], http) == [200]
    (call,) = receiver.calls
    assert (call.method, call.url.path) == ("PUT", f"/hook/Observation/{stored['id']}")
    assert json.loads(call.content)["valueInteger"] == 5


async def test_a_failed_delivery_puts_the_subscription_in_error_until_reactivated() -> None:
    fake = FakeFhirServer()
    sub = fake.put(topic_subscription("id-only"))
    fake.emit_event(sub["id"], "Procedure/1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(Receiver(500))) as http:
        assert await fake.deliver(sub["id"], http) == [500]
    assert (fake.get("Subscription", sub["id"]) or {})["status"] == "error"

    fake.put({**(fake.get("Subscription", sub["id"]) or {}), "status": "requested"})  # the subscriber's job
    assert (fake.get("Subscription", sub["id"]) or {})["status"] == "active"
    receiver = Receiver()
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        assert await fake.deliver(sub["id"], http) == [200]  # the undelivered event is sent again


async def test_delivery_only_goes_to_loopback_or_test_hosts() -> None:
    fake = FakeFhirServer()
    sub = fake.put(
        {**topic_subscription(), "channel": {"type": "rest-hook", "endpoint": "https://ehr.example/hook"}}
    )
    fake.emit_event(sub["id"], "Procedure/1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(Receiver())) as http:
        with pytest.raises(PinpointError):
            await fake.deliver(sub["id"], http)


async def test_a_vignette_bundle_can_be_served(fake: FakeFhirServer, client: FhirClient) -> None:
    path = FIXTURES / "vignettes" / "v01-one-block-only" / "bundle.json"
    bundle = json.loads(path.read_text())
    loaded = fake.load_bundle(bundle)
    procedures = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure"]

    found = await client.search_all("Procedure", {"patient": "P-001"})

    assert loaded == len(bundle["entry"])
    assert sorted(r["id"] for r in found) == sorted(p["id"] for p in procedures)


async def test_the_fake_also_runs_in_process_on_an_asgi_transport() -> None:
    fake = FakeFhirServer()
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport) as http:
        client = FhirClient("http://fake/fhir", http)
        created = await client.create(patient("asgi"), if_none_exist={"identifier": f"{SYSTEM}|asgi"})
        assert created.location == f"http://fake/fhir/Patient/{created.id}/_history/1"
        assert (await client.read("Patient", str(created.id)))["identifier"][0]["value"] == "asgi"


async def test_transaction_results_give_ids_and_versions(fake: FakeFhirServer, client: FhirClient) -> None:
    created = await client.create(patient("results"))
    response = await client.transaction(writeback_bundle(str(created.id), "r"))

    results = client.transaction_results(response)

    assert [(r.resource_type, r.status, r.created, r.version_id) for r in results] == [
        ("ServiceRequest", 201, True, "1"),
        ("CarePlan", 201, True, "1"),
    ]
    assert results[1].id == fake.all("CarePlan")[0]["id"]


async def test_update_with_retries_a_lost_race(fake: FakeFhirServer, client: FhirClient) -> None:
    stored = fake.put({**patient("race"), "active": False})
    calls = 0

    def activate(current: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:  # someone else writes between our read and our update
            fake.put({**current, "gender": "female"})
        return {**current, "active": True}

    result = await client.update_with("Patient", stored["id"], activate)

    assert calls == 2
    assert result is not None and result.version_id == "3"
    final = fake.get("Patient", stored["id"]) or {}
    assert (final["active"], final["gender"]) == (True, "female")
    assert [r.status for r in fake.requests_to("PUT", "Patient/*")] == [412, 200]


async def test_update_with_nothing_to_change_writes_nothing(fake: FakeFhirServer, client: FhirClient) -> None:
    stored = fake.put(patient("unchanged"))
    assert await client.update_with("Patient", stored["id"], lambda current: None) is None
    assert fake.requests_to("PUT", "Patient/*") == []
