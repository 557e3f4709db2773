"""Every refused payload is kept as a dead letter with why (issue 18, finding 4), and every write
path has a body limit, ``PINPOINT_MAX_BODY_BYTES``: 413 on the declared length and while
streaming, the first bytes and the size kept (finding 6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from services.server import Role, build_app
from shared.settings import ConfigFile, Settings
from shared.web import HEAD_BYTES
from tests.api.ingest.helpers import FHIR, body, bundle, dead_letters, mbb, pain, patient, stored

LIMIT = 4096


@pytest.mark.parametrize("ctype", ["text/plain", "application/fhir+xml"])
async def test_wrong_content_type_is_415_and_kept(
    client: httpx.AsyncClient, engine: Engine, ctype: str
) -> None:
    raw = body(bundle("transaction", patient(), pain()))
    r = await client.post("/fhir", content=raw, headers={"content-type": ctype})
    assert r.status_code == 415
    assert r.json()["issue"][0]["code"] == "not-supported"
    assert stored(engine) == {}
    [dl] = dead_letters(engine)
    assert (dl.payload, dl.content_type, dl.kind) == (raw, ctype, "push")
    assert ctype in dl.reason and dl.outcome == r.json()


async def test_a_resource_posted_to_another_type_is_400_and_kept(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = body(mbb())
    r = await client.post("/fhir/Observation", content=raw, headers=FHIR)
    assert r.status_code == 400
    assert "Procedure" in r.json()["issue"][0]["diagnostics"]
    [dl] = dead_letters(engine)
    assert dl.payload == raw and "the URL names Observation" in dl.reason


async def test_a_put_with_another_id_is_400_and_kept(client: httpx.AsyncClient, engine: Engine) -> None:
    raw = body(mbb("b"))
    r = await client.put("/fhir/Procedure/a", content=raw, headers=FHIR)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Procedure.id"]
    assert stored(engine) == {}
    [dl] = dead_letters(engine)
    assert dl.payload == raw and "differs from the URL id" in dl.reason


@pytest.fixture
def small_app(db_url: str, engine: Engine) -> Any:
    config = ConfigFile.model_validate({"sources": [{"id": "default"}, {"id": "clinic"}]})
    settings = Settings(database_url=db_url, max_body_bytes=LIMIT, config=config, _env_file=None)  # type: ignore[call-arg]
    return build_app(settings, Role.all, engine)


@pytest.fixture
async def small(small_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=small_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint.test") as c:
        yield c
    for hook in small_app.state.runtime.on_shutdown:
        await hook()


def _big(size: int) -> bytes:
    """A valid Patient of ``size`` bytes (a long name)."""
    shell = body(patient(name=[{"text": ""}]))
    return body(patient(name=[{"text": "x" * (size - len(shell))}]))


async def test_a_body_over_the_limit_is_413_and_its_head_kept(
    small: httpx.AsyncClient, engine: Engine
) -> None:
    ok = _big(LIMIT)
    assert (await small.post("/fhir", content=ok, headers=FHIR)).status_code == 201
    raw = _big(3 * HEAD_BYTES)
    r = await small.post("/sources/clinic/fhir", content=raw, headers=FHIR)
    assert r.status_code == 413
    out = r.json()
    assert out["resourceType"] == "OperationOutcome" and out["issue"][0]["code"] == "too-costly"
    assert f"{len(raw):,} bytes" in out["issue"][0]["diagnostics"]
    [dl] = dead_letters(engine)
    assert dl.source == "clinic" and dl.payload == raw[:HEAD_BYTES]
    assert dl.context == {"truncated": True, "size": len(raw), "size_exact": True}
    assert f"{len(raw):,} bytes" in dl.reason
    assert set(stored(engine)) == {("Patient", "P-1")}


async def test_a_streamed_body_is_cut_at_the_limit_and_kept(small: httpx.AsyncClient, engine: Engine) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"resourceType": "Patient", "id": "P-1", "name": [{"text": "'
        for _ in range(10_000):  # 10 MB if it were all read
            sent += 1
            yield b"y" * 1000

    r = await small.put("/fhir/Patient/P-1", content=chunks(), headers=FHIR)
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    assert sent < 2 * LIMIT / 1000 + 2  # reading stopped at the limit
    [dl] = dead_letters(engine)
    assert dl.payload.startswith(b'{"resourceType": "Patient"') and len(dl.payload) > LIMIT
    assert dl.context is not None and dl.context["size_exact"] is False and dl.context["size"] > LIMIT
    assert "more than" in dl.reason


async def test_a_truncated_dead_letter_is_not_replayed(small: httpx.AsyncClient, engine: Engine) -> None:
    await small.post("/fhir", content=_big(2 * LIMIT), headers=FHIR)
    [dl] = dead_letters(engine)
    r = await small.post(f"/admin/dead-letters/{dl.id}/replay")
    assert r.status_code == 409 and "send it again" in r.json()["issue"][0]["diagnostics"]


#: Write routes that read no body at all (nothing to limit).
NO_BODY = {("POST", "/admin/dead-letters/{dead_letter_id}/replay")}

PATH_VALUES = {
    "source_id": "clinic",
    "rtype": "Patient",
    "rid": "P-1",
    "vid": "1",
    "service_id": "pinpoint-patient-view",
    "dead_letter_id": "1",
}


async def test_every_write_route_has_the_limit(small_app: Any, small: httpx.AsyncClient) -> None:
    paths = small_app.openapi()["paths"]
    writes = [
        (method.upper(), path)
        for path, ops in paths.items()
        for method in ops
        if method in ("post", "put", "patch", "delete")
    ]
    assert len(writes) > 10
    raw = _big(2 * LIMIT)
    for method, path in writes:
        if (method, path) in NO_BODY:
            continue
        url = path.format(**PATH_VALUES)
        r = await small.request(method, url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 413, (method, path, r.status_code, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("dead_letter_id", [2**31, 2**63 - 1, 2**63, 2**64 + 5, 0, -1])
async def test_replay_of_an_id_out_of_range_is_4xx(client: httpx.AsyncClient, dead_letter_id: int) -> None:
    r = await client.post(f"/admin/dead-letters/{dead_letter_id}/replay")
    assert r.status_code in (400, 404), r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_replay_function_refuses_an_id_out_of_range(engine: Engine, settings: Settings) -> None:
    from services.ingest.deadletters.replay import replay
    from shared.errors import NotFound

    for dead_letter_id in (2**31, 2**63):  # beyond PostgreSQL's INTEGER column
        with pytest.raises(NotFound):
            replay(engine, settings, dead_letter_id, {})
