"""``/`` and ``/patients`` (the worklist) and ``/patients.csv`` over vignettes judged by the
worker, on both backends: names, plain words, attention order, every filter, search, keyset
paging, CSV, evidence links, bad input as OperationOutcome."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy.engine import Engine

from services.recommender.worklist import api as worklist_api
from shared.settings import Settings
from tests.api.recommender.helpers import VIGNETTES, push, run_worker, vignette_now

# vignette → the patient id it is loaded as (most vignettes call their patient P-001)
LOADED = {
    "v02-two-concordant-blocks": "W-SUPPORTED",
    "v01-one-block-only": "W-ONE-BLOCK",
    "v05-sedation-confirmatory-block": "W-SEDATED",
    "v14-missing-baseline": "W-NO-BASELINE",
    "v25-knee-steroid-frequency": "W-KNEE",
}


def _as(name: str, pid: str) -> bytes:
    """The vignette's bundle with its patient called ``pid`` and every other resource id
    prefixed with it (vignettes share ids such as ``mbb-1``: loaded as they are, each would
    take the previous patient's procedures over)."""
    data = json.loads((VIGNETTES / name / "bundle.json").read_text())
    renamed: dict[str, str] = {}
    for entry in data["entry"]:
        r = entry["resource"]
        new = pid if r["resourceType"] == "Patient" else f"{pid}-{r['id']}"
        renamed[f"{r['resourceType']}/{r['id']}"] = f"{r['resourceType']}/{new}"
        r["id"] = new

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (renamed.get(v, v) if k == "reference" else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return json.dumps(walk(data)).encode()


@pytest.fixture
async def loaded(client: httpx.AsyncClient, engine: Engine, settings: Settings) -> httpx.AsyncClient:
    for name, pid in LOADED.items():
        await push(client, _as(name, pid))
        run_worker(engine, settings, vignette_now(name))
    return client


class _Rows(HTMLParser):
    """The worklist's rows as the reader sees them: the patient link and each cell's text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.links: dict[str, str] = {}
        self._cell: list[str] | None = None
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "entry" in (a.get("class") or ""):
            self.rows.append({"cells": [], "href": None})
        elif tag == "td" and self.rows:
            self._cell = []
        elif tag == "a":
            self._href = a.get("href")
            if self._cell is not None and self.rows[-1]["href"] is None:
                self.rows[-1]["href"] = self._href

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append(" ".join(" ".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._href and data.strip():
            self.links[data.strip()] = self._href
            self._href = None


async def _page(client: httpx.AsyncClient, url: str = "/patients", **params: str) -> _Rows:
    r = await client.get(url, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text  # no external asset or link
    parsed = _Rows()
    parsed.feed(r.text)
    return parsed


async def test_rows_in_plain_words_in_attention_order_with_names_and_evidence_links(
    loaded: httpx.AsyncClient,
) -> None:
    page = await _page(loaded)
    by_id = {row["cells"][0].split()[-1]: row for row in page.rows}
    assert set(by_id) == set(LOADED.values())
    supported = by_id["W-SUPPORTED"]["cells"]
    assert supported[0] == "Base-L Testpatient W-SUPPORTED"  # the Patient resource's name
    assert supported[1] == "Facet radiofrequency ablation — right lumbar L4-L5, L5-S1"
    assert supported[2].startswith("criteria met")
    assert supported[3] == "Next step: Lumbar facet radiofrequency ablation, first joint"
    one_block = by_id["W-ONE-BLOCK"]["cells"]
    assert one_block[2].startswith("criteria not met")
    assert one_block[3] == "A second positive confirmatory block at the same joints is required"
    assert by_id["W-SEDATED"]["cells"][5] != "none"  # the sedation alert, in words
    assert "sedation" in by_id["W-SEDATED"]["cells"][5]
    # what needs attention first: alerts and reviews, then ready, …, criteria not met last
    order = [row["cells"][0].split()[-1] for row in page.rows]
    assert order.index("W-SUPPORTED") < order.index("W-ONE-BLOCK")
    assert order[0] in ("W-SEDATED", "W-KNEE")  # both carry an alert
    for row in page.rows:
        assert row["href"].endswith("/evidence")
        evidence = await loaded.get(row["href"])
        assert evidence.status_code == 200
        assert "None" not in " ".join(row["cells"])


async def test_filters_and_search(loaded: httpx.AsyncClient) -> None:
    async def ids(**params: str) -> set[str]:
        return {row["cells"][0].split()[-1] for row in (await _page(loaded, **params)).rows}

    everyone = await ids()
    assert await ids(pathway="knee-steroid") == {"W-KNEE"}
    assert await ids(verdict="supported") == {"W-SUPPORTED"}
    assert await ids(alert="sedation") == {"W-SEDATED"}
    assert "W-SEDATED" in await ids(alert="any") and "W-SUPPORTED" not in await ids(alert="any")
    assert await ids(source="default") == everyone and await ids(source="elsewhere") == set()
    assert await ids(q="testpat") >= {"W-SUPPORTED"}  # part of a name, any case
    assert await ids(q="w-knee") == {"W-KNEE"}  # the id
    assert await ids(pathway="facet-rfa", verdict="supported", q="base-l") == {"W-SUPPORTED"}
    dated = await ids(due_by="2100-01-01")
    assert dated and dated < everyone  # only assessments with an earliest date
    assert await ids(due_by="1990-01-01") == set()
    empty = await loaded.get("/patients", params={"verdict": "not-covered"})
    assert "No assessment matches these filters." in empty.text


async def test_keyset_paging_visits_every_row_once_in_order(
    loaded: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = [row["cells"][0] for row in (await _page(loaded)).rows]
    monkeypatch.setattr(worklist_api, "PAGE_SIZE", 2)
    seen: list[str] = []
    url, params = "/patients", {}
    for _ in range(10):
        r = await loaded.get(url, params=params)
        parsed = _Rows()
        parsed.feed(r.text)
        assert len(parsed.rows) <= 2
        seen += [row["cells"][0] for row in parsed.rows]
        nxt = re.search(r'href="([^"]+)" rel="next"', r.text)
        if not nxt:
            break
        split = urlsplit(nxt.group(1).replace("&amp;", "&"))
        url, params = split.path, {k: v[0] for k, v in parse_qs(split.query).items()}
    assert seen == whole and len(seen) == len(LOADED)
    # paging keeps the filters
    r = await loaded.get("/patients", params={"pathway": "facet-rfa"})
    nxt = re.search(r'href="([^"]+)" rel="next"', r.text)
    assert nxt and "pathway=facet-rfa" in nxt.group(1)


async def test_csv_export_has_the_filtered_rows(loaded: httpx.AsyncClient) -> None:
    r = await loaded.get("/patients.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["patient"] for row in rows} == set(LOADED.values())
    supported = next(row for row in rows if row["patient"] == "W-SUPPORTED")
    assert supported["name"] == "Base-L Testpatient"
    assert supported["verdict"] == "criteria met"
    assert supported["evidence"] == "/patients/W-SUPPORTED/evidence"
    knee = await loaded.get("/patients.csv", params={"pathway": "knee-steroid"})
    assert [row["patient"] for row in csv.DictReader(io.StringIO(knee.text))] == ["W-KNEE"]


async def test_bad_filters_are_operation_outcomes(loaded: httpx.AsyncClient) -> None:
    for params in ({"due_by": "next week"}, {"after": "nonsense"}):
        r = await loaded.get("/patients", params=params)
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"


async def test_empty_worklist_says_what_to_do(client: httpx.AsyncClient) -> None:
    r = await client.get("/patients")
    assert r.status_code == 200
    assert "No patient has been judged yet" in r.text


async def test_landing_page_links_where_to_go(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    hrefs = set(re.findall(r'href="([^"#]+)"', r.text))
    assert {"/patients", "/docs", "/readyz"} <= hrefs
    for href in hrefs:  # no dead link: every one answers
        assert (await client.get(href)).status_code == 200, href


async def test_reevaluation_updates_the_row(
    loaded: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    """A Patient resource that changes name is shown once the worker has judged the patient again."""
    bundle = json.loads(_as("v01-one-block-only", "W-ONE-BLOCK"))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["name"] = [{"family": "Renamed", "given": ["Now"]}]
    await push(loaded, {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": patient}]})
    run_worker(engine, settings, vignette_now("v01-one-block-only"))
    page = await _page(loaded, q="renamed")
    assert [row["cells"][0] for row in page.rows] == ["Now Renamed W-ONE-BLOCK"]
