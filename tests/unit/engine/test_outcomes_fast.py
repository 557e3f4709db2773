"""The practice summary's fast path (issue 19) gives what evaluating every patient in full gives.

The oracle (:func:`straightforward_rows`) is the summary's definition spelled out: the whole
assessment entry of the patient now (its ``outcomes``), and the whole entry again on the day before
each procedure, keeping the assessments of that pathway (or its repeat) whose target overlaps the
procedure's — ``supported`` among them means criteria met. The fast path
(:meth:`Assessor.procedure_outcomes`) must give the same rows, hence the same summary, on every
vignette and on a varied synthetic set (the benchmark's patients: every vignette in variants,
shifted in time, with noise).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.recommender.assessor import Assessor
from services.recommender.engine.practice import overlaps
from services.recommender.outcomes.summary import Row, rows_of, summarize
from tests.conftest import FIXTURES

NOWS = (datetime(2025, 2, 1, 14, tzinfo=UTC), datetime(2026, 12, 1, 9, tzinfo=UTC))
VIGNETTES = sorted(p for p in (FIXTURES / "vignettes").iterdir() if (p / "bundle.json").exists())


def straightforward_rows(
    assessor: Assessor, resources: Sequence[Mapping[str, Any]], now: datetime
) -> list[Row]:
    out: list[Row] = []
    for ref, facts in assessor.facts(resources).items():
        for outcome in assessor.entry(facts, ref, now).get("outcomes") or []:
            before = datetime.fromisoformat(str(outcome["performed"])) - timedelta(days=1)
            pathway = str(outcome["pathway"])
            verdicts = [
                a["verdict"]
                for a in assessor.entry(facts, ref, before).get("assessments") or []
                if a["pathway"] in (pathway, f"{pathway}-repeat") and overlaps(a["target"], outcome["target"])
            ]
            out.append(Row(outcome, ("supported" in verdicts) if verdicts else None))
    return out


def _resources(folder: Any) -> list[dict[str, Any]]:
    return [e["resource"] for e in orjson.loads((folder / "bundle.json").read_bytes())["entry"]]


@pytest.mark.parametrize("policy", ["cms-lcd", "consensus-2020"])
@pytest.mark.parametrize("now", NOWS, ids=["2025-02", "2026-12"])
def test_same_rows_as_full_evaluation_on_every_vignette(policy: str, now: datetime) -> None:
    assessor = Assessor.load(policy)
    judged = 0
    for folder in VIGNETTES:
        fast = rows_of(assessor, _resources(folder), now)
        slow = straightforward_rows(assessor, _resources(folder), now)
        assert fast == slow, folder.name
        judged += sum(1 for r in fast if r.criteria_met is not None)
    assert judged >= 3  # the comparison covers procedures judged the day before, not only None


def test_same_summary_on_a_varied_synthetic_set() -> None:
    from tests.bench.outcomes import variants

    assessor = Assessor.load("cms-lcd")
    now = datetime(2025, 9, 1, 9, tzinfo=UTC)
    vs = variants()
    rng = random.Random(5)
    fast: list[Row] = []
    slow: list[Row] = []
    for i in range(240):
        v = vs[rng.randrange(len(vs))]
        # shifted so that some procedures are recent (milestones pending) and some after `now`
        items = v.render(f"s-{i}", rng.randint(-420, 420), {})
        resources = [orjson.loads(text) for _, _, text in items]
        fast += rows_of(assessor, resources, now)
        slow += straightforward_rows(assessor, resources, now)
    assert fast == slow
    summary = summarize(fast)
    assert summary == summarize(slow)
    by = {p["pathway"]: p for p in summary["pathways"]}
    assert {"facet-rfa", "esi", "knee-steroid"} <= set(by)
    rfa = by["facet-rfa"]
    # varied: some met, some not; some relieved at 3 months, some not; pending milestones left out
    assert 0 < rfa["criteriaMetBefore"]["share"] < 1
    assert 0 < rfa["relief3Months"]["share"] < 1
    assert rfa["relief6Months"]["n"] < rfa["procedures"]


def test_rows_stay_the_same_until_the_instant_given() -> None:
    """What the outcome cache relies on: the same resources give the same rows at any later date
    before :func:`unchanged_until` (and the bound is not trivially now)."""
    from tests.bench.outcomes import variants

    assessor = Assessor.load("cms-lcd")
    vs = variants()
    rng = random.Random(11)
    lasting = 0
    for i in range(150):
        v = vs[rng.randrange(len(vs))]
        resources = [orjson.loads(text) for _, _, text in v.render(f"u-{i}", rng.randint(-420, 420), {})]
        now = datetime(2024, 6, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 500), hours=rng.randint(0, 23))
        rows, until = assessor.procedure_outcomes(resources, now)
        later = [until - timedelta(seconds=1)] if until is not None else [now + timedelta(days=3650)]
        if until is not None and until - now > timedelta(days=2):
            later.append(now + (until - now) / 2)
            lasting += 1
        for when in later:
            assert assessor.procedure_outcomes(resources, when)[0] == rows, (v.name, now, when)
        if until is not None:  # and the bound is needed: a little later, something may change
            assert until > now
    assert lasting >= 50


@pytest.mark.parametrize("now", NOWS, ids=["2025-02", "2026-12"])
def test_worker_sharing_one_context_gives_the_same_entry_and_rows(now: datetime) -> None:
    """The worker builds each patient's context once (:meth:`Assessor.contexts`) for its entry and
    its outcome rows: both are what separate evaluations give, on every vignette."""
    assessor = Assessor.load("cms-lcd")
    with_rows = 0
    for folder in VIGNETTES:
        facts = assessor.facts(_resources(folder))
        contexts = assessor.contexts(facts)
        for ref, one in facts.items():
            assert assessor.entry(one, ref, now, contexts[ref]) == assessor.entry(one, ref, now), folder.name
        shared = assessor.outcomes_of(contexts.values(), now)
        assert shared == assessor.outcomes_of(facts.values(), now), folder.name
        with_rows += bool(shared[0])
    assert with_rows >= 5
