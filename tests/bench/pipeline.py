"""Benchmark: push → evaluate → suggestions stored, end to end on PostgreSQL (not a test).

Run: ``.venv/bin/python tests/bench/pipeline.py [N] [--workers 1,2]`` (default 1,000 patients;
PostgreSQL at ``PINPOINT_TEST_PG_URL`` or postgres@127.0.0.1:5432). For each worker count it
creates a fresh database, starts an ingest server (``pinpoint serve --role ingest``) and that many
``pinpoint worker`` processes on loopback, pushes one batch Bundle per synthetic patient (the
engine benchmark's generator, 20-60 resources each) and waits until every patient has been
evaluated and its suggestions stored (CarePlan, ServiceRequest, Provenance, outbox row).

Prints patients/s for the push phase, for the workers (first to last evaluation) and end to end
(first push to last evaluation); then, with the ingest pushes out of the way, the workers alone
on a queue pre-filled with every patient (suggestions dropped first, so every group is written
again). On 2 cores shared with PostgreSQL, the ingest server and the pusher, a second worker
process mostly shows contention while pushes run; on a pre-filled queue PostgreSQL is lightly
loaded and the Python work of two processes runs on both cores.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.db.session import make_engine, upgrade  # noqa: E402
from tests.bench.evaluate import patient  # noqa: E402

BIN = Path(sys.executable).parent
from tests.bench._pg import ADMIN_URL, admin  # noqa: E402
from tests.serving import free_port  # noqa: E402


def _admin(sql: str) -> None:
    admin(ADMIN_URL, sql)


def _spawn(url: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PINPOINT_")}
    environ.update({"PINPOINT_DATABASE_URL": url, "PINPOINT_LOG_LEVEL": "warning", **env})
    return subprocess.Popen([str(BIN / "pinpoint"), *args], env=environ, stdout=subprocess.DEVNULL)


def _bundle(resources: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(
        {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": r} for r in resources]}
    )


def run(n: int, workers: int, bodies: list[bytes]) -> dict[str, float]:
    name = f"pinpoint_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _admin(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(engine)
        port = free_port()
        procs.append(_spawn(url, "serve", "--role", "ingest", "--port", str(port)))
        procs += [_spawn(url, "worker", PINPOINT_WORKER_POLL_INTERVAL="1s") for _ in range(workers)]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("ingest server did not become ready")
                time.sleep(0.1)

            def post(body: bytes) -> None:
                r = client.post("/fhir", content=body, headers={"content-type": "application/fhir+json"})
                r.raise_for_status()

            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(post, bodies))
            pushed = time.perf_counter() - t0

        deadline = time.monotonic() + 600
        while True:
            with engine.connect() as conn:
                done = conn.execute(
                    sa.text("SELECT count(DISTINCT target) FROM audit_log WHERE action = 'evaluate'")
                ).scalar_one()
                depth = conn.execute(sa.text("SELECT count(*) FROM evaluation_queue")).scalar_one()
            if done >= n and depth == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {n} patients evaluated in time")
            time.sleep(0.05)
        end_to_end = time.perf_counter() - t0
        with engine.connect() as conn:
            first, last = conn.execute(
                sa.text("SELECT min(at), max(at) FROM audit_log WHERE action = 'evaluate'")
            ).one()
            plans = conn.execute(
                sa.text("SELECT count(*) FROM suggestion WHERE resource_type = 'CarePlan'")
            ).scalar_one()
            outbox = conn.execute(sa.text("SELECT count(*) FROM outbox")).scalar_one()
            evaluations = conn.execute(
                sa.text("SELECT count(*) FROM audit_log WHERE action = 'evaluate'")
            ).scalar_one()
        span = max((last - first).total_seconds(), 1e-6)
        for p in procs[1:]:
            p.terminate()
            p.wait(timeout=15)
        drain_s, drain_span = _drain_again(engine, url, workers)
        return {
            "drain_s": drain_s,
            "drain_span_s": drain_span,
            "push_s": pushed,
            "end_to_end_s": end_to_end,
            "worker_span_s": span,
            "careplans": plans,
            "outbox": outbox,
            "evaluations": evaluations,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        engine.dispose()
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drain_again(engine: sa.engine.Engine, url: str, workers: int) -> tuple[float, float]:
    """Workers alone: forget the suggestions, mark everyone dirty, time ``worker --once`` x k."""
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE suggestion, assessment, outbox, audit_log"))
        conn.execute(
            sa.text(
                "INSERT INTO evaluation_queue (patient_key, generation, dirty_since, attempts) "
                "SELECT DISTINCT patient_key, 1, now(), 0 FROM resource WHERE patient_key IS NOT NULL"
            )
        )
    t0 = time.perf_counter()
    drains = [_spawn(url, "worker", "--once") for _ in range(workers)]
    for p in drains:
        p.wait(timeout=600)
    elapsed = time.perf_counter() - t0
    with engine.connect() as conn:
        first, last = conn.execute(
            sa.text("SELECT min(at), max(at) FROM audit_log WHERE action = 'evaluate'")
        ).one()
    return elapsed, max((last - first).total_seconds(), 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=1000)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    rng = random.Random(20250317)
    bodies = [_bundle(patient(i, rng)) for i in range(args.n)]
    resources = sum(len(orjson.loads(b)["entry"]) for b in bodies)
    print(f"patients: {args.n}, resources pushed: {resources}, cores: {os.cpu_count()}")
    for k in (int(x) for x in args.workers.split(",")):
        r = run(args.n, k, bodies)
        print(
            f"workers={k}: push {args.n / r['push_s']:,.0f} patients/s ({r['push_s']:.1f} s); "
            f"workers {args.n / r['worker_span_s']:,.0f} patients/s (first→last evaluation "
            f"{r['worker_span_s']:.1f} s); end to end {args.n / r['end_to_end_s']:,.0f} patients/s "
            f"({r['end_to_end_s']:.1f} s); evaluations {r['evaluations']:.0f}, CarePlans "
            f"{r['careplans']:.0f}, outbox {r['outbox']:.0f}"
        )
        print(
            f"workers={k}, queue pre-filled: {args.n / r['drain_span_s']:,.0f} patients/s "
            "evaluated and stored "
            f"(first→last {r['drain_span_s']:.1f} s; {r['drain_s']:.1f} s with process start)"
        )


if __name__ == "__main__":
    main()
