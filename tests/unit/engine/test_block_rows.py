"""The blocks table a clinician reads on cards and in ``evaluate`` text: a block whose data is
missing is not called a failed block."""

from __future__ import annotations

import pytest

from services.recommender.engine.explain import block_rows

BLOCK = {"performed": "2025-02-03T09:00:00-05:00", "agent": "lidocaine", "scale": "72514-3"}


def test_a_block_with_enough_relief_is_positive() -> None:
    row = block_rows([{**BLOCK, "positive": True, "baseline": 7, "peakReliefPercent": 85.7}])[0]
    assert row["result"] == "positive"


def test_a_block_below_the_threshold_is_not_positive_and_says_why() -> None:
    failed = {**BLOCK, "positive": False, "baseline": 7, "peakReliefPercent": 40}
    row = block_rows([{**failed, "reasons": ["relief-below-threshold"]}])[0]
    assert row["result"] == "not positive: the block did not give enough pain relief"


@pytest.mark.parametrize("reason", ["no-baseline", "no-follow-up", "data-unavailable", "scale-mismatch"])
def test_a_block_whose_data_is_missing_cannot_be_judged(reason: str) -> None:
    row = block_rows([{**BLOCK, "positive": False, "baseline": None, "reasons": [reason]}])[0]
    assert row["result"].startswith("cannot be judged: ")
    assert "not positive" not in row["result"]
