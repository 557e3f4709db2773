"""The engine and the normaliser give, byte for byte, what they gave before they were made fast.

The oracle is recorded output, not the code under test: ``tests/fixtures/golden/outputs.json``
holds, per case, a SHA-256 of each output as JSON bytes (key order kept), written by an earlier
version of the engine (the commit before the speed work, regenerated only on purpose, when a
verdict, reason or wording is meant to change):

    .venv/bin/python -m tests.unit.engine.test_golden_outputs --write

Cases: every vignette under both policies at two dates, and a few hundred varied synthetic
patients (the outcomes benchmark's variants shifted in time, with noise; the evaluate
benchmark's realistic and light histories). Outputs per case: the §3 document
(:meth:`Assessor.document`), each patient's entry with its alerts' evidence
(:meth:`Assessor.entry`), the procedure outcomes and until when they hold
(:meth:`Assessor.outcomes_of`), and the facts (``repr``) the evidence page draws from.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.recommender.assessor import Assessor
from tests.conftest import FIXTURES

GOLDEN = FIXTURES / "golden" / "outputs.json"
NOWS = (datetime(2025, 2, 1, 14, tzinfo=UTC), datetime(2026, 12, 1, 9, tzinfo=UTC))
POLICIES = ("cms-lcd", "consensus-2020")


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, default=repr)).hexdigest()


def _cases() -> Iterator[tuple[str, list[dict[str, Any]], str, datetime]]:
    """(name, resources, policy, now) of every case, in a fixed order."""
    for folder in sorted(p for p in (FIXTURES / "vignettes").iterdir() if (p / "bundle.json").exists()):
        resources = [e["resource"] for e in orjson.loads((folder / "bundle.json").read_bytes())["entry"]]
        for policy in POLICIES:
            for now in NOWS:
                yield f"{folder.name}/{policy}/{now.date()}", resources, policy, now
    from tests.bench.evaluate import patient, realistic
    from tests.bench.outcomes import variants

    vs = variants()
    rng = random.Random(21)
    now = datetime(2025, 9, 1, 9, tzinfo=UTC)
    for i in range(240):
        v = vs[rng.randrange(len(vs))]
        items = v.render(f"g-{i}", rng.randint(-420, 420), {})
        yield f"variant-{i}", [orjson.loads(text) for _, _, text in items], POLICIES[i % 3 == 0], now
    rng = random.Random(2021)
    now = datetime(2025, 6, 1, 9, tzinfo=UTC)
    for i in range(60):
        yield f"realistic-{i}", realistic(i, rng), POLICIES[i % 2], now
        yield f"light-{i}", patient(1000 + i, rng), POLICIES[i % 2], now


def _outputs(resources: list[dict[str, Any]], policy: str, now: datetime) -> dict[str, str]:
    assessor = Assessor.load(policy)
    out = {"document": _digest(assessor.document(resources, now))}
    facts = assessor.facts(resources)
    for ref, one in facts.items():
        out[f"{ref} facts"] = _digest(repr(one))
        out[f"{ref} entry"] = _digest(assessor.entry(one, ref, now))
        rows, until = assessor.outcomes_of([one], now)
        out[f"{ref} outcomes"] = _digest([[dict(row), met] for row, met in rows] + [until])
    return out


def _all() -> dict[str, dict[str, str]]:
    return {name: _outputs(resources, policy, now) for name, resources, policy, now in _cases()}


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, str]]:
    recorded: dict[str, dict[str, str]] = orjson.loads(GOLDEN.read_bytes())
    return recorded


def test_every_case_gives_the_recorded_outputs(golden: dict[str, dict[str, str]]) -> None:
    now = _all()
    assert sorted(now) == sorted(golden)
    differ = [
        f"{name}: {key}" for name, outs in now.items() for key in outs if outs[key] != golden[name].get(key)
    ]
    assert not differ, differ[:20]
    assert {k for outs in now.values() for k in outs} == {k for outs in golden.values() for k in outs}


def test_the_cases_cover_every_verdict(golden: dict[str, dict[str, str]]) -> None:
    """The recorded cases are not trivial: they reach each verdict and outcome the engine gives."""
    verdicts: set[str] = set()
    outcomes = 0
    for _, resources, policy, now in _cases():
        document = Assessor.load(policy).document(resources, now)
        for p in document["patients"]:
            verdicts |= {a["verdict"] for a in p["assessments"] + p["orderChecks"]}
            outcomes += len(p["outcomes"])
    assert {
        "supported",
        "partially-supported",
        "not-met",
        "not-evaluable",
        "needs-review",
        "deferred",
    } <= verdicts
    assert outcomes >= 100


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.write_bytes(orjson.dumps(_all(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    print(f"wrote {GOLDEN}")
