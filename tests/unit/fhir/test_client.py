"""FhirClient against respx: retries, Retry-After, base confinement, error mapping, headers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ConfigError
from shared.fhir.client import FhirClient, RetryPolicy, parse_retry_after
from shared.fhir.errors import (
    FhirAuthError,
    FhirHttpError,
    FhirInvalidResponse,
    FhirNotFound,
    FhirTransportError,
    FhirVersionConflict,
    ForeignUrlError,
    PagingLimitExceeded,
)
from tests.unit.fhir.conftest import BASE, RecordingSleep

PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"}}
FHIR = {"Content-Type": "application/fhir+json"}


def outcome(code: str, text: str = "details") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


def make(http: httpx.AsyncClient, sleep: RecordingSleep, **kwargs: Any) -> FhirClient:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=8.0))
    return FhirClient(BASE, http, sleep=sleep, rng=random.Random(7), **kwargs)


def bundle(entries: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "self", "url": "ignored"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": e, "search": {"mode": "match"}} for e in entries],
    }


# ---------------------------------------------------------------- headers and basics


async def test_read_sends_fhir_accept_and_request_id(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.get(f"{BASE}/Patient/p1").respond(200, json=PATIENT, headers=FHIR)
    client = make(http, sleep, request_id=lambda: "req-42")

    assert await client.read("Patient", "p1") == PATIENT

    sent = route.calls.last.request
    assert sent.headers["Accept"] == "application/fhir+json"
    assert sent.headers["X-Request-ID"] == "req-42"


async def test_no_request_id_header_when_none_is_current(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.get(f"{BASE}/Patient/p1").respond(200, json=PATIENT)
    await make(http, sleep, request_id=lambda: None).read("Patient", "p1")
    assert "X-Request-ID" not in route.calls.last.request.headers


async def test_read_of_another_type_in_body_is_invalid(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    router.get(f"{BASE}/Patient/p1").respond(200, json={"resourceType": "Observation"})
    with pytest.raises(FhirInvalidResponse):
        await make(http, sleep).read("Patient", "p1")


async def test_capabilities_reads_metadata(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    router.get(f"{BASE}/metadata").respond(
        200, json={"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}
    )
    assert (await make(http, sleep).capabilities())["fhirVersion"] == "4.0.1"


@pytest.mark.parametrize(
    "base",
    [
        "ftp://fhir.example/R4",
        "https://user:pw@fhir.example/R4",
        "https://fhir.example/R4?x=1",
        "fhir.example/R4",
    ],
    ids=["scheme", "userinfo", "query", "relative"],
)
def test_bad_base_urls_are_config_errors(base: str, http: httpx.AsyncClient) -> None:
    with pytest.raises(ConfigError):
        FhirClient(base, http)


def test_the_base_is_normalised(http: httpx.AsyncClient) -> None:
    assert FhirClient("https://fhir.example/a/../R4/", http).base_url == "https://fhir.example/R4"


# ---------------------------------------------------------------- retries


async def test_503_is_retried_with_full_jitter_then_succeeds(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.get(f"{BASE}/Patient/p1")
    route.side_effect = [httpx.Response(503), httpx.Response(503), httpx.Response(200, json=PATIENT)]

    assert await make(http, sleep).read("Patient", "p1") == PATIENT

    assert route.call_count == 3
    assert len(sleep.delays) == 2
    assert 0 <= sleep.delays[0] <= 1.0  # first retry: [0, base]
    assert 0 <= sleep.delays[1] <= 2.0  # second retry: [0, 2*base]


async def test_attempts_are_bounded_and_the_last_status_is_raised(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.get(f"{BASE}/Patient/p1").respond(503, json=outcome("transient"))

    with pytest.raises(FhirHttpError) as caught:
        await make(http, sleep).read("Patient", "p1")

    assert route.call_count == 3
    assert len(sleep.delays) == 2
    assert caught.value.upstream_status == 503
    assert caught.value.status == 502  # what Pinpoint answers: bad gateway


async def test_retry_after_seconds_is_honoured(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.get(f"{BASE}/Patient/p1")
    route.side_effect = [httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200, json=PATIENT)]

    await make(http, sleep).read("Patient", "p1")

    assert sleep.delays == [7.0]


async def test_retry_after_http_date_is_relative_to_the_server_date(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    server_now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)  # far from our clock: only the server's counts
    headers = {
        "Date": format_datetime(server_now, usegmt=True),
        "Retry-After": format_datetime(server_now + timedelta(seconds=3), usegmt=True),
    }
    route = router.get(f"{BASE}/Patient/p1")
    route.side_effect = [httpx.Response(503, headers=headers), httpx.Response(200, json=PATIENT)]

    await make(http, sleep).read("Patient", "p1")

    assert sleep.delays == [3.0]


async def test_retry_after_beyond_the_limit_is_not_waited_for(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.get(f"{BASE}/Patient/p1").respond(
        429, headers={"Retry-After": "3600"}, json=outcome("throttled")
    )

    with pytest.raises(FhirHttpError) as caught:
        await make(http, sleep).read("Patient", "p1")

    assert route.call_count == 1
    assert sleep.delays == []
    assert caught.value.retry_after == 3600.0
    assert caught.value.issue_codes == ["throttled"]


async def test_read_timeouts_are_retried_for_reads_and_end_as_a_timeout_error(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.get(f"{BASE}/Patient/p1").mock(side_effect=httpx.ReadTimeout("slow"))

    with pytest.raises(FhirTransportError) as caught:
        await make(http, sleep).read("Patient", "p1")

    assert route.call_count == 3
    assert caught.value.timeout is True
    assert caught.value.status == 504


async def test_connect_errors_are_retried_even_for_a_plain_create(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.post(f"{BASE}/Patient")
    route.side_effect = [httpx.ConnectError("refused"), httpx.Response(201, json=PATIENT)]

    result = await make(http, sleep).create({"resourceType": "Patient"})

    assert route.call_count == 2
    assert result.created


@pytest.mark.parametrize(
    "failure", [httpx.ReadTimeout("slow"), httpx.Response(502)], ids=["read-timeout", "502"]
)
async def test_a_plain_create_is_not_replayed_when_the_server_may_have_processed_it(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep, failure: Any
) -> None:
    route = router.post(f"{BASE}/Patient")
    route.side_effect = [failure, httpx.Response(201, json=PATIENT)]

    with pytest.raises((FhirTransportError, FhirHttpError)):
        await make(http, sleep).create({"resourceType": "Patient"})

    assert route.call_count == 1


async def test_a_conditional_create_is_replayed_after_a_502(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.post(f"{BASE}/Patient")
    route.side_effect = [httpx.Response(502), httpx.Response(200, json=PATIENT)]

    result = await make(http, sleep).create(
        {"resourceType": "Patient"}, if_none_exist={"identifier": "urn:x|1"}
    )

    assert route.call_count == 2
    assert result.created is False


async def test_500_is_retried_only_when_configured(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.get(f"{BASE}/Patient/p1")
    route.side_effect = [httpx.Response(500), httpx.Response(200, json=PATIENT)]
    with pytest.raises(FhirHttpError):
        await make(http, sleep).read("Patient", "p1")
    assert route.call_count == 1

    route.side_effect = [httpx.Response(500), httpx.Response(200, json=PATIENT)]
    policy = RetryPolicy(max_attempts=3, retry_server_error=True)
    assert await make(http, sleep, retry=policy).read("Patient", "p1") == PATIENT
    assert route.call_count == 3


async def test_a_transaction_of_conditional_writes_is_retried_but_not_one_with_a_plain_post(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    response = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    route = router.post(BASE)
    safe = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "CarePlan"},
                "request": {"method": "POST", "url": "CarePlan", "ifNoneExist": "identifier=a|1"},
            },
            {
                "resource": {"resourceType": "Patient", "id": "1"},
                "request": {"method": "PUT", "url": "Patient/1"},
            },
        ],
    }
    route.side_effect = [httpx.Response(504), httpx.Response(200, json=response)]
    assert await make(http, sleep).transaction(safe) == response
    assert route.call_count == 2

    unsafe = {
        **safe,
        "entry": [
            *safe["entry"],
            {"resource": {"resourceType": "Provenance"}, "request": {"method": "POST", "url": "Provenance"}},
        ],
    }
    route.side_effect = [httpx.Response(504), httpx.Response(200, json=response)]
    with pytest.raises(FhirHttpError):
        await make(http, sleep).transaction(unsafe)
    assert route.call_count == 3


# ---------------------------------------------------------------- staying within the base


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/R4/Observation?page=2",
        "http://fhir.hospital-a.example/R4/Observation?page=2",
        "https://fhir.hospital-a.example:8443/R4/Observation?page=2",
        "https://fhir.hospital-a.example/R5/Observation?page=2",
        "https://fhir.hospital-a.example/R4x/Observation?page=2",
        "https://fhir.hospital-a.example/R4/../admin?page=2",
        "https://fhir.hospital-a.example/R4/%2e%2e/admin?page=2",
        "https://someone@fhir.hospital-a.example/R4/Observation?page=2",
    ],
    ids=["host", "scheme", "port", "path", "prefix-lookalike", "dot-dot", "encoded-dot-dot", "userinfo"],
)
async def test_a_foreign_next_link_is_refused_before_anything_is_sent(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep, next_url: str
) -> None:
    first = router.get(f"{BASE}/Observation").respond(
        200, json=bundle([{"resourceType": "Observation", "id": "1"}], next_url)
    )

    seen: list[dict[str, Any]] = []
    with pytest.raises(ForeignUrlError):
        async for resource in make(http, sleep).search("Observation", {"patient": "p1"}):
            seen.append(resource)

    assert first.call_count == 1
    assert [r["id"] for r in seen] == ["1"]
    assert len(router.calls) == 1  # nothing was sent to the foreign URL


async def test_next_links_within_the_base_are_followed_including_hapi_style(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    # respx matches routes in order and params by inclusion: the more specific route first
    router.get(f"{BASE}/Observation", params={"patient": "p1", "_offset": "1"}).respond(
        200,
        json=bundle([{"resourceType": "Observation", "id": "2"}], f"{BASE}?_getpages=abc&_getpagesoffset=2"),
    )
    router.get(f"{BASE}/Observation", params={"patient": "p1"}).respond(
        200,
        json=bundle([{"resourceType": "Observation", "id": "1"}], f"{BASE}/Observation?patient=p1&_offset=1"),
    )
    router.get(BASE, params={"_getpages": "abc"}).respond(
        200, json=bundle([{"resourceType": "Observation", "id": "3"}])
    )

    found = await make(http, sleep).search_all("Observation", {"patient": "p1"})

    assert [r["id"] for r in found] == ["1", "2", "3"]


async def test_paging_is_bounded(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    pages = iter(range(1, 1000))
    router.get(f"{BASE}/Observation").mock(
        side_effect=lambda request: httpx.Response(
            200, json=bundle([], f"{BASE}/Observation?page={next(pages)}")
        )
    )
    with pytest.raises(PagingLimitExceeded):
        await make(http, sleep, max_pages=3).search_all("Observation")
    assert len(router.calls) == 3


async def test_a_next_link_loop_is_detected(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    router.get(f"{BASE}/Observation").respond(200, json=bundle([], f"{BASE}/Observation?page=2"))
    with pytest.raises(PagingLimitExceeded):
        await make(http, sleep).search_all("Observation")
    assert len(router.calls) == 2


async def test_search_skips_outcome_entries_but_keeps_includes(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    page = bundle([{"resourceType": "CarePlan", "id": "c"}])
    page["entry"] += [
        {"resource": {"resourceType": "Provenance", "id": "v"}, "search": {"mode": "include"}},
        {"resource": outcome("informational"), "search": {"mode": "outcome"}},
    ]
    router.get(f"{BASE}/CarePlan").respond(200, json=page)
    found = await make(http, sleep).search_all("CarePlan", {"_revinclude": "Provenance:target"})
    assert [r["resourceType"] for r in found] == ["CarePlan", "Provenance"]


async def test_redirects_are_not_followed(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    router.get(f"{BASE}/Patient/p1").respond(302, headers={"Location": "https://evil.example/Patient/p1"})
    with pytest.raises(FhirHttpError) as caught:
        await make(http, sleep).read("Patient", "p1")
    assert caught.value.upstream_status == 302
    assert len(router.calls) == 1


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("read", ("Patient", "../admin")),
        ("read", ("patient", "1")),
        ("read", ("Patient", "a/b")),
        ("operation", ("../$x",)),
    ],
    ids=["id-dot-dot", "lowercase-type", "id-slash", "operation-path"],
)
async def test_path_components_are_validated(
    http: httpx.AsyncClient, sleep: RecordingSleep, call: str, args: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError):
        await getattr(make(http, sleep), call)(*args)


async def test_read_reference_refuses_absolute_foreign_urls(
    http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    with pytest.raises(ForeignUrlError):
        await make(http, sleep).read_reference("https://other.example/R4/Patient/p1")


async def test_read_reference_accepts_absolute_urls_within_the_base(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    router.get(f"{BASE}/Patient/p1/_history/3").respond(200, json=PATIENT)
    assert await make(http, sleep).read_reference(f"{BASE}/Patient/p1/_history/3") == PATIENT


# ---------------------------------------------------------------- errors


async def test_412_maps_to_version_conflict_with_the_server_outcome(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    body = outcome("conflict", "version 2 is not current")
    router.put(f"{BASE}/Patient/p1").respond(412, json=body, headers=FHIR)

    with pytest.raises(FhirVersionConflict) as caught:
        await make(http, sleep).update({**PATIENT, "meta": {}}, if_match="2")

    error = caught.value
    assert error.upstream_status == 412
    assert error.upstream_outcome == body
    assert error.issue_codes == ["conflict"]
    assert "conflict" in error.diagnostics
    assert "version 2 is not current" not in error.diagnostics  # server text is kept, not repeated
    assert error.outcome()["issue"][0]["code"] == "transient"  # what Pinpoint itself would answer


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, FhirNotFound),
        (410, FhirNotFound),
        (409, FhirVersionConflict),
        (401, FhirAuthError),
        (403, FhirAuthError),
        (422, FhirHttpError),
    ],
)
async def test_status_to_exception(
    router: respx.Router,
    http: httpx.AsyncClient,
    sleep: RecordingSleep,
    status: int,
    expected: type[Exception],
) -> None:
    router.get(f"{BASE}/Patient/p1").respond(status, json=outcome("processing"))
    with pytest.raises(expected) as caught:
        await make(http, sleep).read("Patient", "p1")
    assert type(caught.value) is expected


async def test_an_error_without_an_operation_outcome(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    router.get(f"{BASE}/Patient/p1").respond(400, text="<html>bad</html>")
    with pytest.raises(FhirHttpError) as caught:
        await make(http, sleep).read("Patient", "p1")
    assert caught.value.upstream_outcome is None
    assert caught.value.issue_codes == []


# ---------------------------------------------------------------- writes


async def test_conditional_create_sends_if_none_exist_and_reads_location_and_etag(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.post(f"{BASE}/CarePlan").respond(
        201,
        headers={
            "Location": f"{BASE}/CarePlan/c9/_history/1",
            "ETag": 'W/"1"',
            "Last-Modified": "Tue, 01 Jan 2030 00:00:00 GMT",
        },
    )
    result = await make(http, sleep).create(
        {"resourceType": "CarePlan", "status": "draft"}, if_none_exist={"identifier": "urn:pinpoint|abc"}
    )

    sent = route.calls.last.request
    assert sent.headers["If-None-Exist"] == "identifier=urn%3Apinpoint%7Cabc"
    assert sent.headers["Content-Type"].startswith("application/fhir+json")
    assert (result.status, result.created, result.id, result.version_id) == (201, True, "c9", "1")
    assert result.location == f"{BASE}/CarePlan/c9/_history/1"
    assert result.resource is None


async def test_a_foreign_location_header_is_refused(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    router.post(f"{BASE}/CarePlan").respond(
        201, headers={"Location": "https://elsewhere.example/R4/CarePlan/c9"}
    )
    with pytest.raises(ForeignUrlError):
        await make(http, sleep).create({"resourceType": "CarePlan"})


async def test_a_relative_location_resolves_against_the_base(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    router.post(f"{BASE}/CarePlan").respond(201, headers={"Location": "CarePlan/c9/_history/4"})
    result = await make(http, sleep).create({"resourceType": "CarePlan"})
    assert (result.id, result.version_id, result.location) == ("c9", "4", f"{BASE}/CarePlan/c9/_history/4")


async def test_update_sends_if_match_as_a_weak_etag(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    stored = {**PATIENT, "meta": {"versionId": "4"}}
    route = router.put(f"{BASE}/Patient/p1").respond(200, json=stored, headers={"ETag": 'W/"4"'})

    result = await make(http, sleep).update(PATIENT, if_match="3")

    assert route.calls.last.request.headers["If-Match"] == 'W/"3"'
    assert (result.created, result.version_id, result.resource) == (False, "4", stored)


async def test_conditional_update_puts_to_the_type_with_criteria(
    router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep
) -> None:
    route = router.put(f"{BASE}/CarePlan", params={"identifier": "urn:pinpoint|abc"}).respond(
        201, json={"resourceType": "CarePlan", "id": "c1", "meta": {"versionId": "1"}}
    )
    result = await make(http, sleep).conditional_update(
        {"resourceType": "CarePlan"}, {"identifier": "urn:pinpoint|abc"}
    )
    assert route.called
    assert (result.id, result.version_id, result.created) == ("c1", "1", True)


async def test_operation_events(router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep) -> None:
    history = {"resourceType": "Bundle", "type": "history", "entry": []}
    route = router.get(f"{BASE}/Subscription/s1/$events", params={"eventsSinceNumber": "4"}).respond(
        200, json=history
    )
    assert await make(http, sleep).operation("Subscription/s1/$events", {"eventsSinceNumber": "4"}) == history
    assert route.called


async def test_delete(router: respx.Router, http: httpx.AsyncClient, sleep: RecordingSleep) -> None:
    route = router.delete(f"{BASE}/CarePlan/c1").respond(204)
    await make(http, sleep).delete("CarePlan", "c1")
    assert route.called


# ---------------------------------------------------------------- small pure parts


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), (" 0 ", 0.0), ("1.5", 1.5), ("-3", None), ("soon", None), ("", None), (None, None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_date_in_the_past_is_zero() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now - timedelta(minutes=1), usegmt=True), now=now) == 0.0


@given(retry_number=st.integers(min_value=1, max_value=30), seed=st.integers(min_value=0, max_value=2**32))
def test_backoff_stays_within_the_full_jitter_window(retry_number: int, seed: int) -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=20.0)
    delay = policy.backoff(retry_number, random.Random(seed))
    assert 0.0 <= delay <= min(20.0, 0.5 * 2 ** (retry_number - 1))


def test_retry_policy_bounds() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=50)
