"""Discovery exactly as CONTRACT §2; every CDS Hooks / CRD request vector accepted or rejected as
the spec says; the public hosts named in the vectors are never contacted."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import respx
import sqlalchemy as sa

from tests.api.cds.conftest import CdsApp, assert_valid_response, request_with_context, vector

PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
    # pain scales, then the functional instruments' panel and total codes (issue 19)
    "observations": "Observation?patient={{context.patientId}}&code="
    + ",".join(
        f"http://loinc.org|{c}"
        for c in (
            "72514-3",
            "38208-5",
            "38214-3",
            "71959-1",
            "71961-7",
            "72091-2",
            "72100-1",
            "76804-4",
            "82226-2",
            "82237-9",
            "82324-5",
            "82332-8",
            "89923-7",
            "90973-9",
            "91147-9",
            "91148-7",
            "91722-9",
            "97908-8",
            "97909-6",
        )
    ),
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationAdministration?patient={{context.patientId}}",
    "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
    "questionnaireResponses": "QuestionnaireResponse?patient={{context.patientId}}&status=completed,amended",
}

ALL_NULL = dict.fromkeys(PREFETCH)


async def test_discovery_lists_the_three_services_with_exact_prefetch(cds: CdsApp) -> None:
    r = await cds.client.get("/cds-services")
    assert r.status_code == 200
    services = {s["id"]: s for s in r.json()["services"]}
    assert {k: s["hook"] for k, s in services.items()} == {
        "pinpoint-patient-view": "patient-view",
        "pinpoint-order-select": "order-select",
        "pinpoint-order-sign": "order-sign",
    }
    for s in services.values():
        assert s["prefetch"] == PREFETCH
        assert s["description"] and s["title"]
        assert None not in s.values()


async def test_unknown_service_is_404_operation_outcome(cds: CdsApp) -> None:
    r = await cds.client.post("/cds-services/nope", json={})
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_an_oversized_call_is_413_operation_outcome_and_audited(cds: CdsApp) -> None:
    from services.recommender.cds_hooks.api import MAX_BODY_BYTES
    from shared.db.models import AuditLog

    body = b'{"hook": "patient-view", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    r = await cds.client.post(
        "/cds-services/pinpoint-patient-view", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["issue"][0]["code"] == "too-costly"
    await cds.parts.cds.audit.flush()
    audit = AuditLog.__table__  # type: ignore[attr-defined]
    with cds.engine.connect() as conn:
        details = conn.execute(sa.select(audit.c.detail).where(audit.c.action == "cds.call")).scalars().all()
    assert [d["status"] for d in details] == [413]


async def test_a_streamed_body_is_cut_at_the_limit(cds: CdsApp, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.recommender.cds_hooks import api

    monkeypatch.setattr(api, "MAX_BODY_BYTES", 1000)

    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 100  # no Content-Length: chunked

    r = await cds.client.post("/cds-services/pinpoint-patient-view/feedback", content=chunks())
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("name", "hook", "service"),
    [
        ("cdshooks-context-patient-view-0-examples.json", "patient-view", "pinpoint-patient-view"),
        ("cdshooks-context-patient-view-1-examples.json", "patient-view", "pinpoint-patient-view"),
        ("cdshooks-context-order-select-0-example-r4.json", "order-select", "pinpoint-order-select"),
        ("cdshooks-context-order-sign-0-example-r4.json", "order-sign", "pinpoint-order-sign"),
        # Labelled STU3, but every resource type exists in R4 and only the MedicationRequest dosage
        # differs (the library swapped the two examples' dosages): tolerated, see models.not_r4.
        ("cdshooks-context-order-select-1-example-stu3.json", "order-select", "pinpoint-order-select"),
        ("cdshooks-context-order-sign-1-example-stu3.json", "order-sign", "pinpoint-order-sign"),
    ],
)
async def test_hook_library_contexts_are_accepted(cds: CdsApp, name: str, hook: str, service: str) -> None:
    body = request_with_context(name, hook)
    body["prefetch"] = ALL_NULL  # the client had nothing: a source was available, holding nothing
    with respx.mock(assert_all_mocked=True) as mock:
        r = await cds.client.post(f"/cds-services/{service}", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"cards": []}
    assert mock.calls.call_count == 0


@pytest.mark.parametrize(
    ("name", "hook", "service", "where"),
    [
        (
            "cdshooks-context-order-select-2-example-dstu2.json",
            "order-select",
            "pinpoint-order-select",
            "context.draftOrders.entry[1].resource",
        ),
        (
            "cdshooks-context-order-sign-2-example-dstu2.json",
            "order-sign",
            "pinpoint-order-sign",
            "context.draftOrders.entry[1].resource",
        ),
    ],
)
async def test_dstu2_contexts_are_400_naming_the_resource(
    cds: CdsApp, name: str, hook: str, service: str, where: str
) -> None:
    r = await cds.client.post(f"/cds-services/{service}", json=request_with_context(name, hook))
    assert r.status_code == 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["expression"] for i in outcome["issue"]] == [[where]]
    assert outcome["issue"][0]["code"] == "not-supported"


async def test_appointment_book_is_not_a_hook_we_serve(cds: CdsApp) -> None:
    body = request_with_context("cdshooks-context-appointment-book-0-examples-stu3.json", "appointment-book")
    r = await cds.client.post("/cds-services/pinpoint-patient-view", json=body)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["hook"]
    crd = vector("crd-request-appointment-book-no-prefetch.json")
    r = await cds.client.post("/cds-services/pinpoint-order-sign", json=crd)
    assert r.status_code == 400
    assert "hook" in [i["expression"][0] for i in r.json()["issue"]]


async def test_crd_order_dispatch_is_rejected_by_order_sign(cds: CdsApp) -> None:
    r = await cds.client.post(
        "/cds-services/pinpoint-order-sign", json=vector("crd-request-order-dispatch-with-prefetch.json")
    )
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["hook"]


async def test_spec_patient_view_example_is_412_without_any_outbound_call(cds: CdsApp) -> None:
    """fhirServer (hooks.smarthealthit.org) is not a configured source; its prefetch key is not ours;
    nothing is stored: no data source was available."""
    with respx.mock(assert_all_mocked=True) as mock:
        r = await cds.client.post(
            "/cds-services/pinpoint-patient-view",
            json=vector("cdshooks-request-patient-view-spec-example.json"),
        )
    assert r.status_code == 412
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["resourceType"] == "OperationOutcome"
    assert mock.calls.call_count == 0


async def test_spec_request_with_extension_lacks_patient_id(cds: CdsApp) -> None:
    r = await cds.client.post(
        "/cds-services/pinpoint-patient-view",
        json=vector("cdshooks-request-with-extension-spec-example.json"),
    )
    assert r.status_code == 400
    issues = r.json()["issue"]
    assert ["context.patientId"] in [i["expression"] for i in issues]
    assert {i["code"] for i in issues} == {"required"}


@pytest.mark.parametrize(
    "name", ["crd-request-order-sign-with-prefetch.json", "crd-request-order-sign-no-prefetch.json"]
)
async def test_crd_order_sign_requests_never_contact_the_payer_host(cds: CdsApp, name: str) -> None:
    """example.org is not a configured source: nothing is fetched. With prefetch (a `patient` key,
    `null`s) a source was available → 200; without prefetch and nothing stored → 412."""
    with respx.mock(assert_all_mocked=True) as mock:
        r = await cds.client.post("/cds-services/pinpoint-order-sign", json=vector(name))
    assert mock.calls.call_count == 0
    if "with-prefetch" in name:
        assert r.status_code == 200, r.text
        assert_valid_response(r.json())
        # The CRD patient was read and the draft ServiceRequests entered as draft orders.
        assert {"Patient/123", "ServiceRequest/1357", "ServiceRequest/2468"} <= cds.assessor.ids()
        assert all(
            r["status"] == "draft" for r in cds.assessor.seen[-1] if r["resourceType"] == "ServiceRequest"
        )
    else:
        assert r.status_code == 412


def _bad(mutate: Any) -> dict[str, Any]:
    body = request_with_context("cdshooks-context-order-select-0-example-r4.json", "order-select")
    mutate(body)
    return body


@pytest.mark.parametrize(
    ("mutate", "locations"),
    [
        (lambda b: b.pop("hookInstance"), ["hookInstance"]),
        (lambda b: b.update(hookInstance="not-a-uuid"), ["hookInstance"]),
        (lambda b: b["context"].pop("draftOrders"), ["context.draftOrders"]),
        (lambda b: b["context"].update(draftOrders={"resourceType": "Patient"}), ["context.draftOrders"]),
        (lambda b: b["context"].update(selections=[]), ["context.selections"]),
        (lambda b: b["context"].update(selections=["ServiceRequest/other"]), ["context.selections[0]"]),
        (lambda b: b["context"].update(userId="Patient/1"), ["context.userId"]),
        (lambda b: b["context"].update(patientId="a b"), ["context.patientId"]),
        (
            lambda b: b.update(
                fhirAuthorization={
                    "access_token": "x",
                    "token_type": "Bearer",
                    "expires_in": 1,
                    "scope": "s",
                    "subject": "c",
                }
            ),
            ["fhirServer"],
        ),
        (lambda b: b.update(fhirServer="ftp://x"), ["fhirServer"]),
        (lambda b: b.update(prefetch={"patient": [1]}), ["prefetch.patient"]),
        (lambda b: b.pop("context"), ["context"]),
    ],
)
async def test_invalid_requests_are_400_with_locations(
    cds: CdsApp, mutate: Any, locations: list[str]
) -> None:
    r = await cds.client.post("/cds-services/pinpoint-order-select", json=_bad(mutate))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert sorted(i["expression"][0] for i in body["issue"]) == sorted(locations)


async def test_non_json_body_is_400(cds: CdsApp) -> None:
    r = await cds.client.post("/cds-services/pinpoint-patient-view", content=b"{not json")
    assert r.status_code == 400
    assert r.json()["issue"][0]["code"] == "structure"


async def test_order_select_cards_only_for_selected_orders(cds: CdsApp) -> None:
    orders = [
        {
            "resourceType": "ServiceRequest",
            "id": "a",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "code": {"text": "Epidural at L3-L4"},
        },
        {
            "resourceType": "ServiceRequest",
            "id": "b",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "code": {"text": "Epidural at L4-L5"},
        },
    ]
    cds.assessor.patients = [
        {
            "patient": "Patient/p1",
            "assessments": [],
            "alerts": [],
            "orderChecks": [
                {
                    "order": f"ServiceRequest/{i}",
                    "pathway": "esi",
                    "verdict": "supported",
                    "reasons": [],
                    "evidence": [],
                }
                for i in ("a", "b")
            ],
        }
    ]
    body = {
        "hook": "order-select",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/1",
            "patientId": "p1",
            "selections": ["ServiceRequest/b"],
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": o} for o in orders],
            },
        },
        "prefetch": ALL_NULL,
    }
    r = await cds.client.post("/cds-services/pinpoint-order-select", json=body)
    assert r.status_code == 200
    cards = r.json()["cards"]
    assert len(cards) == 1 and "Epidural at L4-L5" in cards[0]["detail"]  # named as written, no id
