"""Issue 19: a documentation gap is said where people read — the CarePlan, the evidence page and
the CDS card — with who requires it, and it never changes the verdict."""

from __future__ import annotations

import httpx
from sqlalchemy.engine import Engine

from shared.settings import Settings
from tests.api.recommender.helpers import assert_valid_r4, bundle, push, run_worker, search, vignette_now

F02 = "f02-baseline-disability-missing"
F01 = "f01-baseline-disability-present"
GAP = "Documentation: no baseline disability scale — required by LCD L38773."


async def test_careplan_and_evidence_page_say_what_is_missing_and_who_requires_it(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    await push(client, bundle(F02))
    run_worker(engine, settings, vignette_now(F02))
    [plan] = [p for p in await search(client, "CarePlan") if p["status"] == "draft"]
    assert_valid_r4(plan)
    assert "is supported" in plan["description"] and plan["description"].endswith(GAP)
    page = await client.get("/patients/P-001/evidence", params={"now": vignette_now(F02).isoformat()})
    assert page.status_code == 200
    assert "Disability scale at baseline" in page.text and "Required by LCD L38773" in page.text
    assert "No disability scale in the 180 days before the first block on 3 Feb 2025" in page.text


async def test_nothing_is_said_when_the_disability_scale_was_recorded(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    await push(client, bundle(F01))
    run_worker(engine, settings, vignette_now(F01))
    [plan] = [p for p in await search(client, "CarePlan") if p["status"] == "draft"]
    assert "Documentation:" not in plan["description"]
    page = await client.get("/patients/P-001/evidence", params={"now": vignette_now(F01).isoformat()})
    assert "Oswestry Disability Index 44 % on 20 Jan 2025" in page.text
