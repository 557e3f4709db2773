"""Benchmark: CDS Hooks patient-view under load, beside a bare FastAPI no-op (not a test).

Run: ``.venv/bin/python tests/bench/cds_hooks.py [SECONDS]`` (default 8 s per target).

Starts, on 127.0.0.1 (free ports), ONE ``pinpoint serve --role recommender`` process (SQLite,
JSON logs to /dev/null, as in production) and ONE uvicorn process serving a bare FastAPI app whose
POST endpoint reads the body and returns ``{"cards": []}``. A loopback load generator (4 client
processes x 8 connections = 32 connections) posts the same realistic patient-view request — an
80-resource prefetch (vignette v02's pain history plus unrelated conditions, medications and
scores, as an EHR answers the templates) — to each in turn, and prints req/s, p50/p99 and the
ratio. Targets (issue 9): ratio >= 0.25 of the no-op's throughput, p99 <= 40 ms.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # module level: the no-op's annotations must resolve

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CLIENT_PROCS = 4
CONNS_PER_PROC = 8
V02 = ROOT / "tests" / "fixtures" / "vignettes" / "v02-two-concordant-blocks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


# ----------------------------------------------------------------------------- servers


def serve_noop(port: int) -> None:
    import uvicorn

    app = FastAPI()

    @app.post("/noop")
    async def noop(request: Request) -> dict[str, list[Any]]:
        await request.body()
        return {"cards": []}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_up(port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    for _ in range(200):  # bounded: 20 s
        if proc.poll() is not None:
            raise SystemExit(f"server on {port} exited with {proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"server on {port} did not start")


# ----------------------------------------------------------------------------- load


def _client(url: str, body: bytes, seconds: float, out: Any, conns: int = CONNS_PER_PROC) -> None:
    import httpx

    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    r = await client.post(url, content=body, headers={"content-type": "application/json"})
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            await asyncio.gather(*(worker() for _ in range(conns)))
        return latencies, errors

    out.put(asyncio.run(run()))


def load(
    url: str, body: bytes, seconds: float, procs_n: int = CLIENT_PROCS, conns: int = CONNS_PER_PROC
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, body, seconds, q, conns)) for _ in range(procs_n)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    if not lat:
        raise SystemExit(f"no successful request to {url} ({errors} errors)")
    return {
        "rps": len(lat) / seconds,
        "p50": statistics.median(lat) * 1000,
        "p95": lat[int(len(lat) * 0.95) - 1] * 1000,
        "p99": lat[int(len(lat) * 0.99) - 1] * 1000,
        "n": len(lat),
        "errors": errors,
    }


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    body = json.dumps(request_body()).encode()
    tmp = tempfile.mkdtemp(prefix="pinpoint-bench-")
    p_port, n_port = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PINPOINT_")}, "PYTHONPATH": str(ROOT)}
    here = str(Path(__file__).resolve())
    servers = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "pinpoint"), "serve", "--role", "recommender"],
            env={
                **env,
                "PINPOINT_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
                "PINPOINT_PORT": str(p_port),
                "PINPOINT_LOG_FORMAT": "json",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, here, "--noop", str(n_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_up(p_port, "/livez", servers[0])
        wait_up(n_port, "/docs", servers[1])
        import httpx

        check = httpx.post(
            f"http://127.0.0.1:{p_port}/cds-services/pinpoint-patient-view",
            content=body,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        cards = check.json().get("cards", [])
        print(
            f"patient-view answer: HTTP {check.status_code}, {len(cards)} card(s): "
            + "; ".join(c["summary"] for c in cards)
        )
        load(f"http://127.0.0.1:{n_port}/noop", body, 1.0)  # warm-up
        load(f"http://127.0.0.1:{p_port}/cds-services/pinpoint-patient-view", body, 1.0)
        noop = load(f"http://127.0.0.1:{n_port}/noop", body, seconds)
        cds = load(f"http://127.0.0.1:{p_port}/cds-services/pinpoint-patient-view", body, seconds)
        single = load(
            f"http://127.0.0.1:{p_port}/cds-services/pinpoint-patient-view", body, seconds / 2, 1, 1
        )
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(timeout=10)
    print(f"32 connections ({CLIENT_PROCS} client processes), {seconds:.0f} s each, 80-resource prefetch")
    for name, r in (("no-op FastAPI", noop), ("pinpoint patient-view", cds)):
        print(
            f"  {name:22s} {r['rps']:8.0f} req/s   p50 {r['p50']:6.1f} ms   p99 {r['p99']:6.1f} ms"
            f"   ({r['n']:.0f} ok, {r['errors']:.0f} errors)"
        )
    print(
        f"  one connection (latency per call): p50 {single['p50']:.1f} ms   p95 {single['p95']:.1f} ms"
        f"   p99 {single['p99']:.1f} ms   ({single['rps']:.0f} req/s)"
    )
    print(
        f"  host: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}"
        " (servers and load generator share them)"
    )
    ratio = cds["rps"] / noop["rps"]
    print(f"  throughput ratio {ratio:.2f} (target >= 0.25); p99 {cds['p99']:.1f} ms (target <= 40 ms)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--noop":
        serve_noop(int(sys.argv[2]))
    else:
        main()
