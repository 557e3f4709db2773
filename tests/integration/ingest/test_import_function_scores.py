"""Issue 19: ``pinpoint import`` keeps functional QuestionnaireResponses and Observations (both
backends) and drops other questionnaires."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from services.cli import app
from tests.api.ingest.helpers import dirty, stored
from tests.conftest import FIXTURES

runner = CliRunner()


@pytest.fixture(autouse=True)
def _db_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_DATABASE_URL", db_url)


def test_import_ndjson_of_questionnaire_responses(engine: Engine, tmp_path: Path) -> None:
    odi = json.loads((FIXTURES / "function" / "pacio-odi-example2.json").read_text())
    ndi = json.loads((FIXTURES / "function" / "pacio-ndi-example1.json").read_text())
    phq = {**odi, "id": "phq9", "questionnaire": "http://example.org/Questionnaire/PHQ9Questionnaire",
           "item": [{"linkId": "phq9-1", "answer": [{"valueInteger": 1}]}]}  # fmt: skip
    path = tmp_path / "QuestionnaireResponse.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in (odi, ndi, phq)) + "\n")
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 0, result.output
    assert "QuestionnaireResponse" in result.output
    kept = {rid for (rtype, rid) in stored(engine) if rtype == "QuestionnaireResponse"}
    assert kept == {"OswestryDisabilityIndexExample2", "NeckDisabilityIndexExample1"}
    assert dirty(engine) == ["default:patient-john-doe-01"]


def test_import_real_synthea_peg_panel(engine: Engine) -> None:
    result = runner.invoke(app, ["import", str(FIXTURES / "function" / "synthea-peg-wynona.json")])
    assert result.exit_code == 0, result.output
    assert ("Observation", "ac540c03-e4f7-47f2-273c-a756384fe28a") in stored(engine)
