"""Benchmark: CDS Hooks patient-view under load, beside a bare FastAPI no-op (not a test).

Run: ``.venv/bin/python tests/bench/cds_hooks.py [SECONDS] [--postgres]`` (default 8 s per
target; ``--postgres``: Pinpoint on a throw-away PostgreSQL database instead of SQLite).

Starts, on 127.0.0.1 (free ports), ONE ``pinpoint serve --role recommender`` process (JSON logs
to /dev/null, as in production) and ONE uvicorn process serving a bare FastAPI app that reads the
body and answers ``{"cards": []}``. The same realistic patient-view request — an 80-resource
prefetch (vignette v02's pain history plus unrelated conditions, medications and scores, as an EHR
answers the templates) — goes to each:

- at saturation with ``wrk`` (32 connections, one thread; requires Debian's ``wrk`` package): req/s,
  p50/p99, each server's CPU per call (``/proc/<pid>/stat``) and share of a core, and whether the
  no-op or the generator was the bottleneck;
- paced, open loop, at 0.25 x the no-op's throughput (tests/bench/_load.py ``paced``: latency from
  each request's scheduled send time), first against the no-op to show the driver keeps the
  schedule, then against Pinpoint;
- one connection back to back (the latency of a lone call).

Targets (issue 21): throughput >= 0.25 x the no-op's; p99 <= 40 ms at the paced rate.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench._load import (  # noqa: E402
    Template,
    database,
    generator_verdict,
    loadavg,
    measure,
    noop_server,
    paced,
    paced_verdict,
    pinpoint_server,
    require_wrk,
    wrk,
)

CONNECTIONS = 32
PATH = "/cds-services/pinpoint-patient-view"
V02 = ROOT / "tests" / "fixtures" / "vignettes" / "v02-two-concordant-blocks"


def request_body() -> dict[str, Any]:
    """patient-view for P-001 with 80 prefetched resources."""
    bundle = json.loads((V02 / "bundle.json").read_text())
    res = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] != "ServiceRequest"]
    subj = {"reference": "Patient/P-001"}
    n = 0
    while len(res) < 80:
        n += 1
        kind = n % 3
        if kind == 0:
            res.append(
                {
                    "resourceType": "Condition",
                    "id": f"c-{n}",
                    "subject": subj,
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]},
                    "clinicalStatus": {"coding": [{"code": "active"}]},
                    "recordedDate": "2019-05-01",
                }
            )
        elif kind == 1:
            res.append(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"m-{n}",
                    "status": "active",
                    "intent": "order",
                    "subject": subj,
                    "authoredOn": "2024-01-01",
                    "medicationCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                "code": "314076",
                                "display": "lisinopril 10 MG",
                            }
                        ]
                    },
                }
            )
        else:
            res.append(
                {
                    "resourceType": "Observation",
                    "id": f"o-{n}",
                    "status": "final",
                    "subject": subj,
                    "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
                    "effectiveDateTime": f"2023-{(n % 12) + 1:02d}-10T10:00:00-05:00",
                    "valueInteger": 5,
                }
            )
    keys = {
        "Procedure": "procedures",
        "Observation": "observations",
        "Condition": "conditions",
        "MedicationAdministration": "medications",
        "MedicationStatement": "medicationStatements",
        "MedicationRequest": "medicationRequests",
    }
    prefetch: dict[str, Any] = {
        k: {"resourceType": "Bundle", "type": "searchset", "entry": []} for k in keys.values()
    }
    for r in res:
        if r["resourceType"] == "Patient":
            prefetch["patient"] = r
        else:
            prefetch[keys[r["resourceType"]]]["entry"].append({"resource": r})
    assert len(res) == 80
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": "P-001"},
        "prefetch": prefetch,
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seconds = float(args[0]) if args else 8.0
    postgres = "--postgres" in sys.argv
    require_wrk()
    body = json.dumps(request_body()).encode()
    t = Template("POST", PATH, body, {"Content-Type": "application/json"})
    with (
        database(postgres) as url,
        pinpoint_server("recommender", url) as (p_port, p_pid),
        noop_server() as (
            n_port,
            n_pid,
        ),
    ):
        p_base, n_base = f"http://127.0.0.1:{p_port}", f"http://127.0.0.1:{n_port}"
        check = httpx.post(p_base + PATH, content=body, headers=t.headers, timeout=10)
        cards = check.json().get("cards", [])
        print(
            f"patient-view answer: HTTP {check.status_code}, {len(cards)} card(s): "
            + "; ".join(c["summary"] for c in cards)
        )
        wrk(n_base, t, 2, connections=CONNECTIONS)  # warm-up
        wrk(p_base, t, 2, connections=CONNECTIONS)
        noop = measure(n_pid, lambda: wrk(n_base, t, seconds, connections=CONNECTIONS, label="no-op FastAPI"))
        cds = measure(
            p_pid, lambda: wrk(p_base, t, seconds, connections=CONNECTIONS, label="pinpoint patient-view")
        )
        rate = 0.25 * noop.rps
        noop_paced = paced(n_port, t, rate, seconds, server_pid=n_pid, label="no-op FastAPI")
        cds_paced = paced(p_port, t, rate, seconds, server_pid=p_pid, label="pinpoint patient-view")
        single = measure(
            p_pid, lambda: wrk(p_base, t, seconds / 2, connections=1, label="pinpoint, 1 connection")
        )
    store = "PostgreSQL" if postgres else "SQLite"
    print(f"80-resource prefetch ({len(body):,} bytes), one `pinpoint serve` process on {store}")
    print(f"  saturation: wrk, {CONNECTIONS} connections, 1 thread, {seconds:.0f} s each")
    for r in (noop, cds):
        print("    " + r.line())
    print("    " + generator_verdict(noop))
    print("  paced open loop at 0.25 x the no-op's throughput, latency from each scheduled send:")
    for r in (noop_paced, cds_paced):
        print("    " + r.line())
    print("    " + paced_verdict(noop_paced))
    print("    " + single.line())
    ratio = cds.rps / noop.rps
    print(
        f"  throughput ratio {ratio:.3f} (target >= 0.25); server CPU per call no-op/pinpoint"
        f" {noop.server_cpu_ms / cds.server_cpu_ms:.3f}; p99 at 0.25 x no-op {cds_paced.p99_ms:.1f} ms"
        f" (target <= 40 ms)"
    )
    print(f"  /proc/loadavg after the runs: {loadavg()} ({os.cpu_count()} CPUs, shared with the generators)")


if __name__ == "__main__":
    main()
