"""The evidence behind each card: a snapshot per card uuid (the §3 entry and the minimum facts,
never raw resources), written off the answering path, expiring after cds.evidence_retention and
purged; the card's link opens it when Pinpoint stores nothing, the live evaluation otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

from services.ingest.intake.repository import store_resources
from services.recommender.evidence.snapshots import load_snapshot, purge_expired
from shared.db.session import session_scope
from tests.api.cds.conftest import CdsApp
from tests.api.cds.test_vignettes import _prepared, hook_request, use_engine, vignette

HTML = {"accept": "text/html"}


async def _card(cds: CdsApp) -> dict:
    body, expected = hook_request("v02-two-concordant-blocks")
    use_engine(cds, expected["now"])
    r = await cds.signer().post("/cds-services/pinpoint-order-sign", body)
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    return card


async def test_each_card_keeps_its_evidence_snapshot_for_the_retention(cds: CdsApp) -> None:
    card = await _card(cds)
    await cds.parts.cds.snapshots.flush()
    with cds.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM evidence_snapshot")).mappings().one()
    assert row["card"] == card["uuid"] and row["patient_key"] == "default:P-001"
    snap = load_snapshot(cds.engine, card["uuid"], datetime.now(UTC))
    assert snap is not None
    assert snap.expires_at - snap.created_at == timedelta(days=7)  # cds.evidence_retention default
    data = snap.data
    assert data["entry"]["orderChecks"][0]["verdict"] == "supported"
    assert data["patient"] == {"name": "Base-L Testpatient", "birthDate": "1957-06-12", "sex": "female"}
    assert data["policy"]["pathways"]["facet-rfa"]["threshold"] and data["policy"]["agents"]["lidocaine"]
    facts = data["facts"]
    # the minimum facts: the two blocks with their agents, the readings drawn around them — no raw resources
    assert [i["ref"] for i in facts["interventions"]] == ["Procedure/mbb-1", "Procedure/mbb-2"]
    assert [i["injectate"]["agent"] for i in facts["interventions"]] == ["lidocaine", "bupivacaine"]
    assert len(facts["readings"]) == 10
    assert "resourceType" not in str(data["facts"]) and "physical" not in str(data).lower()
    # the card's link: signed for a clinic session (12 hours by default)
    query = parse_qs(urlsplit(card["links"][0]["url"]).query)
    lifetime = int(query["exp"][0]) - datetime.now(UTC).timestamp()
    assert 12 * 3600 - 60 < lifetime <= 12 * 3600


async def test_the_link_opens_the_snapshot_when_nothing_is_stored_else_the_live_evaluation(
    cds: CdsApp,
) -> None:
    card = await _card(cds)
    await cds.parts.cds.snapshots.flush()
    url = card["links"][0]["url"]
    page = await cds.client.get(url, headers=HTML)
    assert page.status_code == 200
    assert "As evaluated on 10 Mar 2025 at 08:00 from the EHR&#39;s data" in page.text
    assert "<h1>Base-L Testpatient</h1>" in page.text
    # now Pinpoint stores the patient's data (e.g. a subscription delivered it): the live evaluation
    resources, _ = vignette("v02-two-concordant-blocks")
    with session_scope(cds.engine) as session:
        store_resources(session, "default", [_prepared(r, "default:P-001") for r in resources if r.get("id")])
    live = await cds.client.get(url + "&now=2025-03-10T08:00:00-05:00", headers=HTML)
    assert live.status_code == 200
    assert "from the EHR&#39;s data" not in live.text and "<h1>Base-L Testpatient</h1>" in live.text
    assert "Criteria met" in live.text


async def test_expired_snapshots_are_gone_and_purged(cds: CdsApp) -> None:
    card = await _card(cds)
    await cds.parts.cds.snapshots.flush()
    later = datetime.now(UTC) + timedelta(days=7, minutes=1)
    assert load_snapshot(cds.engine, card["uuid"], later) is None
    assert purge_expired(cds.engine, datetime.now(UTC)) == 0
    assert purge_expired(cds.engine, later) == 1
    page = await cds.client.get(card["links"][0]["url"], headers=HTML)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "kept for 7 days" in page.text
    api = await cds.client.get(card["links"][0]["url"])
    assert api.status_code == 404 and api.json()["resourceType"] == "OperationOutcome"


async def test_a_graceful_stop_writes_every_queued_snapshot(cds: CdsApp) -> None:
    card = await _card(cds)
    await cds.parts.aclose()  # what the lifespan's shutdown does
    with cds.engine.connect() as conn:
        cards = conn.execute(sa.text("SELECT card FROM evidence_snapshot")).scalars().all()
    assert cards == [card["uuid"]]
