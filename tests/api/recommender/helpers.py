"""Shared helpers for the recommender tests: pushing vignettes, running the worker, validation."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from functools import cache
from typing import Any

import httpx
import jsonschema
from sqlalchemy.engine import Engine

from services.recommender.assessor import Assessor
from services.recommender.worker import DrainStats, Worker
from shared.fhir.resources import SCHEMA_FILE, validate_r4
from shared.settings import Settings
from tests.conftest import FIXTURES

FHIR = {"content-type": "application/fhir+json"}
VIGNETTES = FIXTURES / "vignettes"

# Required bindings the R4 JSON schema does not enumerate (it types codes as strings only).
CODES = {
    ("CarePlan", "status"): {
        "draft",
        "active",
        "on-hold",
        "revoked",
        "completed",
        "entered-in-error",
        "unknown",
    },
    ("CarePlan", "intent"): {"proposal", "plan", "order", "option"},
    ("ServiceRequest", "status"): {
        "draft",
        "active",
        "on-hold",
        "revoked",
        "completed",
        "entered-in-error",
        "unknown",
    },
    ("ServiceRequest", "intent"): {
        "proposal",
        "plan",
        "directive",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    },
    ("DetectedIssue", "status"): {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    },
    ("DetectedIssue", "severity"): {"high", "moderate", "low"},
}


def bundle(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VIGNETTES / name / "bundle.json").read_text())
    return data


def vignette_now(name: str) -> datetime:
    return datetime.fromisoformat(json.loads((VIGNETTES / name / "expected.json").read_text())["now"])


def batch(*resources: dict[str, Any]) -> bytes:
    return json.dumps(
        {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": r} for r in resources]}
    ).encode()


async def push(
    client: httpx.AsyncClient, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await client.post("/fhir", content=content, headers={**FHIR, **(headers or {})})
    assert r.status_code == 200, r.text


def run_worker(engine: Engine, settings: Settings, now: datetime) -> DrainStats:
    return Worker(engine, settings, Assessor.load("cms-lcd")).drain(now=now)


async def search(client: httpx.AsyncClient, rtype: str, patient: str = "P-001") -> list[dict[str, Any]]:
    r = await client.get(f"/suggestions/fhir/{rtype}", params={"patient": patient})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return [e["resource"] for e in body["entry"]]


@cache
def _schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return data


def assert_valid_r4(resource: dict[str, Any]) -> None:
    """Pinpoint's R4 validator, the official R4 JSON schema read by Python ``jsonschema`` (an
    independent reader), and the required code bindings."""
    validate_r4(resource)
    rtype = resource["resourceType"]
    schema = {"$ref": f"#/definitions/{rtype}", "definitions": _schema()["definitions"]}
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}"
        for e in jsonschema.Draft6Validator(schema).iter_errors(resource)
    ]
    assert errors == [], errors
    for (t, element), allowed in CODES.items():
        if t == rtype and element in resource:
            assert resource[element] in allowed, (rtype, element, resource[element])


def stable(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource with its write instants replaced (they are checked to be timestamps)."""
    out = copy.deepcopy(resource)
    if "meta" in out:
        datetime.fromisoformat(out["meta"]["lastUpdated"])
        out["meta"]["lastUpdated"] = "<instant>"
    if "recorded" in out:
        datetime.fromisoformat(out["recorded"])
        out["recorded"] = "<instant>"
    return out
