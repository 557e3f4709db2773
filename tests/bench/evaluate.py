"""Benchmark: normalise + evaluate synthetic patients from already-parsed JSON (not a test).

Run: ``.venv/bin/python tests/bench/evaluate.py [N]`` (default 2,000 patients). Two sets:
*realistic* — each patient's pain history (diagnosis, physical therapy, medial branch blocks
with their pain diaries, radiofrequency ablation, follow-up scores, a draft order, heart rates)
inside Synthea-shaped noise (encounters, claims, vital signs, reports, immunizations), only the
resources ingest keeps, decoded from JSON as the worker reads them; *light* — the pain history
alone. Prints CPU time per patient of each step and patients/s per core of the worker's path
(normalise + evaluate + §3 entry; target >= 2,000 on realistic histories), the worker's whole step
(normalise, §3 entry and outcome rows, as ``Worker.evaluate``), and the load.

``--before REF`` (e.g. ``main``): that commit's source too (``git archive``, bytecode compiled, on
this environment), each side a process of its own running this script's patients and steps over
its source (``--tree``), alternated (before, after, before again, …, ``--rounds`` of each); then
the realistic set's figures of every run side by side with the load average at each.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

# --tree DIR: the source to measure (--before runs this script over the older commit's)
sys.path.insert(
    0,
    sys.argv[sys.argv.index("--tree") + 1]
    if "--tree" in sys.argv
    else str(Path(__file__).resolve().parents[2]),
)

from services.recommender.assessor import Assessor
from services.recommender.engine import evaluate

try:
    from services.cli import GC_THRESHOLDS
except ImportError:  # a tree from before the start-up work moved it (--before, --tree)
    from services.server import GC_THRESHOLDS  # type: ignore[attr-defined,no-redef]
from shared.domain.relevance import classify
from tests.bench._load import loadavg

CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"
LN = "http://loinc.org"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
JOINTS = [("L3-L4", "L4-L5"), ("L4-L5", "L5-S1"), ("C5-C6", "C6-C7"), ("L5-S1",)]
#: a Synthea claim's and explanation of benefit's type
INSTITUTIONAL = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "institutional"}]
}
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


def _ref(kind: str, rid: str) -> dict[str, str]:
    return {"reference": f"{kind}/{rid}"}


def noise(pid: str, rng: random.Random) -> list[dict[str, Any]]:
    """Synthea-shaped resources Pinpoint does not keep (or keeps no facts from), ~60 a patient."""
    subj = _ref("Patient", pid)
    out: list[dict[str, Any]] = []
    start = datetime(2015, 1, 5, 9, tzinfo=UTC)
    for k in range(rng.randint(10, 14)):
        when = start + timedelta(days=97 * k + rng.randint(0, 30))
        period = {"start": when.isoformat(), "end": (when + timedelta(minutes=25)).isoformat()}
        enc = f"{pid}-enc{k}"
        code = {"coding": [{"system": SCT, "code": "185349003", "display": "Encounter for check up"}]}
        out.append(
            {
                "resourceType": "Encounter",
                "id": enc,
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "type": [code],
                "subject": subj,
                "participant": [{"individual": _ref("Practitioner", f"pr{k % 7}")}],
                "period": period,
                "serviceProvider": _ref("Organization", "org1"),
            }
        )
        item = [{"sequence": 1, "productOrService": code, "encounter": [_ref("Encounter", enc)]}]
        out.append(
            {
                "resourceType": "Claim",
                "id": f"{pid}-cl{k}",
                "status": "active",
                "type": INSTITUTIONAL,
                "use": "claim",
                "patient": subj,
                "billablePeriod": period,
                "created": period["end"],
                "provider": _ref("Organization", "org1"),
                "priority": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}
                    ]
                },
                "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Medicare"}}],
                "item": item,
                "total": {"value": 129.16, "currency": "USD"},
            }
        )
        out.append(
            {
                "resourceType": "ExplanationOfBenefit",
                "id": f"{pid}-eob{k}",
                "status": "active",
                "type": INSTITUTIONAL,
                "use": "claim",
                "patient": subj,
                "billablePeriod": period,
                "created": period["end"],
                "insurer": {"display": "Medicare"},
                "provider": _ref("Practitioner", f"pr{k % 7}"),
                "claim": _ref("Claim", f"{pid}-cl{k}"),
                "outcome": "complete",
                "insurance": [{"focal": True, "coverage": {"display": "Medicare"}}],
                "item": [
                    {
                        **item[0],
                        "servicedPeriod": period,
                        "adjudication": [
                            {
                                "category": {"coding": [{"code": "submitted"}]},
                                "amount": {"value": 129.16, "currency": "USD"},
                            },
                            {
                                "category": {"coding": [{"code": "benefit"}]},
                                "amount": {"value": 103.33, "currency": "USD"},
                            },
                        ],
                    }
                ],
                "total": [
                    {
                        "category": {"coding": [{"code": "submitted"}]},
                        "amount": {"value": 129.16, "currency": "USD"},
                    }
                ],
                "payment": {"amount": {"value": 103.33, "currency": "USD"}},
            }
        )
        for code, unit, value in (
            ("8302-2", "cm", 170.2),
            ("29463-7", "kg", 81.5),
            ("8480-6", "mm[Hg]", 124),
        ):
            out.append(
                {
                    "resourceType": "Observation",
                    "id": f"{pid}-v{k}-{code}",
                    "status": "final",
                    "category": [{"coding": [{"code": "vital-signs"}]}],
                    "code": {"coding": [{"system": LN, "code": code}]},
                    "subject": subj,
                    "encounter": _ref("Encounter", enc),
                    "effectiveDateTime": when.isoformat(),
                    "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org"},
                }
            )
        if k % 2 == 0:
            out.append(
                {
                    "resourceType": "DiagnosticReport",
                    "id": f"{pid}-dr{k}",
                    "status": "final",
                    "code": {"coding": [{"system": LN, "code": "51990-0"}]},
                    "subject": subj,
                    "encounter": _ref("Encounter", enc),
                    "effectiveDateTime": when.isoformat(),
                    "issued": when.isoformat(),
                    "result": [_ref("Observation", f"{pid}-v{k}-8302-2")],
                }
            )
            out.append(
                {
                    "resourceType": "Immunization",
                    "id": f"{pid}-im{k}",
                    "status": "completed",
                    "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
                    "patient": subj,
                    "encounter": _ref("Encounter", enc),
                    "occurrenceDateTime": when.isoformat(),
                    "primarySource": True,
                }
            )
    return out


def realistic(i: int, rng: random.Random) -> list[dict[str, Any]]:
    """What the worker reads for one patient: the pain history inside Synthea-shaped noise, only
    the resources ingest keeps (the relevance filter), decoded from stored JSON."""
    history = patient(i, rng)
    return [r for r in history + noise(history[0]["id"], rng) if classify(r).kept]


def worker_step(assessor: Assessor, resources: list[dict[str, Any]], ref: str, now: datetime) -> None:
    """What ``Worker.evaluate`` does for a patient whose outcome rows are due: normalise, the §3
    entry, the outcome rows (``Assessor.outcomes_of``)."""
    facts = assessor.facts(resources)
    if hasattr(assessor, "contexts"):  # one context per patient serves both (issue 21)
        contexts = assessor.contexts(facts)
        assessor.entry(facts.get(ref), ref, now, contexts.get(ref))
        assessor.outcomes_of(contexts.values(), now)
    else:  # an older tree (--before)
        assessor.entry(facts.get(ref), ref, now)
        assessor.outcomes_of(facts.values(), now)


def _run(label: str, patients: list[list[dict[str, Any]]], blobs: list[bytes], now: datetime) -> float:
    """Decode + normalise + evaluate + §3 entry (the worker's path) on one core; patients/s."""
    assessor = Assessor.load("cms-lcd")
    for resources in patients[:100]:  # warm-up: policy, caches
        assessor.results(resources, now)
    # as in the worker after start-up (services.cli.tune_gc): the heap built so far (here the
    # input) out of the collector's sight, collections as often as there
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    c0 = time.process_time()
    for blob in blobs:
        orjson.loads(blob)
    decode = time.process_time() - c0
    c0 = time.process_time()
    facts = [assessor.facts(p) for p in patients]
    norm = time.process_time() - c0
    c0 = time.process_time()
    results = [[evaluate(f, assessor.policy, now=now) for f in fs.values()] for fs in facts]
    engine = time.process_time() - c0
    c0 = time.process_time()
    for resources in patients:
        key = next(r for r in resources if r["resourceType"] == "Patient")["id"]
        assessor.patient_entry(resources, f"Patient/{key}", now)
    total = time.process_time() - c0
    c0 = time.process_time()
    for resources in patients:
        key = next(r for r in resources if r["resourceType"] == "Patient")["id"]
        worker_step(assessor, resources, f"Patient/{key}", now)
    step = time.process_time() - c0
    n = len(patients)
    sizes = [len(p) for p in patients]
    verdicts = sum(len(r.assessments) + len(r.order_checks) for rs in results for r in rs)
    us = 1e6 / n
    print(
        f"{label}: {n} patients, {sum(sizes) / n:.0f} resources each ({min(sizes)}-{max(sizes)}),"
        f" {verdicts} verdicts"
    )
    print(
        f"  per patient (CPU): decode JSON {decode * us:.0f} µs, normalise {norm * us:.0f} µs,"
        f" evaluate {engine * us:.0f} µs; normalise+evaluate+entry {total * us:.0f} µs"
    )
    rate = n / total
    print(f"  normalise+evaluate+entry: {rate:,.0f} patients/s per core (target >= 2,000)")
    print(f"  the worker's step (normalise, entry, outcome rows): {step * us:.0f} µs a patient")
    return rate


def side_by_side(n: int, before: str, rounds: int) -> None:
    """This tree and ``before`` alternately, each run a fresh process; the realistic set's CPU per
    patient and rate of each run."""
    from tests.bench.startup import alternate

    rows: list[tuple[str, float, float, str, float, float, float]] = []
    for label, out in alternate(str(Path(__file__).resolve()), n, before, rounds, "this branch"):
        realistic_part = out.split("light (")[0]
        us = float(re.findall(r"normalise\+evaluate\+entry (\d+) µs", realistic_part)[0])
        rate = float(re.findall(r"([\d,]+) patients/s", realistic_part)[0].replace(",", ""))
        norm, engine = (
            float(x) for x in re.findall(r"normalise (\d+) µs, evaluate (\d+) µs", realistic_part)[0]
        )
        step = float(re.findall(r"outcome rows\): (\d+) µs", realistic_part)[0])
        rows.append((label, us, rate, loadavg(), norm, engine, step))
        print(
            f"{label:>12}: {us:5.0f} µs CPU a patient (normalise {norm:.0f}, evaluate {engine:.0f}),"
            f" {rate:6,.0f} patients/s per core; worker's step {step:.0f} µs; load {rows[-1][3]}"
        )
    for label in (before, "this branch"):
        mine = [r for r in rows if r[0] == label]

        def median(i: int, mine: list[tuple[Any, ...]] = mine) -> float:
            return float(sorted(r[i] for r in mine)[len(mine) // 2])

        print(
            f"{label:>12}: median {median(1):.0f} µs CPU a patient (normalise+evaluate+entry, realistic:"
            f" normalise {median(4):.0f}, evaluate {median(5):.0f}); worker's step {median(6):.0f} µs"
        )


def main(n: int = 2000) -> None:
    rng = random.Random(20250317)
    now = datetime(2025, 6, 1, 9, tzinfo=UTC)
    light = [patient(i, rng) for i in range(n)]
    real = [realistic(i, rng) for i in range(n)]
    # as the worker gets them: decoded from stored JSON
    real_blobs = [orjson.dumps(p) for p in real]
    real = [orjson.loads(b) for b in real_blobs]
    _run("realistic (pain history in Synthea-shaped noise, kept resources)", real, real_blobs, now)
    _run("light (pain history only)", light, [orjson.dumps(p) for p in light], now)
    print(f"/proc/loadavg: {loadavg()} ({os.cpu_count()} CPUs, shared); figures are CPU time of one core")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--before", metavar="REF", help="also run git REF, alternating with this tree")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side with --before")
    parser.add_argument("--tree", metavar="DIR", help="measure the source in DIR (what --before uses)")
    args = parser.parse_args()
    if args.before:
        side_by_side(args.n, args.before, args.rounds)
    else:
        main(args.n)
