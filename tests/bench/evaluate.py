"""Benchmark: normalise + evaluate synthetic patients from already-parsed JSON (not a test).

Run: ``.venv/bin/python tests/bench/evaluate.py [N]`` (default 2,000 patients, 20-60 resources
each with realistic block histories). Prints patients/s (target: >= 2,000 on one core) and the
ratio to ``orjson`` parsing of the same data (file reading excluded).
"""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.recommender.engine import evaluate
from services.recommender.policies import load_policy
from shared.domain.normalize import normalize

CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"
LN = "http://loinc.org"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
JOINTS = [("L3-L4", "L4-L5"), ("L4-L5", "L5-S1"), ("C5-C6", "C6-C7"), ("L5-S1",)]
SIDES = {"right": "24028007", "left": "7771000", "bilateral": "51440002"}


def _iso(dt: datetime) -> str:
    return dt.isoformat()


def patient(i: int, rng: random.Random) -> list[dict[str, Any]]:
    pid = f"P-{i:06d}"
    subj = {"reference": f"Patient/{pid}"}
    out: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": pid,
            "gender": rng.choice(["female", "male"]),
            "birthDate": "1958-04-02",
        }
    ]
    onset = datetime(2024, rng.randint(1, 9), rng.randint(1, 28), 9, tzinfo=UTC)
    joints = rng.choice(JOINTS)
    side = rng.choice(list(SIDES))
    cervical = joints[0].startswith("C")
    out.append(
        {
            "resourceType": "Condition",
            "id": f"{pid}-c",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/sid/icd-10-cm",
                        "code": "M47.812" if cervical else "M47.816",
                    }
                ]
            },
            "subject": subj,
            "onsetDateTime": _iso(onset),
            "bodySite": [{"coding": [{"system": SCT, "code": SIDES[side]}]}],
        }
    )
    for k in range(rng.randint(8, 12)):
        out.append(
            {
                "resourceType": "Procedure",
                "id": f"{pid}-pt{k}",
                "status": "completed",
                "code": {"coding": [{"system": CPT, "code": "97110"}]},
                "subject": subj,
                "performedDateTime": _iso(onset + timedelta(days=14 + 7 * k)),
            }
        )
    body = [
        {"coding": [{"system": "urn:pinpoint:spinal-joint", "code": j}, {"system": SCT, "code": SIDES[side]}]}
        for j in joints
    ]
    code = ("64490", "64491") if cervical else ("64493", "64494")
    start = onset + timedelta(days=120)
    n_blocks = rng.randint(1, 4)
    for b in range(n_blocks):
        bstart = start + timedelta(days=21 * b, hours=rng.randint(0, 3))
        bend = bstart + timedelta(minutes=20)
        ref = f"{pid}-mbb{b}"
        agent = rng.choice(["lidocaine", "bupivacaine"])
        out.append(
            {
                "resourceType": "Procedure",
                "id": ref,
                "status": "completed",
                "category": {"coding": [{"system": SCT, "code": "103693007"}]},
                "code": {"coding": [{"system": CPT, "code": c} for c in code], "text": "medial branch block"},
                "subject": subj,
                "performedPeriod": {"start": _iso(bstart), "end": _iso(bend)},
                "bodySite": body,
                "usedCode": [{"text": f"0.5% {agent}"}],
            }
        )
        base = rng.randint(5, 9)
        out.append(_obs(f"{ref}-pre", subj, bstart - timedelta(minutes=15), base, ref))
        for m, minutes in enumerate((15, 60, 120, 240, 360)[: rng.randint(3, 5)]):
            value = max(0, base - rng.randint(4, 9))
            out.append(
                _obs(f"{ref}-post{m}", subj, bend + timedelta(minutes=minutes), value, ref if m % 2 else None)
            )
    if rng.random() < 0.3:
        rfa_start = start + timedelta(days=21 * n_blocks + 14)
        out.append(
            {
                "resourceType": "Procedure",
                "id": f"{pid}-rfa",
                "status": "completed",
                "code": {"coding": [{"system": CPT, "code": "64633" if cervical else "64635"}]},
                "subject": subj,
                "performedPeriod": {"start": _iso(rfa_start), "end": _iso(rfa_start + timedelta(minutes=40))},
                "bodySite": body,
            }
        )
        for m in range(rng.randint(2, 6)):
            out.append(
                _obs(f"{pid}-fu{m}", subj, rfa_start + timedelta(days=30 * (m + 1)), rng.randint(1, 6), None)
            )
    out.append(
        {
            "resourceType": "ServiceRequest",
            "id": f"{pid}-req",
            "status": "draft",
            "intent": "order",
            "code": {"coding": [{"system": CPT, "code": "64633" if cervical else "64635"}]},
            "subject": subj,
            "occurrenceDateTime": "2025-06-01",
            "bodySite": body,
        }
    )
    for k in range(rng.randint(4, 12)):  # unrelated vitals
        out.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-hr{k}",
                "status": "final",
                "code": {"coding": [{"system": LN, "code": "8867-4"}]},
                "subject": subj,
                "effectiveDateTime": _iso(onset + timedelta(days=k)),
                "valueQuantity": {"value": 70 + k, "unit": "/min"},
            }
        )
    return out[:60]


def _obs(oid: str, subj: dict[str, str], when: datetime, value: int, part_of: str | None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LN, "code": "72514-3"}]},
        "subject": subj,
        "effectiveDateTime": _iso(when),
        "valueInteger": value,
    }
    if part_of:
        obs["partOf"] = [{"reference": f"Procedure/{part_of}"}]
    return obs


def main(n: int = 2000) -> None:
    rng = random.Random(20250317)
    patients = [patient(i, rng) for i in range(n)]
    sizes = [len(p) for p in patients]
    blobs = [orjson.dumps(p) for p in patients]
    policy = load_policy("cms-lcd")
    now = datetime(2025, 6, 1, 9, tzinfo=UTC)

    # CPU time of this process (one core), so that other load on the machine does not count;
    # wall time is printed too.
    w0, c0 = time.perf_counter(), time.process_time()
    for blob in blobs:
        orjson.loads(blob)
    parse_wall, parse = time.perf_counter() - w0, time.process_time() - c0

    w0, c0 = time.perf_counter(), time.process_time()
    verdicts = 0
    for resources in patients:
        for facts in normalize(resources).values():
            result = evaluate(facts, policy, now=now)
            verdicts += len(result.assessments) + len(result.order_checks)
    engine_wall, engine = time.perf_counter() - w0, time.process_time() - c0

    print(f"patients: {n}, resources: {sum(sizes)} ({min(sizes)}-{max(sizes)} each), verdicts: {verdicts}")
    print(
        f"normalise+evaluate: {engine:.3f} s CPU = {n / engine:,.0f} patients/s (target >= 2,000); "
        f"wall {engine_wall:.3f} s = {n / engine_wall:,.0f} patients/s"
    )
    print(f"orjson parse:       {parse:.3f} s CPU = {n / parse:,.0f} patients/s; wall {parse_wall:.3f} s")
    print(f"ratio engine/parse time: {engine / parse:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
