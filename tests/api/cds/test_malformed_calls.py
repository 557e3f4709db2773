"""Malformed CDS calls are 4xx, never 500 (issue 18, finding 5): a ``fhirServer`` whose authority
is ambiguous is a 400 with no connection made; a validly signed JWT whose numeric claims are out
of range or not finite is a 401."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
import respx

from tests.api.cds.conftest import SOURCE_BASE, CdsApp
from tests.api.cds.test_data import call

PV = "/cds-services/pinpoint-patient-view"


@pytest.mark.parametrize(
    "server",
    [
        "http://user:pw@fhir.hospital-a.example/R4",
        "https://user@fhir.hospital-a.example/R4",
        "http://127.0.0.1:1\\@127.0.0.1:2/R4",
        "https://fhir.hospital-a.example\\R4",
        "https://fhir.hospital-a.example:99999/R4",
        "https://fhir.hospital-a.example:x/R4",
        "https://[fhir.hospital-a.example]/R4",
        "https://fhir.hospital-a.example/R4?x=1",
    ],
)
async def test_an_ambiguous_fhir_server_is_400_without_a_connection(cds: CdsApp, server: str) -> None:
    with respx.mock(assert_all_mocked=True) as mock:
        r = await cds.client.post(PV, json=call(server=server, token=True))
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    assert out["issue"][0]["expression"] == ["fhirServer"]
    assert mock.calls.call_count == 0


async def test_a_plain_fhir_server_is_still_accepted(cds: CdsApp) -> None:
    with respx.mock(assert_all_mocked=False) as mock:
        mock.route().mock(return_value=httpx.Response(503))
        r = await cds.client.post(PV, json=call(server=SOURCE_BASE, token=True))
    assert r.status_code in (200, 412), r.text


def _token_with(cds: CdsApp, claims: dict[str, Any]) -> str:
    """A token signed by the trusted key whose claims are written verbatim (NaN included)."""
    return cds.signer().token(PV, claims=claims)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": 1e20}, id="exp-1e20"),
        pytest.param({"exp": math.nan}, id="exp-nan"),
        pytest.param({"exp": math.inf}, id="exp-inf"),
        pytest.param({"iat": -1e20}, id="iat-minus-1e20"),
        pytest.param({"iat": math.nan}, id="iat-nan"),
        pytest.param({"exp": True}, id="exp-boolean"),
        pytest.param({"exp": 10**30}, id="exp-huge-int"),
        pytest.param({"jti": "a\u0000b"}, id="jti-nul"),
    ],
)
async def test_out_of_range_numeric_claims_are_401(cds_secured: CdsApp, claims: dict[str, Any]) -> None:
    es = cds_secured.signer()
    r = await es.post(PV, call(), _token_with(cds_secured, claims))
    assert r.status_code == 401, r.text
    out = r.json()
    assert out["resourceType"] == "OperationOutcome" and out["issue"][0]["code"] == "login"


async def test_feedback_holding_a_nul_is_400(cds: CdsApp) -> None:
    feedback = {
        "feedback": [
            {"card": "a\u0000b", "outcome": "overridden", "outcomeTimestamp": "2025-03-10T12:00:00Z"}
        ]
    }
    r = await cds.client.post(f"{PV}/feedback", json=feedback)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["$.feedback[0].card"]


@pytest.mark.parametrize(
    ("bundle", "where"),
    [
        pytest.param({"resourceType": "Bundle", "entry": 5}, "prefetch.conditions.entry", id="entry-number"),
        pytest.param({"resourceType": "Bundle", "entry": "x"}, "prefetch.conditions.entry", id="entry-text"),
        pytest.param({"resourceType": "Bundle", "link": 7}, "prefetch.conditions.link", id="link-number"),
    ],
)
async def test_a_prefetch_bundle_whose_entry_or_link_is_not_an_array_is_400(
    cds: CdsApp, bundle: dict[str, Any], where: str
) -> None:
    r = await cds.client.post(PV, json=call(prefetch={"conditions": bundle}))
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    assert out["issue"][0]["expression"] == [where]
    assert out["issue"][0]["code"] == "invalid"


async def test_a_prefetch_bundle_with_an_empty_or_null_entry_is_still_accepted(cds: CdsApp) -> None:
    prefetch = {
        "conditions": {"resourceType": "Bundle", "entry": []},
        "procedures": {"resourceType": "Bundle", "entry": None, "link": None},
    }
    r = await cds.client.post(PV, json=call(prefetch=prefetch))
    assert r.status_code == 200, r.text
