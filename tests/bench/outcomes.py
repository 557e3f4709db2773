"""Benchmark: the outcomes summary's engine work (not a test; no database).

Run: ``.venv/bin/python tests/bench/outcomes.py [N]`` (default 500 patients, each the f05 case:
two ablations with a year of pain and ODI scores). Prints patients/s of evaluating each patient
now and on the day before each procedure (what ``pinpoint outcomes`` and ``/outcomes`` do per
patient after reading the store) and the time that implies for 100,000 patients on one core.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.recommender.assessor import Assessor
from services.recommender.outcomes.summary import rows_of, summarize

CASE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "vignettes" / "f05-outcomes-relief-duration-censoring"
)


def patients(n: int) -> list[list[dict[str, Any]]]:
    base = [e["resource"] for e in json.loads((CASE / "bundle.json").read_text())["entry"]]
    out = []
    for i in range(n):
        text = json.dumps(base).replace("P-001", f"P-{i:06d}")
        out.append(json.loads(text))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    data = patients(n)
    assessor = Assessor.load("cms-lcd")
    now = datetime(2025, 2, 1, 14, tzinfo=UTC)
    t0 = time.perf_counter()
    rows = []
    for resources in data:
        rows += rows_of(assessor, copy.deepcopy(resources), now)
    summary = summarize(rows)
    dt = time.perf_counter() - t0
    assert summary["pathways"][0]["procedures"] == 2 * n
    rate = n / dt
    print(f"outcomes: {n} patients ({len(rows)} procedures) in {dt:.2f} s = {rate:,.0f} patients/s; "
          f"100,000 patients ~ {100_000 / rate:,.0f} s on one core (store reads excluded)")  # fmt: skip


if __name__ == "__main__":
    main()
