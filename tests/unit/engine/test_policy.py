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


def test_every_value_in_the_builtin_names_its_source() -> None:
    text = (POLICY_DIR / "cms-lcd.yaml").read_text()
    assert re.search(r"threshold: 80 +# ", text)
    for pathway in ("facet-rfa", "sij-therapeutic", "esi", "knee-steroid", "genicular-rfa"):
        assert re.search(rf"  {pathway}:\s+# .+", text), pathway


def test_custom_file_extends_and_switches_a_pathway_off(tmp_path: Path) -> None:
    f = tmp_path / "payer.yaml"
    f.write_text(
        "id: payer-x\nversion: '3'\nextends: cms-lcd\npathways:\n  genicular-rfa: {covered: false}\n"
    )
    pol = load_policy(str(f))
    assert (pol.id, pol.version, pol.covered("genicular-rfa"), pol.covered("facet-rfa")) == (
        "payer-x",
        "3",
        False,
        True,
    )


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
    ],
)
def test_invalid_policy_rejected_naming_key_and_reason(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(str(f))


def test_unknown_policy_name() -> None:
    with pytest.raises(PolicyError, match="no such built-in policy"):
        load_policy("nope")
