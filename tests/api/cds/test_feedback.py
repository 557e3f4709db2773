"""Feedback: 200 {}, stored once per (card, outcome, time), counted per pathway on /metrics."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from shared.db.models import CdsFeedback
from tests.api.cds.conftest import CdsApp, vector

FB = "/cds-services/pinpoint-order-sign/feedback"
VECTORS = [
    "cdshooks-feedback-accepted-spec-example.json",
    "cdshooks-feedback-overridden-no-reason-spec-example.json",
    "cdshooks-feedback-overridden-with-reason-spec-example.json",
]


def rows(app: CdsApp) -> list[dict[str, object]]:
    table = CdsFeedback.__table__  # type: ignore[attr-defined]
    with app.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]


async def test_spec_feedback_is_stored_once_whatever_the_redeliveries(cds: CdsApp) -> None:
    for _ in range(2):
        for name in VECTORS:
            r = await cds.client.post(FB, json=vector(name))
            assert r.status_code == 200 and r.json() == {}
    stored = rows(cds)
    assert [(r["card"], r["outcome"], r["outcome_at"]) for r in stored] == [
        ("4e0a3a1e-3283-4575-ab82-028d55fe2719", "accepted", "2021-12-11T10:05:31Z"),
        ("f6b95768-b1c8-40dc-8385-bf3504b82ffb", "overridden", "2020-12-11T00:00:00Z"),
        ("9368d37b-283f-44a0-93ea-547cebab93ed", "overridden", "2020-12-11T00:00:00Z"),
    ]
    assert stored[0]["body"]["acceptedSuggestions"] == [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}]
    assert stored[2]["body"]["overrideReason"]["userComment"] == "A comment entered by the clinician."
    assert all(r["service_id"] == "pinpoint-order-sign" for r in stored)


async def test_a_later_outcome_for_the_same_card_is_a_new_row(cds: CdsApp) -> None:
    body = vector("cdshooks-feedback-overridden-no-reason-spec-example.json")
    await cds.client.post(FB, json=body)
    body["feedback"][0]["outcomeTimestamp"] = "2020-12-12T00:00:00Z"
    await cds.client.post(FB, json=body)
    assert len(rows(cds)) == 2


@pytest.mark.parametrize(
    ("item", "where"),
    [
        ({"outcome": "maybe"}, "feedback.0.outcome"),
        ({"outcome": "accepted", "acceptedSuggestions": None}, "feedback[0].acceptedSuggestions"),
        ({"outcomeTimestamp": "yesterday"}, "feedback.0.outcomeTimestamp"),
        ({"card": None}, "feedback.0.card"),
    ],
)
async def test_invalid_feedback_is_400_with_its_location(
    cds: CdsApp, item: dict[str, object], where: str
) -> None:
    body = vector("cdshooks-feedback-overridden-no-reason-spec-example.json")
    body["feedback"][0].update(item)
    body["feedback"][0] = {k: v for k, v in body["feedback"][0].items() if v is not None}
    r = await cds.client.post(FB, json=body)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == [where]
    assert rows(cds) == []


async def test_override_rate_per_pathway_on_metrics(cds: CdsApp) -> None:
    cds.assessor.patients = [
        {
            "patient": "Patient/p9",
            "assessments": [],
            "orderChecks": [],
            "alerts": [{"code": "steroid-frequency", "severity": "warning", "text": "t"}],
        }
    ]
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/u", "patientId": "p9"},
        "prefetch": {"patient": None},
    }
    card = (await cds.client.post("/cds-services/pinpoint-patient-view", json=body)).json()["cards"][0][
        "uuid"
    ]
    item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2025-03-10T13:00:00Z"}
    fb = "/cds-services/pinpoint-patient-view/feedback"

    def metric(text: str, name: str) -> float:
        line = next((ln for ln in text.splitlines() if ln.startswith(name)), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = metric(
        (await cds.client.get("/metrics")).text,
        'pinpoint_cds_feedback_total{outcome="overridden",pathway="alert:steroid-frequency",service="pinpoint-patient-view"}',
    )
    for _ in range(2):
        assert (await cds.client.post(fb, json={"feedback": [item]})).status_code == 200
    text = (await cds.client.get("/metrics")).text
    after = metric(
        text,
        'pinpoint_cds_feedback_total{outcome="overridden",pathway="alert:steroid-frequency",service="pinpoint-patient-view"}',
    )
    assert after - before == 1  # the re-delivery is not counted
    assert metric(text, 'pinpoint_cds_override_ratio{pathway="alert:steroid-frequency"}') == 1.0
    about = rows(cds)[0]["body"]["pinpoint"]
    assert about["pathway"] == "alert:steroid-frequency"
    assert about["policy"] and about["policyVersion"]  # the card's policy, carried by its feedback
