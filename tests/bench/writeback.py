"""Benchmark: write-back delivery of the outbox to a FHIR server on loopback (not a test).

Run: ``.venv/bin/python tests/bench/writeback.py [N] [--fhir-version R4|R5]`` (default 1,000
patients; PostgreSQL at ``PINPOINT_TEST_PG_URL`` or postgres@127.0.0.1:5432). It creates a fresh
database, stores N synthetic patients (the engine benchmark's generator), evaluates them with the
worker (one outbox entry per suggestion group), then delivers the whole outbox to the in-memory
FHIR server on loopback — one transaction Bundle per entry, 16 patients in flight — and prints
entries/s. A second pass with nothing due measures the cost of an idle poll.

Servers: ``--server sink`` (default) is a minimal uvicorn app in a child process that answers every
transaction with a well-formed transaction-response (so the figure is Pinpoint's side: claim,
bundle, HTTP, bookkeeping); ``--server fake`` is the in-memory fake FHIR server in this process,
whose all-or-nothing transactions deep-copy its whole store (O(stored) per transaction) — it
measures the fake, not Pinpoint, beyond a few hundred entries.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.recommender.assessor import Assessor  # noqa: E402
from services.recommender.worker import Worker  # noqa: E402
from services.recommender.writeback import deliver_once  # noqa: E402
from shared.db.models import utcnow  # noqa: E402
from shared.db.session import make_engine, upgrade  # noqa: E402
from shared.settings import ConfigFile, Settings, Source, Writeback  # noqa: E402
from tests.bench._pg import ADMIN_URL, admin  # noqa: E402
from tests.fakes.fhir_server import FakeFhirServer, serve_in_thread  # noqa: E402
from tests.integration.worker.helpers import seed_store, synthetic  # noqa: E402
from tests.serving import free_port  # noqa: E402


def _admin(sql: str) -> None:
    admin(ADMIN_URL, sql)


SINK = r"""
import itertools, sys, orjson, uvicorn
counter = itertools.count(1)

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    bundle = orjson.loads(body) if body else {}
    entries = []
    for entry in bundle.get("entry") or []:
        request = entry["request"]
        rtype = request["url"].split("?")[0]
        rid = entry["resource"].get("id") or str(next(counter))
        created = request["method"] == "POST"
        entries.append({"response": {
            "status": "201 Created" if created else "200 OK",
            "location": f"{rtype}/{rid}/_history/1", "etag": 'W/"1"'}})
    answer = orjson.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/fhir+json")]})
    await send({"type": "http.response.body", "body": answer})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


@contextmanager
def _sink() -> Iterator[str]:
    """A minimal transaction sink in a child process; yields its FHIR base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=1000)
    parser.add_argument("--fhir-version", default="R4", choices=["R4", "R5"])
    parser.add_argument("--server", default="sink", choices=["sink", "fake"])
    args = parser.parse_args()
    name = f"pinpoint_bench_wb_{uuid.uuid4().hex[:6]}"
    _admin(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    fake = FakeFhirServer()
    try:
        upgrade(engine)
        with serve_in_thread(fake) as live, _sink() as sink_url:
            base = live.base_url if args.server == "fake" else sink_url
            settings = Settings(
                database_url=url,
                config=ConfigFile(
                    sources=[Source.model_validate({"id": "hosp", "fhir_base_url": base})],
                    writeback=Writeback(source="hosp", fhir_version=args.fhir_version),
                ),
                _env_file=None,  # type: ignore[call-arg]
            )
            seed_store(engine, synthetic(args.n))
            Worker(engine, settings, Assessor.load("cms-lcd")).drain(now=utcnow())
            with engine.connect() as conn:
                entries = conn.execute(
                    sa.text("SELECT count(*) FROM outbox WHERE status='pending'")
                ).scalar_one()
            started, cpu = time.perf_counter(), time.process_time()
            stats = asyncio.run(deliver_once(engine, settings))
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            idle = time.perf_counter()
            asyncio.run(deliver_once(engine, settings))
            idle = time.perf_counter() - idle
        print(f"patients: {args.n}, outbox entries: {entries}, FHIR {args.fhir_version}")
        print(f"delivered: {stats.sent} sent, {stats.retry} retried, {stats.parked} parked")
        print(f"wall {wall:.2f} s → {stats.sent / wall:.0f} entries/s (this process CPU {cpu:.2f} s)")
        if args.server == "fake":
            plans, provs = len(fake.all("CarePlan")), len(fake.all("Provenance"))
            print(f"fake server holds {plans} CarePlans, {provs} Provenances")
        print(f"idle pass (nothing due): {idle * 1000:.1f} ms")
    finally:
        engine.dispose()
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
