"""The feedback loop across replicas: cards and feedback counted per pathway × policy version ×
verdict from the database — ``GET /feedback``, ``pinpoint feedback report`` and the override
ratio on /metrics agree, and a second replica that received nothing reports the same figures."""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from services.cli import app as cli
from services.server import Role, build_app
from tests.api.cds.conftest import CdsApp

PV = "/cds-services/pinpoint-patient-view"
PATIENT = {
    "patient": "Patient/p9",
    "assessments": [
        {
            "pathway": "facet-rfa",
            "target": {"region": "lumbar", "joints": ["L4-L5"], "side": "right"},
            "verdict": "not-met",
            "reasons": ["second-block-required"],
            "earliestDate": None,
            "evidence": [],
        }
    ],
    "orderChecks": [],
    "alerts": [{"code": "steroid-frequency", "severity": "warning", "text": "t"}],
}


async def _cards(cds: CdsApp) -> dict[str, str]:
    cds.assessor.patients = [PATIENT]
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/u", "patientId": "p9"},
        "prefetch": {"patient": None},
    }
    cards = (await cds.client.post(PV, json=body)).json()["cards"]
    assert len(cards) == 2
    return {("alert" if "steroid" in c["summary"].lower() else "rfa"): c["uuid"] for c in cards}


def _metric(text: str, name: str) -> float | None:
    line = next((ln for ln in text.splitlines() if ln.startswith(name)), None)
    return float(line.rsplit(" ", 1)[1]) if line else None


async def test_report_page_cli_and_metric_agree_across_replicas(
    cds: CdsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await _cards(cds), await _cards(cds)
    overridden = {
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": "patient-declined", "display": "Patient declined"}},
    }
    items: list[dict[str, Any]] = [
        {"card": first["rfa"], "outcome": "accepted", "acceptedSuggestions": [{"id": str(uuid.uuid4())}]},
        {"card": second["rfa"], **overridden},
        {"card": first["alert"], **overridden},
    ]
    for item in items:
        item["outcomeTimestamp"] = "2025-03-10T13:00:00Z"
        r = await cds.client.post(f"{PV}/feedback", json={"feedback": [item]})
        assert r.status_code == 200

    # the command, over the database
    monkeypatch.setenv("PINPOINT_DATABASE_URL", cds.engine.url.render_as_string(hide_password=False))
    out = CliRunner().invoke(cli, ["feedback", "report", "--format", "json"])
    assert out.exit_code == 0, out.output
    lines = {(x["pathway"], x["verdict"]): x for x in json.loads(out.output)}
    rfa = lines[("facet-rfa", "not-met")]
    assert (rfa["policy"], rfa["policyVersion"]) == (cds.settings.policy, "test")
    assert (rfa["shown"], rfa["accepted"], rfa["overridden"]) == (2, 1, 1)
    assert rfa["overrideRatio"] == 0.5
    assert rfa["overrideReasons"] == [{"reason": "Patient declined", "count": 1}]
    alert = next(x for (p, _), x in lines.items() if p == "alert:steroid-frequency")
    assert (alert["shown"], alert["accepted"], alert["overridden"]) == (2, 0, 1)
    as_csv = CliRunner().invoke(cli, ["feedback", "report", "--format", "csv"])
    assert len(list(csv.DictReader(io.StringIO(as_csv.output)))) == len(lines)
    text = CliRunner().invoke(cli, ["feedback", "report"])
    assert "Facet radiofrequency ablation" in text.output and "50 %" in text.output

    # the page
    page = await cds.client.get("/feedback")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Facet radiofrequency ablation" in page.text and "Patient declined (1)" in page.text
    assert "4 cards shown, 1 accepted, 2 overridden" in page.text

    # another replica on the same database: it received no feedback, it reports the same ratio
    replica = build_app(cds.settings, Role.recommender, cds.engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=replica), base_url="http://r2") as r2:
        metrics = (await r2.get("/metrics")).text
        assert _metric(metrics, 'pinpoint_cds_override_ratio{pathway="facet-rfa"}') == 0.5
        assert _metric(metrics, 'pinpoint_cds_override_ratio{pathway="alert:steroid-frequency"}') == 1.0
        assert (await r2.get("/feedback")).text.count("Patient declined") >= 1
    for hook in replica.state.runtime.on_shutdown:
        await hook()


async def test_empty_report(cds: CdsApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_DATABASE_URL", cds.engine.url.render_as_string(hide_password=False))
    out = CliRunner().invoke(cli, ["feedback", "report"])
    assert out.exit_code == 0 and "no cards shown and no feedback received yet" in out.output
    assert "No card has been shown" in (await cds.client.get("/feedback")).text
    assert CliRunner().invoke(cli, ["feedback", "report", "--format", "xml"]).exit_code == 2
