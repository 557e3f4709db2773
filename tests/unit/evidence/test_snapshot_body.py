"""The evidence snapshot of a CDS call: drawn from the engine's own indexes (the evaluation's
``PatientContext``) it is the snapshot drawn from the facts alone, on every vignette; the policy
values it keeps are the policy's, whichever policy object asks."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest

from services.recommender.assessor import Assessor
from services.recommender.evidence.snapshots import patient_header, snapshot_body
from shared.fhir.bundle import resolve
from tests.conftest import FIXTURES

VIGNETTES = FIXTURES / "vignettes"
NAMES = sorted(p.name for p in VIGNETTES.iterdir() if (p / "bundle.json").exists())


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_from_the_evaluations_context_is_the_snapshot_from_the_facts(name: str) -> None:
    data = json.loads((VIGNETTES / name / "bundle.json").read_text())
    expected = json.loads((VIGNETTES / name / "expected.json").read_text())
    resources = list(resolve((None, e["resource"]) for e in data["entry"]))
    assessor = Assessor.load(expected.get("policy", "cms-lcd"))
    now = datetime.fromisoformat(expected["now"])
    assessed = assessor.assess(resources, now)
    assert assessed.facts, name
    for entry in assessed.document["patients"]:
        ref = entry["patient"]
        common = {
            "entry": entry,
            "facts": assessed.facts[ref],
            "policy": assessor.policy,
            "patient": patient_header(resources, ref.removeprefix("Patient/")),
            "now": now,
        }
        reused = snapshot_body(**common, context=assessed.contexts[ref])
        fresh = snapshot_body(**common)
        assert reused == fresh
        assert fresh["facts"]["patient"] == ref


def test_policy_values_follow_the_policy_object_not_its_name() -> None:
    resources, expected = (
        json.loads((VIGNETTES / "v02-two-concordant-blocks" / f).read_text())
        for f in ("bundle.json", "expected.json")
    )
    raw = list(resolve((None, e["resource"]) for e in resources["entry"]))
    now = datetime.fromisoformat(expected["now"])
    policy = Assessor.load("cms-lcd").policy
    entry = Assessor(policy).assess(raw, now).document["patients"][0]
    first = snapshot_body(entry=entry, facts=None, policy=policy, patient=None, now=now)
    stricter = replace(policy, general={**policy.general, "baseline_window_hours": 1})
    second = snapshot_body(entry=entry, facts=None, policy=stricter, patient=None, now=now)
    assert first["policy"]["general"]["baseline_window_hours"] == policy.general["baseline_window_hours"]
    assert second["policy"]["general"]["baseline_window_hours"] == 1
    assert first["policy"]["pathways"] and first["policy"]["pathways"] == second["policy"]["pathways"]
