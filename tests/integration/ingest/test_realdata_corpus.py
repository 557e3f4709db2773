"""Every file of ../shared/realdata (when present): pushed or imported, no 5xx, no crash; pain
scores kept under their source ids; Encounters and body-weight Observations dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.engine import Engine

from services.ingest.bulk import import_paths
from shared.settings import Source
from tests.api.ingest.helpers import FHIR, stored
from tests.conftest import shared_corpus

pytestmark = pytest.mark.corpus
PAIN = {"72514-3", "38208-5"}


def _resources(data: dict[str, Any]) -> list[dict[str, Any]]:
    if data.get("resourceType") != "Bundle":
        return [data]
    out = []
    for e in data.get("entry") or []:
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            out.extend(_resources(e["resource"]))
    return out


def _codes(r: dict[str, Any]) -> set[Any]:
    code = r.get("code")
    return {c.get("code") for c in code.get("coding") or []} if isinstance(code, dict) else set()


def _is_pain(r: dict[str, Any]) -> bool:
    return r.get("resourceType") == "Observation" and bool(_codes(r) & PAIN)


async def test_realdata_corpus(client: httpx.AsyncClient, engine: Engine) -> None:
    root: Path = shared_corpus("realdata")
    expected_pain: set[str] = set()
    for path in sorted(root.rglob("*.json")):
        raw = path.read_bytes()
        r = await client.post("/fhir", content=raw, headers=FHIR)
        assert r.status_code < 500, f"{path.name}: {r.status_code}"
        assert r.status_code in (200, 201), f"{path.name}: {r.text[:300]}"
        if (
            r.status_code == 200
            and r.content
            and r.json().get("type") in ("batch-response", "transaction-response")
        ):
            for res in _resources(orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))):
                if _is_pain(res) and res.get("id"):
                    expected_pain.add(res["id"])
    report = import_paths(engine, Source(id="default"), [root / "bulk-ndjson"])
    assert report.resources > 10_000
    for path in (root / "bulk-ndjson").rglob("*.ndjson"):
        for line in path.read_bytes().splitlines():
            res = orjson.loads(line)
            if _is_pain(res):
                expected_pain.add(res["id"])
    rows = stored(engine)
    kept_obs = {rid for (rtype, rid) in rows if rtype == "Observation"}
    assert expected_pain and expected_pain <= kept_obs
    assert not any(rtype == "Encounter" for rtype, _ in rows)
    for (rtype, _), row in rows.items():
        if rtype == "Observation" and row.raw:
            assert "29463-7" not in _codes(row.raw)  # body weight
        if rtype == "Procedure" and row.raw:
            assert not _codes(row.raw) & {"18286008", "18946005"}  # cardiac ablation, labour epidural
        assert row.source == "default"
