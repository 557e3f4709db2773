"""Outcomes written back (issue 19): each procedure's outcome Observation reaches the FHIR server
(the fake, on loopback) in its own transaction before the CarePlan whose
``activity.outcomeReference`` points at it by the server's id; re-delivery and re-evaluation
never duplicate it (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.recommender.writeback import replay_delivery
from shared.db.models import DeadLetter, Outbox
from tests.api.recommender.helpers import assert_valid_r4
from tests.fakes.fhir_server import FakeFhirServer, Fault, LiveServer
from tests.integration.writeback.helpers import (
    SOURCE,
    app_client,
    by_identifier,
    deliver,
    evaluate,
    outbox,
    push,
    suggestion,
    transactions,
    vignette,
    vignette_now,
    wb_settings,
)

F05 = "f05-outcomes-relief-duration-censoring"
PLAN = f"{SOURCE}:P-001:facet-rfa-repeat:lumbar:right:L4-L5+L5-S1"
OUT1 = f"{SOURCE}:P-001:outcome:rfa-1"
OUT2 = f"{SOURCE}:P-001:outcome:rfa-2"


O6 = next(e["resource"] for e in vignette(F05)["entry"] if e["resource"]["id"] == "o-6")


def _component(obs: dict, code: str) -> dict:  # type: ignore[type-arg]
    (comp,) = [c for c in obs["component"] if c["code"]["coding"][0]["code"] == code]
    return comp  # type: ignore[no-any-return]


async def test_outcome_observations_arrive_referenced_from_the_careplan_and_never_duplicate(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)
    async with await app_client(settings, engine) as client:
        await push(client, vignette(F05))
    now = vignette_now(F05)
    evaluate(engine, settings, now)

    stats = await deliver(engine, settings)
    assert stats.sent == 3 and stats.handled == 3  # two outcomes, then the assessment's group
    first, second, _plan_tx = transactions(fake)
    assert [e["request"]["url"] for e in first["entry"]] == ["Observation", "Provenance"]
    assert [e["request"]["url"] for e in second["entry"]] == ["Observation", "Provenance"]
    assert first["entry"][0]["request"]["ifNoneExist"].endswith("outcome%3Arfa-1")

    (obs1,) = by_identifier(fake, "Observation", OUT1)
    (obs2,) = by_identifier(fake, "Observation", OUT2)
    (plan,) = by_identifier(fake, "CarePlan", PLAN)
    for resource in (obs1, obs2, plan, *fake.all("Provenance")):
        assert_valid_r4(resource)

    # the CarePlan points at the Procedures and at the Observations by the server's ids
    outcome_refs = [[r["reference"] for r in a["outcomeReference"]] for a in plan["activity"][1:]]
    assert outcome_refs == [
        ["Procedure/rfa-1", f"Observation/{obs1['id']}"],
        ["Procedure/rfa-2", f"Observation/{obs2['id']}"],
    ]
    assert suggestion(engine, "Observation", OUT1).remote_id == obs1["id"]

    # what the first RFA achieved, as the outcomes section says (f05's expected document)
    assert obs1["status"] == "final" and obs2["status"] == "preliminary"  # rfa-2: 6 and 12 months to come
    assert obs1["focus"] == [
        {"reference": "Procedure/rfa-1", "display": "facet radiofrequency ablation at the right lumbar "
         "L4-L5, L5-S1 on 8 Jan 2024"}
    ]  # fmt: skip
    assert obs1["subject"] == {"reference": "Patient/P-001"}
    assert _component(obs1, "relief-duration")["valueQuantity"] == {
        "value": 182, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"
    }  # fmt: skip
    assert _component(obs1, "relief-censored")["valueBoolean"] is False
    assert _component(obs2, "relief-censored")["valueBoolean"] is True
    assert _component(obs1, "days-to-next-procedure")["valueQuantity"]["value"] == 287
    assert _component(obs1, "pain-relief-3m")["valueQuantity"]["value"] == 62.5
    assert _component(obs1, "odi-change-3m")["valueQuantity"]["value"] == 18
    assert _component(obs1, "pain-relief-12m")["dataAbsentReason"]["coding"][0]["code"] == "not-applicable"
    assert _component(obs2, "pain-relief-6m")["dataAbsentReason"]["coding"][0]["code"] == "temp-unknown"
    assert "Relief of at least 50 % lasted 182 days." in obs1["note"][0]["text"]
    assert "and still ongoing at the last reading" in obs2["note"][0]["text"]
    derived = [d["reference"] for d in obs1["derivedFrom"]]
    assert derived[0].startswith("Observation/") and len(derived) == len(set(derived)) >= 4

    # a re-delivery of everything (as if the deliverer died after the server applied it): the
    # probe finds exactly this content, nothing is written again
    with Session(engine) as s:
        for row in s.exec(select(Outbox)).all():
            row.status, row.attempts, row.next_attempt_at = "pending", 1, now - timedelta(days=1)
            s.add(row)
        s.commit()
    fake.clear_requests()
    assert (await deliver(engine, settings)).sent == 3
    assert transactions(fake) == []
    assert len(fake.all("Observation")) == 2

    # an unchanged re-evaluation writes nothing; a later one updates rfa-2's outcome in place
    evaluate(engine, settings, now)
    assert (await deliver(engine, settings)).handled == 0
    later = {**O6, "id": "o-7", "effectiveDateTime": "2025-04-22T10:00:00-05:00", "valueInteger": 3}
    async with await app_client(settings, engine) as client:  # the 6-month follow-up of rfa-2
        await push(client, {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": later}]})
    evaluate(engine, settings, now + timedelta(days=90))
    await deliver(engine, settings)
    assert all(e.status == "sent" for e in outbox(engine))
    (obs2b,) = by_identifier(fake, "Observation", OUT2)
    assert obs2b["id"] == obs2["id"] and obs2b["meta"]["versionId"] == "2"
    assert _component(obs2b, "pain-relief-6m")["valueQuantity"]["value"] == 57.1  # 7 → 3
    assert _component(obs2b, "relief-duration")["valueQuantity"]["value"] == 183  # still relieved
    assert {"reference": "Observation/o-7"} in obs2b["derivedFrom"]
    assert len(by_identifier(fake, "Observation", OUT1)) == 1 and len(fake.all("Observation")) == 2
    (plan2,) = by_identifier(fake, "CarePlan", PLAN)
    assert [r["reference"] for r in plan2["activity"][2]["outcomeReference"]][
        1
    ] == f"Observation/{obs2['id']}"


async def test_a_careplan_whose_outcome_was_parked_refers_to_it_conditionally_then_by_id_on_replay(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer
) -> None:
    settings = wb_settings(db_url, live)
    async with await app_client(settings, engine) as client:
        await push(client, vignette(F05))
    evaluate(engine, settings, vignette_now(F05))
    fake.inject("POST", "", Fault.error(422, code="processing"))  # the first outcome is refused
    stats = await deliver(engine, settings)
    assert (stats.parked, stats.sent) == (2, 1)  # outcome 1 parked; outcome 2 sent; the CarePlan …
    plan_tx = fake.requests_to("POST", "")[-1].json()
    (sent_plan,) = [e["resource"] for e in plan_tx["entry"] if e["resource"]["resourceType"] == "CarePlan"]
    refs = [r["reference"] for a in sent_plan["activity"] for r in a.get("outcomeReference", [])]
    # … asked for rfa-1's outcome by identifier (not on the server: refused), rfa-2's by its id
    (obs2,) = by_identifier(fake, "Observation", OUT2)
    assert (
        refs[1] == "Observation?identifier=urn%3Apinpoint%3Arecommendation%7Chosp%3AP-001%3Aoutcome%3Arfa-1"
    )
    assert refs[3] == f"Observation/{obs2['id']}"
    assert by_identifier(fake, "CarePlan", PLAN) == []

    with Session(engine) as s:
        dead = sorted(d.id for d in s.exec(select(DeadLetter)).all() if d.kind == "delivery" and d.id)
    for dead_id in dead:  # replayed in order: the outcome first, then the CarePlan
        assert replay_delivery(engine, settings, dead_id)["status"] == "replayed"
        assert (await deliver(engine, settings)).sent == 1
    (obs1,) = by_identifier(fake, "Observation", OUT1)
    (plan,) = by_identifier(fake, "CarePlan", PLAN)
    outcome_refs = [r["reference"] for a in plan["activity"][1:] for r in a["outcomeReference"]]
    assert outcome_refs == [
        "Procedure/rfa-1",
        f"Observation/{obs1['id']}",
        "Procedure/rfa-2",
        f"Observation/{obs2['id']}",
    ]
    assert len(fake.all("Observation")) == 2 and all(e.status == "sent" for e in outbox(engine))
