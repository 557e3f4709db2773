"""Hostile payloads into every write path (issue 18, hostile-input suite).

hypothesis draws a resource (Patient, Procedure, Observation), a field and a hostile value of one
kind — a NUL character, a lone surrogate, a huge string, deep nesting, a wrong JSON type, an
invalid date — and the payload goes through a push (POST and PUT), a transaction, a
notification, an import and a CDS call. Asserted on SQLite and PostgreSQL: no 5xx, every error an
OperationOutcome, every refused payload kept as a dead letter (CDS calls are answers, not kept
payloads: no dead letter there). Derandomized: the same payloads every run.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from services.ingest.bulk import import_paths
from shared.settings import Source

#: Payloads per (write path, kind of value, backend).
EXAMPLES = 6
FHIR = {"content-type": "application/fhir+json"}
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
DEEP = "__deep_nesting__"


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "P-1",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-1"}],
        "name": [{"family": "Doe", "given": ["Jan"]}],
        "birthDate": "1961-04-12",
        "address": [{"line": ["1 Main Street"], "city": "Springfield"}],
    }


def _procedure() -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": "proc-1",
        "status": "completed",
        "code": {"coding": [{"system": CPT, "code": "64493", "display": "Facet block"}]},
        "subject": {"reference": "Patient/P-1"},
        "performedDateTime": "2025-02-03T09:20:00-05:00",
        "bodySite": [{"text": "lumbar facet"}],
        "note": [{"text": "tolerated well"}],
    }


def _observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72514-3", "display": "Pain severity"}]},
        "subject": {"reference": "Patient/P-1"},
        "effectiveDateTime": "2025-02-03T09:00:00-05:00",
        "valueInteger": 7,
    }


BUILDERS = {"Patient": _patient, "Procedure": _procedure, "Observation": _observation}
TEXT_FIELDS = {
    "Patient": [("id",), ("name", 0, "family"), ("address", 0, "line", 0), ("identifier", 0, "value")],
    "Procedure": [("id",), ("status",), ("code", "coding", 0, "code"), ("code", "coding", 0, "display"),
                  ("subject", "reference"), ("note", 0, "text"), ("bodySite", 0, "text")],
    "Observation": [("id",), ("status",), ("code", "coding", 0, "display"), ("subject", "reference"),
                    ("valueInteger",)],
}  # fmt: skip
DATE_FIELDS = {
    "Patient": [("birthDate",)],
    "Procedure": [("performedDateTime",)],
    "Observation": [("effectiveDateTime",)],
}
INVALID_DATES = [
    "2025-13-01", "2025-02-30", "2025-02-03T25:61:00Z", "0000-00-00", "99999-01-01", "2025-02-03T09:20:00",
    "2025-02-03T09:20:00+99:00", "yesterday", "", "2025-2-3", "1e400", "2025-02-03T09:20:00.1234567890123Z",
]  # fmt: skip

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "nul": st.text(max_size=20).map(lambda t: t[: len(t) // 2] + "\x00" + t[len(t) // 2 :]),
    "surrogate": st.tuples(st.text(max_size=8), st.sampled_from(["\ud800", "\udfff", "\udc00\ud800"])).map(
        "".join
    ),
    "huge": st.integers(min_value=100_000, max_value=1_500_000).map(lambda n: "Z" * n),
    "deep": st.integers(min_value=100, max_value=4000),
    "wrong-type": st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    ),
    "invalid-date": st.sampled_from(INVALID_DATES),
}


def _put(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = resource
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _encode(document: Any, deep: int | None, ascii_only: bool) -> bytes:
    """JSON bytes; lone surrogates either escaped (``\\ud800``) or as raw, ill-formed UTF-8."""
    text = json.dumps(document, ensure_ascii=ascii_only)
    if deep is not None:
        text = text.replace(json.dumps(DEEP), '{"a": ' * deep + "[" * deep + "1" + "]" * deep + "}" * deep)
    return text.encode("utf-8", "surrogatepass")


def _payloads(kind: str, exclude_id: bool = False) -> list[tuple[str, dict[str, Any], int | None, bool]]:
    """(resource type, resource, nesting depth, ASCII-only encoding), drawn deterministically."""
    out: list[tuple[str, dict[str, Any], int | None, bool]] = []

    @st.composite
    def payload(draw: st.DrawFn) -> tuple[str, dict[str, Any], int | None, bool]:
        rtype = draw(st.sampled_from(sorted(BUILDERS)))
        resource = BUILDERS[rtype]()
        fields = DATE_FIELDS[rtype] if kind == "invalid-date" else TEXT_FIELDS[rtype]
        fields = [f for f in fields if not (exclude_id and f == ("id",))]
        path = draw(st.sampled_from(fields))
        value = draw(VALUES[kind])
        deep = None
        if kind == "deep":
            deep, value = value, DEEP
        _put(resource, path, value)
        return rtype, resource, deep, draw(st.booleans())

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(payload())
    def draw(example: tuple[str, dict[str, Any], int | None, bool]) -> None:
        out.append(example)

    draw()
    return out


def kept_rejections(engine: Engine) -> int:
    """Rejections the dead-letter table accounts for (a repeated payload counts on its row)."""
    with engine.connect() as conn:
        return int(
            conn.execute(sa.text("SELECT COALESCE(SUM(occurrences), 0) FROM dead_letter")).scalar_one()
        )


def _assert_answer(r: httpx.Response, engine: Engine, before: int, keeps: bool = True) -> None:
    """Short failure messages (``pytrace=False``): a traceback over these payloads costs seconds."""
    if r.status_code >= 500:
        pytest.fail(f"{r.status_code}: {r.text[:300]}", pytrace=False)
    if r.status_code >= 400:
        if not r.headers["content-type"].startswith("application/fhir+json"):
            pytest.fail(f"{r.status_code} is not FHIR: {r.text[:200]}", pytrace=False)
        if r.json()["resourceType"] != "OperationOutcome":
            pytest.fail(f"{r.status_code} is not an OperationOutcome: {r.text[:200]}", pytrace=False)
        if keeps and kept_rejections(engine) <= before:
            pytest.fail(f"refused ({r.status_code}) but not kept: {r.text[:200]}", pytrace=False)


def _transaction(resource: dict[str, Any]) -> dict[str, Any]:
    entries = [_patient(), resource] if resource["resourceType"] != "Patient" else [resource]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r,
             "request": {"method": "POST", "url": r["resourceType"]}}
            for r in entries
        ],
    }  # fmt: skip


def _notification(resource: dict[str, Any]) -> dict[str, Any]:
    base = "https://fhir.hospital-a.example/R4"
    status_id = str(uuid.uuid4())
    status = {
        "resourceType": "SubscriptionStatus",
        "id": status_id,
        "status": "active",
        "type": "event-notification",
        "eventsSinceSubscriptionStart": "1",
        "subscription": {"reference": f"{base}/Subscription/sub-1"},
        "notificationEvent": [
            {"eventNumber": "1", "focus": {"reference": f"{base}/{resource['resourceType']}/x"}}
        ],
    }
    entries = [{"fullUrl": f"urn:uuid:{status_id}", "resource": status}]
    for r in ([_patient()] if resource["resourceType"] != "Patient" else []) + [resource]:
        entries.append({"fullUrl": f"{base}/{r['resourceType']}/{r.get('id')}", "resource": r})
    return {"resourceType": "Bundle", "type": "subscription-notification", "entry": entries}


def _cds_call(resource: dict[str, Any]) -> dict[str, Any]:
    searchset = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": resource}]}
    prefetch: dict[str, Any] = {"patient": _patient()}
    if resource["resourceType"] == "Patient":
        prefetch["patient"] = resource
    else:
        prefetch["procedures" if resource["resourceType"] == "Procedure" else "observations"] = searchset
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/u1", "patientId": "P-1"},
        "prefetch": prefetch,
    }


KINDS = list(VALUES)


@pytest.mark.parametrize("kind", KINDS)
async def test_push(client: httpx.AsyncClient, engine: Engine, kind: str) -> None:
    for rtype, resource, deep, ascii_only in _payloads(kind):
        before = kept_rejections(engine)
        r = await client.post(f"/fhir/{rtype}", content=_encode(resource, deep, ascii_only), headers=FHIR)
        _assert_answer(r, engine, before)


@pytest.mark.parametrize("kind", KINDS)
async def test_put(client: httpx.AsyncClient, engine: Engine, kind: str) -> None:
    for rtype, resource, deep, ascii_only in _payloads(kind, exclude_id=True):
        before = kept_rejections(engine)
        url = f"/fhir/{rtype}/{resource['id']}"
        r = await client.put(url, content=_encode(resource, deep, ascii_only), headers=FHIR)
        _assert_answer(r, engine, before)


@pytest.mark.parametrize("kind", KINDS)
async def test_transaction(client: httpx.AsyncClient, engine: Engine, kind: str) -> None:
    for _, resource, deep, ascii_only in _payloads(kind):
        before = kept_rejections(engine)
        r = await client.post(
            "/fhir", content=_encode(_transaction(resource), deep, ascii_only), headers=FHIR
        )
        _assert_answer(r, engine, before)


@pytest.mark.parametrize("kind", KINDS)
async def test_notification(client: httpx.AsyncClient, engine: Engine, kind: str) -> None:
    for _, resource, deep, ascii_only in _payloads(kind):
        before = kept_rejections(engine)
        r = await client.post(
            "/fhir", content=_encode(_notification(resource), deep, ascii_only), headers=FHIR
        )
        _assert_answer(r, engine, before)


@pytest.mark.parametrize("kind", KINDS)
def test_import(engine: Engine, kind: str, tmp_path: Path) -> None:
    for i, (_, resource, deep, ascii_only) in enumerate(_payloads(kind)):
        path = tmp_path / f"hostile-{i}.ndjson"
        path.write_bytes(
            _encode(_patient(), None, True) + b"\n" + _encode(resource, deep, ascii_only) + b"\n"
        )
        before = kept_rejections(engine)
        try:
            report = import_paths(engine, Source(id="default"), [path])
        except Exception as exc:
            pytest.fail(f"import raised {type(exc).__name__}", pytrace=False)
        rejected = report.tally.total("rejected")
        assert kept_rejections(engine) - before == rejected == report.dead_letters


@pytest.mark.parametrize("kind", KINDS)
async def test_cds_call(client: httpx.AsyncClient, engine: Engine, kind: str) -> None:
    for _, resource, deep, ascii_only in _payloads(kind):
        content = _encode(_cds_call(resource), deep, ascii_only)
        r = await client.post(
            "/cds-services/pinpoint-patient-view",
            content=content,
            headers={"content-type": "application/json"},
        )
        _assert_answer(r, engine, 0, keeps=False)
