"""Properties of the whole pipeline (hypothesis): order independence, irrelevance of unrelated
data, and monotonicity of relief."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.recommender.engine.model import NOT_MET, SUPPORTED
from tests.unit.fhirfactory import CPT, SCT, base_l, block, reading, rfa_order, subj

VIGNETTES = Path(__file__).resolve().parents[2] / "fixtures" / "vignettes"
CASES = sorted(p for p in VIGNETTES.iterdir() if (p / "expected.json").is_file())
NOW = "2025-03-10T08:00:00-05:00"
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def load_case(folder: Path) -> tuple[list[dict[str, Any]], str, str]:
    bundle = json.loads((folder / "bundle.json").read_text())
    expected = json.loads((folder / "expected.json").read_text())
    return [e["resource"] for e in bundle["entry"]], expected["now"], expected["policy"]


@SETTINGS
@given(case=st.sampled_from(CASES), data=st.data())
def test_shuffling_resources_never_changes_the_output(run: Any, case: Path, data: st.DataObject) -> None:
    resources, now, policy = load_case(case)
    shuffled = data.draw(st.permutations(resources))
    assert run(list(shuffled), now, policy) == run(resources, now, policy)


def unrelated(pid: str) -> st.SearchStrategy[dict[str, Any]]:
    when = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2025, 9, 1)).map(
        lambda d: d.isoformat() + "-05:00"
    )
    ident = st.text("abcdefghij0123456789", min_size=6, max_size=10).map(lambda s: f"x-{s}")
    encounter = st.builds(
        lambda i, w: {
            "resourceType": "Encounter",
            "id": i,
            "status": "finished",
            "subject": subj(pid),
            "period": {"start": w},
        },
        ident,
        when,
    )
    vital = st.builds(
        lambda i, w, v: {
            "resourceType": "Observation",
            "id": i,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": subj(pid),
            "effectiveDateTime": w,
            "valueQuantity": {"value": v},
        },
        ident,
        when,
        st.integers(40, 140),
    )
    snomed_proc = st.builds(
        lambda i, w, c: {
            "resourceType": "Procedure",
            "id": i,
            "status": "completed",
            "code": {"coding": [{"system": SCT, "code": c}]},
            "subject": subj(pid),
            "performedDateTime": w,
        },
        ident,
        when,
        st.sampled_from(["18286008", "18946005", "232717009"]),
    )
    im_injection = st.builds(
        lambda i, w: {
            "resourceType": "Procedure",
            "id": i,
            "status": "completed",
            "code": {"coding": [{"system": CPT, "code": "96372"}]},
            "usedCode": [{"text": "ceftriaxone 1 g IM"}],
            "subject": subj(pid),
            "performedDateTime": w,
        },
        ident,
        when,
    )
    return st.one_of(encounter, vital, snomed_proc, im_injection)


@SETTINGS
@given(case=st.sampled_from(CASES), data=st.data())
def test_adding_unrelated_resources_never_changes_the_output(
    run: Any, case: Path, data: st.DataObject
) -> None:
    resources, now, policy = load_case(case)
    pids = sorted({r["id"] for r in resources if r["resourceType"] == "Patient"})
    extra = data.draw(
        st.lists(unrelated(data.draw(st.sampled_from(pids))), max_size=8, unique_by=lambda r: r["id"])
    )
    assert run(resources + extra, now, policy) == run(resources, now, policy)


post_readings = st.lists(
    st.tuples(st.integers(5, 600), st.integers(0, 10)), min_size=1, max_size=5, unique_by=lambda t: t[0]
)
block_spec = st.tuples(
    st.integers(4, 10), post_readings, st.sampled_from(["lidocaine", "bupivacaine", "ropivacaine"])
)


def history(specs: list[tuple[int, list[tuple[int, int]], str]]) -> list[dict[str, Any]]:
    out = base_l()
    for b, (base, posts, agent) in enumerate(specs):
        day = f"2025-0{1 + b}-06 09:00"
        bid = f"mbb-{b}"
        out.append(block(bid, day, agent=agent))
        out.append(reading(f"{bid}-pre", day, base, part_of=bid, minutes=-15))
        for i, (after, value) in enumerate(sorted(posts)):
            out.append(
                reading(f"{bid}-post{i}", day, value, part_of=bid if i % 2 else None, minutes=20 + after)
            )
    return [*out, rfa_order()]


def verdict(doc: dict[str, Any]) -> str:
    return str(doc["patients"][0]["orderChecks"][0]["verdict"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(block_spec, min_size=1, max_size=3), data=st.data())
def test_raising_a_post_block_pain_score_never_turns_not_met_into_supported(
    run: Any, specs: list[tuple[int, list[tuple[int, int]], str]], data: st.DataObject
) -> None:
    resources = history(specs)
    before = verdict(run(resources, NOW))
    posts = [i for i, r in enumerate(resources) if "-post" in r.get("id", "")]
    index = data.draw(st.sampled_from(posts))
    raised = copy.deepcopy(resources)
    raised[index]["valueInteger"] = min(10, raised[index]["valueInteger"] + data.draw(st.integers(1, 10)))
    after = verdict(run(raised, NOW))
    if before == NOT_MET:
        assert after != SUPPORTED
    if before != SUPPORTED:
        assert after != SUPPORTED
