"""Policy profiles (CONTRACT §1 ``--policy``): built-ins, extends, and invalid files rejected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.recommender.policies import POLICY_DIR, PolicyError, load_policy


def test_builtins_load_with_id_and_version() -> None:
    cms = load_policy("cms-lcd")
    consensus = load_policy("consensus-2020")
    assert (cms.id, consensus.id) == ("cms-lcd", "consensus-2020")
    assert cms.num("facet-rfa", "threshold") == 80
    assert consensus.num("facet-rfa", "threshold") == 50
    assert consensus.opt("facet-rfa", "session_cap") is None
    assert cms.num("sij-therapeutic", "threshold") == 75  # inherited unchanged
    assert cms.steroid_factors["dexamethasone"] == pytest.approx(16 / 3)
    assert not cms.covered("sij-rfa")


def test_every_value_in_the_builtins_names_a_public_source() -> None:
    for name in ("cms-lcd", "consensus-2020"):
        pol = load_policy(name)
        for pathway, params in pol.pathways.items():
            for key, value in params.items():
                if value is not None and not isinstance(value, dict):
                    source = pol.source(f"pathways.{pathway}.{key}")
                    assert source is not None and source.url and source.title, (name, pathway, key)
        for key in ("general.baseline_window_hours", "agents.bupivacaine.minimum_minutes", "steroid.factors"):
            assert pol.source(key) is not None, key
    assert load_policy("cms-lcd").source("pathways.facet-rfa.threshold").label == "LCD L38773"  # type: ignore[union-attr]
    assert load_policy("consensus-2020").source_id("pathways.facet-rfa.threshold") == "COHEN-2020"
    assert load_policy("consensus-2020").source_id("pathways.facet-rfa.pain_months") == "L38773"
    for path in POLICY_DIR.glob("*.yaml"):  # no internal document is cited to a user
        assert not re.search(r"CRITERIA|CONTRACT|§|\[S\d", path.read_text()), path.name


PAYER_SOURCE = (
    "sources:\n  - {id: payer-x-2025, title: Payer X medical policy, publisher: Payer X,"
    " url: 'https://payer.example/policy', date: '2025-01-01'}\n"
)


def test_custom_file_extends_and_switches_a_pathway_off(tmp_path: Path) -> None:
    f = tmp_path / "payer.yaml"
    f.write_text(
        "id: payer-x\nversion: '3'\nextends: cms-lcd\n"
        + PAYER_SOURCE
        + "pathways:\n  genicular-rfa: {covered: false, cite: {covered: payer-x-2025}}\n"
    )
    pol = load_policy(str(f))
    assert (pol.id, pol.version, pol.covered("genicular-rfa"), pol.covered("facet-rfa")) == (
        "payer-x",
        "3",
        False,
        True,
    )
    assert pol.source_id("pathways.genicular-rfa.covered") == "payer-x-2025"
    assert pol.source_id("pathways.facet-rfa.threshold") == "L38773"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            "id: x\nversion: 1\npathways:\n  facet-rfa: {threshhold: 70}\n",
            "pathways.facet-rfa.threshhold",
            id="misspelt-key",
        ),
        pytest.param(
            "id: x\nversion: 1\npathways:\n  facet-rfa: {threshold: high}\n",
            "pathways.facet-rfa.threshold",
            id="not-a-number",
        ),
        pytest.param(
            "id: x\nversion: 1\npathways:\n  facet-rfa: {covered: 1}\n",
            "pathways.facet-rfa.covered",
            id="covered-not-boolean",
        ),
        pytest.param(
            "id: x\nversion: 1\npathways:\n  hip-rfa: {covered: true}\n",
            "pathways.hip-rfa",
            id="unknown-pathway",
        ),
        pytest.param("id: x\nversion: 1\nextends: medicaid\n", "extends", id="unknown-base"),
        pytest.param("version: 1\n", "id", id="missing-id"),
        pytest.param(
            "id: x\nversion: 1\npathways:\n  facet-rfa: {threshold: null}\n",
            "pathways.facet-rfa.threshold",
            id="threshold-null",
        ),
        pytest.param("id: x\nversion: 1\npathways: [1, 2]\n", "pathways", id="pathways-not-mapping"),
        pytest.param("id: [x\n", "YAML", id="broken-yaml"),
        pytest.param(
            "id: x\nversion: 1\npathways:\n  facet-rfa: {threshold: 70}\n",
            "pathways.facet-rfa.threshold: no source",
            id="threshold-without-source",
        ),
        pytest.param(
            "id: x\nversion: 1\npathways:\n  facet-rfa: {threshold: 70, cite: {threshold: lcd-l99999}}\n",
            "pathways.facet-rfa.threshold: unknown source id 'lcd-l99999'",
            id="unknown-source-id",
        ),
        pytest.param(
            "id: x\nversion: 1\npathways:\n  facet-rfa: {threshold: 120, cite: {threshold: L38773}}\n",
            "pathways.facet-rfa.threshold: a percentage must be between 0 and 100",
            id="percentage-over-100",
        ),
        pytest.param(
            "id: x\nversion: 1\npathways:\n  facet-rfa: {session_cpa: 3}\n",
            "did you mean 'session_cap'",
            id="did-you-mean",
        ),
        pytest.param(
            "id: x\nversion: 1\nsources:\n  - {id: s, title: t}\n",
            "sources[0]: publisher, date, url required",
            id="source-incomplete",
        ),
    ],
)
def test_invalid_policy_rejected_naming_key_and_reason(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(PolicyError, match=re.escape(message)) as raised:
        load_policy(str(f))
    assert str(f) in str(raised.value)  # the message names the file


def test_unknown_policy_name() -> None:
    with pytest.raises(PolicyError, match="no such built-in policy"):
        load_policy("nope")
