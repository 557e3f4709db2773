"""Every non-2xx is a FHIR OperationOutcome; rejected payloads are kept as dead letters."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from shared.db.models import DeadLetter

FHIR = {"content-type": "application/fhir+json"}


class Thing(BaseModel):
    name: str
    count: int


def assert_outcome(r: httpx.Response, status: int, code: str) -> dict:  # type: ignore[type-arg]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/fhir+json"
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code
    assert body["issue"][0]["severity"] == "error"
    return body  # type: ignore[no-any-return]


async def test_unknown_route_404(client: httpx.AsyncClient) -> None:
    assert_outcome(await client.get("/no/such/thing"), 404, "not-found")


async def test_wrong_method_405(client: httpx.AsyncClient) -> None:
    assert_outcome(await client.delete("/livez"), 405, "not-supported")


async def test_unsupported_media_415(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir", content=b"<Bundle/>", headers={"content-type": "application/xml"})
    assert_outcome(r, 415, "not-supported")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(b"{not json", "not valid JSON", id="not-json"),
        pytest.param(b'{"hello": "world"}', "not a FHIR resource", id="json-not-fhir"),
        pytest.param(b"[1, 2]", "not a FHIR resource", id="json-array"),
    ],
)
async def test_malformed_body_400_and_dead_letter(
    client: httpx.AsyncClient, engine: Engine, body: bytes, why: str
) -> None:
    r = await client.post("/fhir", content=body, headers=FHIR)
    out = assert_outcome(r, 400, "structure")
    assert why in out["issue"][0]["diagnostics"]
    with Session(engine) as s:
        letters = list(s.exec(select(DeadLetter)))
    assert len(letters) == 1
    assert letters[0].payload == body
    assert letters[0].source == "default"
    assert why in letters[0].reason


async def test_unexpected_error_is_generic_500(app: FastAPI, client: httpx.AsyncClient) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    r = await client.get("/boom")
    body = assert_outcome(r, 500, "exception")
    assert "secret internal detail" not in r.text
    assert "request id" in body["issue"][0]["diagnostics"]


async def test_invalid_body_lists_one_issue_per_problem_with_location(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    @app.post("/things")
    def things(thing: Thing) -> dict[str, str]:
        return {}

    r = await client.post("/things", json={"count": "many"})
    body = assert_outcome(r, 400, "invalid")
    locations = sorted(i["expression"][0] for i in body["issue"])
    assert locations == ["count", "name"]
