"""Benchmark: validating what the import keeps, R4B models vs FHIR R4 (the JSON schema) — not a test.

Run: ``.venv/bin/python tests/bench/validate.py [N]`` (default 300 patients). The realistic
histories of ``tests/bench/evaluate.py`` (pain history inside Synthea-shaped noise), only the
resources ingest keeps, as parsed JSON. Side by side in one process, alternating rounds (R4B, R4,
R4B, R4, …) so that the machine's load weighs on both alike: CPU µs a resource, per type and
overall, with the first use's compile cost apart, and ``/proc/loadavg``.
"""

from __future__ import annotations

import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fhir.resources.R4B import get_fhir_model_class

from shared.domain.relevance import classify
from shared.fhir.resources import compile_validators, validate_r4
from tests.bench._load import loadavg
from tests.bench.evaluate import noise, patient

ROUNDS = 4


def kept(n: int) -> list[dict[str, Any]]:
    rng = random.Random(20260317)
    out: list[dict[str, Any]] = []
    for i in range(n):
        history = patient(i, rng)
        out += [r for r in history + noise(history[0]["id"], rng) if classify(r).kept]
    return out


def r4b(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    resources = kept(n)
    types = sorted({r["resourceType"] for r in resources})
    t0 = time.process_time()
    compile_validators(types)
    compile_s = time.process_time() - t0
    for r in resources[:50]:  # models imported, caches warm
        r4b(r)
    ways: dict[str, Callable[[dict[str, Any]], None]] = {"R4B models": r4b, "R4 schema": validate_r4}
    cpu: dict[str, dict[str, float]] = {w: defaultdict(float) for w in ways}
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in resources:
        by_type[r["resourceType"]].append(r)
    for _ in range(ROUNDS):
        for way, validate in ways.items():
            for t, of_type in by_type.items():  # one clock reading a type: the clock costs ~1 µs
                started = time.process_time_ns()
                for r in of_type:
                    validate(r)
                cpu[way][t] += time.process_time_ns() - started
    count = {t: len(of_type) * ROUNDS for t, of_type in by_type.items()}
    total = len(resources) * ROUNDS
    print(f"{n} patients, {len(resources):,} kept resources, {ROUNDS} alternating rounds")
    print(f"  compile of the R4 validators of {len(types)} types on first use: {compile_s * 1e3:.0f} ms CPU")
    print(f"  {'type':<22} {'n':>7} " + " ".join(f"{w:>12}" for w in ways) + "  (CPU µs a resource)")
    for t in types:
        row = " ".join(f"{cpu[w][t] / 1e3 / count[t]:12.1f}" for w in ways)
        print(f"  {t:<22} {count[t] // ROUNDS:>7} {row}")
    overall = {w: sum(cpu[w].values()) / 1e3 / total for w in ways}
    a, b = overall.values()
    print(f"  {'all kept':<22} {len(resources):>7} " + " ".join(f"{v:12.1f}" for v in overall.values()))
    print(f"  R4 schema: {a / b:.0f} x less CPU a resource; /proc/loadavg {loadavg()}")


if __name__ == "__main__":
    main()
