"""``pinpoint outcomes`` over the store (issue 19; both backends): two ablations and an ESI
imported, summarised per pathway in text, JSON and CSV."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.conftest import FIXTURES

runner = CliRunner()
VIGNETTES = FIXTURES / "vignettes"


@pytest.fixture(autouse=True)
def _db_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_DATABASE_URL", db_url)


def test_outcomes_per_pathway(engine: object) -> None:
    # f05 last: both cases name an Observation "odi-baseline" (one id per source: the later wins)
    for case in ("f03-esi-repeat-carried-by-function", "f05-outcomes-relief-duration-censoring"):
        result = runner.invoke(app, ["import", str(VIGNETTES / case / "bundle.json")])
        assert result.exit_code == 0, result.output
    out = runner.invoke(app, ["outcomes", "--format", "json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    by = {p["pathway"]: p for p in summary["pathways"]}
    rfa, esi = by["facet-rfa"], by["esi"]
    assert rfa["procedures"] == 2 and esi["procedures"] == 1
    # rfa-2 followed criteria met (the first ablation's 6 months of relief); rfa-1 had no blocks
    assert rfa["criteriaMetBefore"] == {"n": 1, "share": 1.0}
    assert rfa["relief3Months"] == {"n": 2, "share": 1.0}
    assert rfa["medianReliefDays"] == 182  # rfa-1 lost relief after 182 days; rfa-2 censored at 91
    assert rfa["function"] == [
        {"instrument": "odi", "n": 1, "medianChange3Months": 18.0, "shareReachingMcid": 1.0}
    ]
    assert esi["relief3Months"] == {"n": 1, "share": 0.0}  # 28.6 % at 3 months

    text = runner.invoke(app, ["outcomes", "--since", "2024-06-01"])
    assert text.exit_code == 0 and "Facet radiofrequency ablation: 1 procedure" in text.stdout
    csv_out = runner.invoke(app, ["outcomes", "--format", "csv"])
    assert csv_out.stdout.splitlines()[0].startswith("pathway,procedures,criteria_met_before")
    bad = runner.invoke(app, ["outcomes", "--since", "yesterday"])
    assert bad.exit_code != 0 and "--since" in bad.output
