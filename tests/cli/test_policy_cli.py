"""`pinpoint policy show` and `pinpoint policy check`: resolved thresholds with their sources;
a policy file validated with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.recommender.policies import POLICY_DIR

runner = CliRunner()


def test_show_prints_every_threshold_with_its_source() -> None:
    result = runner.invoke(app, ["policy", "show", "consensus-2020"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Policy consensus-2020 version 2020.1-1")
    facet_rfa = lines.index("  facet-rfa")
    threshold = next(line for line in lines[facet_rfa:] if line.strip().startswith("threshold"))
    assert threshold.split() == ["threshold", "50", "%", "Cohen", "2020", "consensus"]
    assert "NO SOURCE" not in result.stdout
    assert "https://doi.org/10.1136/rapm-2019-101243" in result.stdout
    assert "untreated-radiculopathy" in result.stdout  # rules without a number, cited too


def test_show_a_file_resolves_what_it_extends(tmp_path: Path) -> None:
    f = tmp_path / "payer.yaml"
    f.write_text(
        "id: payer\nversion: '7'\nsources:\n  - {id: payer-2025, title: Payer policy, publisher: Payer,"
        " url: 'https://payer.example/p', date: '2025-01-01'}\n"
        "pathways:\n  facet-rfa: {threshold: 70, cite: {threshold: payer-2025}}\n"
    )
    result = runner.invoke(app, ["policy", "show", str(f)])
    assert result.exit_code == 0, result.output
    assert any(
        line.split()[:3] == ["threshold", "70", "%"] and "Payer policy" in line
        for line in result.stdout.splitlines()
    )
    assert "LCD L38773" in result.stdout  # inherited values keep their sources


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "pathways:\n  facet-rfa: {threshold: 120, cite: {threshold: L38773}}\n",
            "pathways.facet-rfa.threshold: a percentage must be between 0 and 100 (got 120)",
        ),
        ("pathways:\n  facet-rfa: {treshold: 70}\n", "did you mean 'threshold'?"),
        ("pathways:\n  facet-rfa: {threshold: 70}\n", "pathways.facet-rfa.threshold: no source"),
        (
            "pathways:\n  facet-rfa: {threshold: 70, cite: {threshold: nobody}}\n",
            "unknown source id 'nobody'",
        ),
    ],
)
def test_check_names_the_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("id: mine\nversion: 1\n" + body)
    result = runner.invoke(app, ["policy", "check", str(f)])
    assert result.exit_code == 2
    assert str(f) in result.stderr and message in result.stderr


@pytest.mark.parametrize("name", ["cms-lcd", "consensus-2020"])
def test_check_accepts_the_builtins(name: str) -> None:
    result = runner.invoke(app, ["policy", "check", str(POLICY_DIR / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout
