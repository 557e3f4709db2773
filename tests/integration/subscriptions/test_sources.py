"""``shared.fhir.sources``: a configured source becomes a FhirClient with its outbound credential."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.errors import ConfigError
from shared.fhir.sources import SourceClients, client_for, source_http_client
from shared.settings import Source
from tests.conftest import shared_path
from tests.fakes.fhir_server import FakeFhirServer, FakeSmartAuth, LiveServer, serve_in_thread


def vector(name: str) -> str:
    return Path(shared_path("vectors", name)).read_text()


@pytest.fixture
def secured() -> FakeFhirServer:
    return FakeFhirServer(
        auth=FakeSmartAuth(clients={"pinpoint-es": json.loads(vector("smart-jwks-ES384-public.json"))})
    )


@pytest.fixture
def live(secured: FakeFhirServer) -> Iterator[LiveServer]:
    with serve_in_thread(secured) as running:
        yield running


def smart_source(live: LiveServer) -> Source:
    return Source.model_validate(
        {
            "id": "hosp",
            "fhir_base_url": live.base_url,
            "outbound": {
                "smart": {
                    "client_id": "pinpoint-es",
                    "token_url": live.token_url,
                    "private_key": vector("smart-jwks-ES384-private-EXAMPLE-ONLY.json"),
                    "alg": "ES384",
                    "scopes": "system/*.rs",
                }
            },
        }
    )


async def test_a_smart_source_reads_with_one_cached_token(secured: FakeFhirServer, live: LiveServer) -> None:
    secured.put({"resourceType": "Patient", "id": "p1"})
    clients = SourceClients()
    try:
        fhir = clients.get(smart_source(live))
        assert clients.get(smart_source(live)) is fhir
        assert (await fhir.read("Patient", "p1"))["id"] == "p1"
        assert (await fhir.read("Patient", "p1"))["id"] == "p1"
    finally:
        await clients.aclose()
    assert secured.tokens_issued == 1
    reads = secured.requests_to("GET", "Patient/p1")
    assert len(reads) == 2 and all(r.headers["authorization"].startswith("Bearer ") for r in reads)


async def test_a_bearer_source_sends_its_token() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p"})

    source = Source.model_validate(
        {"id": "b", "fhir_base_url": "https://fhir.example/R4", "outbound": {"bearer": "s3cret"}}
    )
    async with source_http_client(transport=httpx.MockTransport(handler)) as http:
        await client_for(source, http).read("Patient", "p")
    assert seen == ["Bearer s3cret"]


def test_a_source_without_a_base_url_has_no_client() -> None:
    with pytest.raises(ConfigError, match="no fhir_base_url"):
        client_for(Source(id="x"), httpx.AsyncClient())
