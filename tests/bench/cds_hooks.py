"""Benchmark: CDS Hooks patient-view under load, beside a bare FastAPI no-op (not a test).

Run: ``.venv/bin/python tests/bench/cds_hooks.py [SECONDS] [--postgres]`` (default 8 s per
target; ``--postgres``: Pinpoint on a throw-away PostgreSQL database instead of SQLite).

Starts, on 127.0.0.1 (free ports), ONE ``pinpoint serve --role recommender`` process (SQLite,
JSON logs to /dev/null, as in production) and ONE uvicorn process serving a bare FastAPI app whose
POST endpoint reads the body and returns ``{"cards": []}``. A loopback load generator (4 client
processes x 8 connections = 32 connections) posts the same realistic patient-view request — an
80-resource prefetch (vignette v02's pain history plus unrelated conditions, medications and
scores, as an EHR answers the templates) — to each in turn, and prints req/s, p50/p99, each
server's CPU per call and the ratio. Then it offers Pinpoint 0.25 x the no-op's throughput on a
fixed schedule over the same 32 connections and prints the latency there (from each call's
scheduled time, so a backlog counts). Targets (issue 9): ratio >= 0.25 of the no-op's
throughput, p99 <= 40 ms.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
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

from tests.serving import cpu_seconds, free_port  # noqa: E402

CLIENT_PROCS = 4
STARTUP_S = 3.0  # client processes start, import and connect before the measured window
CONNS_PER_PROC = 8
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


def _client(
    url: str,
    body: bytes,
    seconds: float,
    out: Any,
    conns: int,
    rate: float | None,
    start_at: float,
    slot: float,
) -> None:
    """``conns`` connections for ``seconds`` from the wall-clock time ``start_at`` (every client
    process starts measuring together, after its imports and one unmeasured call per connection).
    Back to back when ``rate`` is None (closed loop: latency = queueing at saturation), else each
    connection sends on a fixed schedule so this process offers ``rate`` req/s, its phase offset
    by ``slot`` (0..1) among all processes; latency then counts from the scheduled time (a late
    answer delays the next send and that wait is counted: no coordinated omission)."""
    import httpx

    headers = {"content-type": "application/json"}

    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
            await asyncio.gather(*(client.post(url, content=body, headers=headers) for _ in range(conns)))
            await asyncio.sleep(max(0.0, start_at - time.time()))
            start = time.perf_counter()
            deadline = start + seconds

            async def worker(i: int) -> None:
                nonlocal errors
                period = conns / rate if rate else 0.0
                due = start + period * (i + slot) / conns
                while due < deadline and time.perf_counter() < deadline:
                    if rate:
                        await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    else:
                        due = time.perf_counter()
                    r = await client.post(url, content=body, headers=headers)
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - due)
                    else:
                        errors += 1
                    due += period

            await asyncio.gather(*(worker(i) for i in range(conns)))
        return latencies, errors

    out.put(asyncio.run(run()))


def load(
    url: str,
    body: bytes,
    seconds: float,
    server_pid: int,
    procs_n: int = CLIENT_PROCS,
    conns: int = CONNS_PER_PROC,
    rate: float | None = None,
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    per_proc = rate / procs_n if rate else None
    start_at = time.time() + STARTUP_S
    procs = [
        ctx.Process(target=_client, args=(url, body, seconds, q, conns, per_proc, start_at, k / procs_n))
        for k in range(procs_n)
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = cpu_seconds(server_pid)
    results = [q.get(timeout=seconds + 60) for _ in procs]
    cpu = cpu_seconds(server_pid) - cpu0
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
        "cpu_ms": cpu * 1000 / len(lat),
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seconds = float(args[0]) if args else 8.0
    body = json.dumps(request_body()).encode()
    tmp = tempfile.mkdtemp(prefix="pinpoint-bench-")
    pg_name = None
    database_url = f"sqlite:///{tmp}/bench.db"
    if "--postgres" in sys.argv:
        from tests.bench._pg import fresh_db

        pg_name, database_url = fresh_db()
    p_port, n_port = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PINPOINT_")}, "PYTHONPATH": str(ROOT)}
    here = str(Path(__file__).resolve())
    servers = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "pinpoint"), "serve", "--role", "recommender"],
            env={
                **env,
                "PINPOINT_DATABASE_URL": database_url,
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
        pinpoint_url = f"http://127.0.0.1:{p_port}/cds-services/pinpoint-patient-view"
        noop_url = f"http://127.0.0.1:{n_port}/noop"
        n_pid, p_pid = servers[1].pid, servers[0].pid
        load(noop_url, body, 1.0, n_pid)  # warm-up
        load(pinpoint_url, body, 1.0, p_pid)
        noop = load(noop_url, body, seconds, n_pid)
        cds = load(pinpoint_url, body, seconds, p_pid)
        target_rps = 0.25 * noop["rps"]
        paced = load(pinpoint_url, body, seconds, p_pid, rate=target_rps)
        single = load(pinpoint_url, body, seconds / 2, p_pid, 1, 1)
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(timeout=10)
        if pg_name is not None:
            from tests.bench._pg import drop_db

            drop_db(pg_name)
    store = "PostgreSQL" if pg_name else "SQLite"
    print(
        f"32 connections ({CLIENT_PROCS} client processes), {seconds:.0f} s each, 80-resource prefetch,"
        f" Pinpoint on {store}"
    )
    print("  saturation (each connection sends as soon as its answer arrives):")
    for name, r in (("no-op FastAPI", noop), ("pinpoint patient-view", cds)):
        print(
            f"    {name:22s} {r['rps']:6.0f} req/s   p50 {r['p50']:6.1f} ms   p99 {r['p99']:6.1f} ms"
            f"   server CPU {r['cpu_ms']:.2f} ms/call   ({r['n']:.0f} ok, {r['errors']:.0f} errors)"
        )
    print(
        f"  paced at 0.25 x the no-op's throughput ({target_rps:.0f} req/s offered, latency from the"
        f" scheduled send):\n    pinpoint patient-view  {paced['rps']:6.0f} req/s"
        f"   p50 {paced['p50']:6.1f} ms"
        f"   p99 {paced['p99']:6.1f} ms   ({paced['n']:.0f} ok, {paced['errors']:.0f} errors)"
    )
    print(
        f"  one connection: p50 {single['p50']:.1f} ms   p95 {single['p95']:.1f} ms"
        f"   p99 {single['p99']:.1f} ms   ({single['rps']:.0f} req/s)"
    )
    print(
        f"  host: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}"
        " (servers and load generator share them)"
    )
    ratio = cds["rps"] / noop["rps"]
    print(
        f"  throughput ratio {ratio:.2f} (target >= 0.25); p99 at 0.25 x no-op {paced['p99']:.1f} ms,"
        f" at saturation {cds['p99']:.1f} ms (target <= 40 ms)"
    )
    print(
        "  note: at saturation a closed loop of 32 connections has p50 ~ 32 / throughput (Little's law);"
        " the no-op's own p99 shows what the shared host adds"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--noop":
        serve_noop(int(sys.argv[2]))
    else:
        main()
