"""Policy what-if over the stored patients (both backends): the matrix of verdict changes per
pathway and the assessments that change — ``run_whatif``, ``pinpoint whatif`` in every format
with a built-in or a custom policy file, and ``GET /whatif``."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from services.cli import app as cli
from services.recommender.assessor import Assessor
from services.recommender.whatif import run_whatif
from shared.settings import Settings
from tests.api.recommender.helpers import push, run_worker, vignette_now
from tests.api.worklist.test_worklist import _as

NOW = "2025-03-10T08:00:00-05:00"
LOADED = {
    "v01-one-block-only": "Q-ONE",
    "v02-two-concordant-blocks": "Q-TWO",
    "v25-knee-steroid-frequency": "Q-KNEE",
}


@pytest.fixture
async def loaded(client: httpx.AsyncClient, engine: Engine, settings: Settings) -> httpx.AsyncClient:
    for name, pid in LOADED.items():
        await push(client, _as(name, pid))
        run_worker(engine, settings, vignette_now(name))
    return client


@pytest.fixture
def env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_DATABASE_URL", db_url)


async def test_one_block_is_enough_under_the_consensus_policy(
    loaded: httpx.AsyncClient, engine: Engine
) -> None:
    result = run_whatif(
        engine, Assessor.load("cms-lcd"), Assessor.load("consensus-2020"), datetime.fromisoformat(NOW)
    )
    assert result.patients == 3
    facet = result.matrix["facet-rfa"]
    assert facet[("not-met", "supported")] == 1  # Q-ONE: one positive block
    assert facet[("supported", "supported")] == 1  # Q-TWO: met either way
    [change] = [c for c in result.changes if c.pathway == "facet-rfa"]
    assert (change.patient_key, change.before, change.after) == ("default:Q-ONE", "not-met", "supported")
    assert change.evidence_href == "/patients/Q-ONE/evidence"
    assert sum(result.matrix["knee-steroid"].values()) >= 1
    same = run_whatif(engine, Assessor.load("cms-lcd"), Assessor.load("cms-lcd"), datetime.fromisoformat(NOW))
    assert same.changes == [] and all(b == a for m in same.matrix.values() for (b, a) in m)


@pytest.mark.usefixtures("env")
async def test_command_in_every_format_and_with_a_policy_file(
    loaded: httpx.AsyncClient, tmp_path: Path
) -> None:
    runner = CliRunner()
    text = runner.invoke(cli, ["whatif", "--policy", "consensus-2020", "--now", NOW])
    assert text.exit_code == 0, text.output
    assert "Facet radiofrequency ablation: 2 assessments, 1 change" in text.output
    assert "criteria not met → criteria met" in text.output
    assert "/patients/Q-ONE/evidence" in text.output
    as_json = json.loads(
        runner.invoke(cli, ["whatif", "--policy", "consensus-2020", "--now", NOW, "--format", "json"]).output
    )
    assert as_json["baseline"]["id"] == "cms-lcd" and as_json["candidate"]["id"] == "consensus-2020"
    assert [c["patient"] for c in as_json["changes"] if c["pathway"] == "facet-rfa"] == ["default:Q-ONE"]
    as_csv = runner.invoke(
        cli, ["whatif", "--policy", "consensus-2020", "--now", NOW, "--format", "csv"]
    ).output
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert any(r["patient"] == "default:Q-ONE" and r["candidate verdict"] == "supported" for r in rows)
    # a custom file: the cms-lcd rules but one block at 80 % is enough
    custom = tmp_path / "one-block.yaml"
    custom.write_text(
        'id: one-block\nversion: "1"\nextends: cms-lcd\n'
        "sources:\n  - {id: pain-committee-2026, title: Pain committee decision on single blocks,"
        " publisher: Example Hospital, url: 'https://hospital.example/policies/1', date: '2026-01-15'}\n"
        "pathways:\n  facet-rfa:\n    blocks_required: 1\n    cite: {blocks_required: pain-committee-2026}\n"
    )
    mine = runner.invoke(cli, ["whatif", "--policy", str(custom), "--now", NOW, "--format", "json"])
    assert mine.exit_code == 0, mine.output
    assert json.loads(mine.output)["candidate"] == {"id": "one-block", "version": "1"}
    # baseline explicit, refusals
    assert (
        runner.invoke(cli, ["whatif", "--policy", "cms-lcd", "--baseline", "cms-lcd", "--now", NOW]).exit_code
        == 0
    )
    assert runner.invoke(cli, ["whatif", "--policy", "no-such-policy"]).exit_code == 2
    assert runner.invoke(cli, ["whatif", "--policy", "cms-lcd", "--format", "xml"]).exit_code == 2


async def test_page(loaded: httpx.AsyncClient) -> None:
    form = await loaded.get("/whatif")
    assert form.status_code == 200 and "Compare" in form.text and "<table" not in form.text
    page = await loaded.get("/whatif", params={"policy": "consensus-2020", "baseline": "cms-lcd"})
    assert page.status_code == 200
    assert "Facet radiofrequency ablation" in page.text
    assert 'href="/patients/Q-ONE/evidence"' in page.text
    bad = await loaded.get("/whatif", params={"policy": "/etc/passwd"})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
