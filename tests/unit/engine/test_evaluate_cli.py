"""``pinpoint evaluate`` (CONTRACT §1): inputs, exit codes, formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from services.recommender.cli import evaluate_command
from tests.unit.fhirfactory import base_l, rfa_order, v2_pair

V02 = (
    Path(__file__).resolve().parents[2]
    / "fixtures"
    / "vignettes"
    / "v02-two-concordant-blocks"
    / "bundle.json"
)
NOW = "2025-03-10T08:00:00-05:00"


def app() -> typer.Typer:
    a = typer.Typer()
    a.command("evaluate")(evaluate_command)

    @a.command("noop")
    def _noop() -> None:
        pass

    return a


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app(), ["evaluate", *args])


def test_json_document_has_policy_and_patients() -> None:
    result = invoke(str(V02), "--now", NOW)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["policy"]["id"] == "cms-lcd" and doc["policy"]["version"]
    assert doc["evaluatedAt"] == NOW
    check = doc["patients"][0]["orderChecks"][0]
    assert check["verdict"] == "supported"
    assert check["evidence"][0]["performed"] == "2025-02-03T09:20:00-05:00"


def test_text_format_explains_in_plain_language() -> None:
    result = invoke(str(V02), "--now", NOW, "--format", "text")
    assert result.exit_code == 0
    assert "facet radiofrequency ablation" in result.stdout
    assert "criteria met" in result.stdout
    assert "best relief 85.7 %" in result.stdout
    assert "Met: 2 blocks, 85.7 % and 100 % relief (≥ 80 %) (LCD L38773)." in result.stdout
    assert "evaluated on 10 Mar 2025" in result.stdout


def test_ndjson_and_single_resources(tmp_path: Path) -> None:
    resources = [*base_l("P-1"), *v2_pair(), rfa_order()]
    nd = tmp_path / "data.ndjson"
    nd.write_text("\n".join(json.dumps(r) for r in resources[:-1]) + "\n")
    single = tmp_path / "order.json"
    single.write_text(json.dumps(resources[-1]))
    result = invoke(str(nd), str(single), "--now", NOW)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["patients"][0]["orderChecks"][0]["verdict"] == "supported"


def test_invalid_resource_is_skipped_and_named(tmp_path: Path) -> None:
    bad = {
        "resourceType": "Observation",
        "id": "bad",
        "status": "final",
        "subject": {"reference": "Patient/P-1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "valueInteger": "seven",
    }
    f = tmp_path / "b.json"
    f.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in [*base_l(), bad]],
            }
        )
    )
    result = CliRunner().invoke(app(), ["evaluate", str(f), "--now", NOW])
    assert result.exit_code == 1  # evaluated, but an input was ignored
    assert "Observation/bad: valueInteger fails R4 validation" in result.stderr
    doc = json.loads(result.stdout)
    [ignored] = doc["ignored"]
    assert (ignored["resource"], ignored["field"]) == ("Observation/bad", "valueInteger")


def r5_procedure() -> dict[str, Any]:
    """A block written the R5 way: ``occurrenceDateTime`` instead of ``performedDateTime``."""
    block = v2_pair()[0]
    when = block.pop("performedDateTime", None) or block.pop("performedPeriod", {}).get("end")
    block["occurrenceDateTime"] = when
    return block


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_r5_procedure_is_named_with_its_field_and_exit_1(tmp_path: Path, fmt: str) -> None:
    resources = [*base_l("P-1"), r5_procedure(), *v2_pair()[1:], rfa_order()]
    f = tmp_path / "b.json"
    f.write_text(
        json.dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
        )
    )
    result = CliRunner().invoke(app(), ["evaluate", str(f), "--now", NOW, "--format", fmt])
    assert result.exit_code == 1, result.output
    ref = f"Procedure/{r5_procedure()['id']}"
    assert f"{ref}: occurrenceDateTime fails R4 validation" in result.stderr
    assert "R5 `occurrenceDateTime`? Pinpoint reads R4 `performedDateTime`" in result.stderr
    if fmt == "json":
        assert json.loads(result.stdout)["ignored"][0]["resource"] == ref
    else:
        assert "Ignored inputs" in result.stdout and ref in result.stdout


def test_procedure_without_a_date_is_named(tmp_path: Path) -> None:
    block = v2_pair()[0]
    block.pop("performedDateTime", None)
    block.pop("performedPeriod", None)
    f = tmp_path / "b.json"
    f.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": block}]}))
    result = CliRunner().invoke(app(), ["evaluate", str(f), "--now", NOW])
    assert result.exit_code == 1
    assert f"Procedure/{block['id']}: performedDateTime missing" in result.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("{not json", "not JSON", id="not-json"),
        pytest.param('{"hello": "world"}', "not FHIR", id="json-but-not-fhir"),
        pytest.param("", "not JSON", id="empty-file"),
    ],
)
def test_unreadable_input_exits_2_naming_file(tmp_path: Path, content: str, problem: str) -> None:
    f = tmp_path / "input.json"
    f.write_text(content)
    result = invoke(str(f), "--now", NOW)
    assert result.exit_code == 2
    assert str(f) in result.stderr and problem in result.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = invoke(str(tmp_path / "nope.json"))
    assert result.exit_code == 2
    assert "nope.json" in result.stderr


def test_invalid_policy_file_exits_2_naming_key(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("id: x\nversion: 1\npathways:\n  facet-rfa: {treshold: 10}\n")
    result = invoke(str(V02), "--policy", str(f))
    assert result.exit_code == 2
    assert "pathways.facet-rfa.treshold" in result.stderr


def test_patient_with_nothing_to_assess_gets_empty_entry(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"resourceType": "Patient", "id": "lonely"}))
    doc = json.loads(invoke(str(f), "--now", NOW).stdout)
    assert doc["patients"] == [
        {"patient": "Patient/lonely", "assessments": [], "orderChecks": [], "alerts": [], "outcomes": []}
    ]


def test_own_proposals_are_never_checked(tmp_path: Path) -> None:
    own = rfa_order()
    own["identifier"] = [{"system": "urn:pinpoint:recommendation", "value": "default:P-1:facet-rfa"}]
    f = tmp_path / "b.json"
    f.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in [*base_l(), *v2_pair(), own]],
            }
        )
    )
    doc = json.loads(invoke(str(f), "--now", NOW).stdout)
    assert doc["patients"][0]["orderChecks"] == []
