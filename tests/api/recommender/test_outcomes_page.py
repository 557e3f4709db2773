"""``GET /outcomes`` (issue 19): the practice summary page, protected like patient-data reads."""

from __future__ import annotations

import httpx
from sqlalchemy.engine import Engine

from services.server import Role, build_app
from shared.settings import Settings
from tests.api.recommender.helpers import bundle, push

F05 = "f05-outcomes-relief-duration-censoring"


async def test_outcomes_page_summarises_the_stored_procedures(client: httpx.AsyncClient) -> None:
    await push(client, bundle(F05))
    r = await client.get("/outcomes")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    text = r.text
    assert "Facet radiofrequency ablation" in text
    assert "<dt>Procedures</dt><dd>2</dd>" in text
    assert "182 days over 2 procedures, censoring honoured" in text
    assert 'class="km-curve"' in text
    assert "<td>Oswestry Disability Index</td><td>18</td><td>100 %</td>" in text
    later = await client.get("/outcomes", params={"since": "2025-01-01"})
    assert "No definitive or therapeutic procedure is stored." in later.text
    bad = await client.get("/outcomes", params={"since": "soon"})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


async def test_outcomes_page_needs_the_api_token(db_url: str, engine: Engine) -> None:
    settings = Settings(database_url=db_url, api_tokens=["reader"], _env_file=None)  # type: ignore[call-arg]
    app = build_app(settings, Role.all, engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint.test") as c:
        assert (await c.get("/outcomes")).status_code == 401
        assert (await c.get("/outcomes", headers={"authorization": "Bearer reader"})).status_code == 200
