"""Benchmark: the worklist (``GET /patients``) over 100 k patients on PostgreSQL (not a test).

Run: ``.venv/bin/python tests/bench/worklist.py [PATIENTS] [REQUESTS]`` (default 100 000 and 40).
Creates a throw-away PostgreSQL database (``PINPOINT_TEST_PG_URL``), fills ``worklist_entry``
with PATIENTS patients (1.3 assessments each on average; realistic mixes of pathways, verdicts,
alerts, sources, names and dates), then times whole requests through the ASGI app — filters,
search, a later page, the count and the HTML — as p50 / p95 per kind of page. Target: a
filtered page within 200 ms.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.recommender.engine import wording  # noqa: E402
from services.recommender.worklist.rows import ATTENTION, NO_DATE  # noqa: E402
from services.server import Role, build_app  # noqa: E402
from shared.db.models import WorklistEntry  # noqa: E402
from shared.db.session import make_engine  # noqa: E402
from shared.logging import configure_logging  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.bench._pg import drop_db, fresh_db  # noqa: E402

TARGET_MS = 200
GIVEN = ["Margaret", "James", "Aisha", "Wei", "Olga", "Carlos", "Fatima", "John", "Priya", "Lars", "Ana"]
FAMILY = ["Lindqvist", "Okafor", "Smith", "Nguyen", "Garcia", "Kowalski", "Haddad", "Brown", "Tanaka"]
PATHWAYS = list(wording.PATHWAYS)
VERDICTS = (
    ["not-met"] * 5
    + ["supported"] * 3
    + ["deferred"] * 2
    + ["not-evaluable"] * 2
    + ["needs-review", "partially-supported", "not-covered"]
)
ALERTS = list(wording.ALERTS)
SOURCES = ["default", "hospital-a", "hospital-b"]


def rows(patients: int, seed: int = 7) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    out: list[dict[str, object]] = []
    at = datetime(2025, 6, 1, tzinfo=UTC)
    for n in range(patients):
        source = rnd.choice(SOURCES)
        pid = f"P{n:07d}"
        name = f"{rnd.choice(GIVEN)} {rnd.choice(FAMILY)}{n % 997}"
        mrn = f"MRN{rnd.randrange(10**8):08d}"
        alerts = sorted({rnd.choice(ALERTS)}) if rnd.random() < 0.05 else []
        for k in range(1 if rnd.random() < 0.7 else 2):
            verdict = rnd.choice(VERDICTS)
            due = (
                at.date() + timedelta(days=rnd.randrange(-30, 120))
                if verdict in ("deferred", "not-met")
                else NO_DATE
            )
            out.append(
                {
                    "key": f"{source}:{pid}:a{k}",
                    "patient_key": f"{source}:{pid}",
                    "source": source,
                    "patient_id": pid,
                    "name": name,
                    "search": f"{name} {mrn} {pid}".lower(),
                    "pathway": rnd.choice(PATHWAYS),
                    "target": "right lumbar L4-L5, L5-S1",
                    "verdict": verdict,
                    "reason": "A second positive confirmatory block at the same joints is required",
                    "attention": 0 if alerts else ATTENTION[verdict],
                    "due": due,
                    "alerts": f",{','.join(alerts)}," if alerts else "",
                    "evaluated_at": at,
                }
            )
    return out


def fill(url: str, patients: int) -> int:
    engine = make_engine(url)
    data = rows(patients)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for i in range(0, len(data), 5000):
            conn.execute(WorklistEntry.__table__.insert(), data[i : i + 5000])  # type: ignore[attr-defined]
        conn.exec_driver_sql("ANALYZE worklist_entry")
    print(f"filled {len(data):,} worklist rows for {patients:,} patients in {time.perf_counter() - t0:.1f} s")
    engine.dispose()
    return len(data)


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[max(0, round(0.95 * len(ordered)) - 1)] * 1000


async def measure(url: str, requests: int) -> bool:
    settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
    engine = make_engine(url)
    app = build_app(settings, Role.recommender, engine)
    transport = httpx.ASGITransport(app=app)
    ok = True
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        first = await client.get("/patients", params={"pathway": "facet-rfa"})
        cursor = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
        pages = {
            "no filter": ("/patients", {}),
            "pathway": ("/patients", {"pathway": "facet-rfa"}),
            "verdict": ("/patients", {"verdict": "supported"}),
            "pathway + verdict": ("/patients", {"pathway": "esi", "verdict": "not-met"}),
            "any alert": ("/patients", {"alert": "any"}),
            "one alert": ("/patients", {"alert": "sedation"}),
            "source": ("/patients", {"source": "hospital-a"}),
            "next action by": ("/patients", {"due_by": "2025-06-15"}),
            "search name": ("/patients", {"q": "lindqvist12"}),
            "search id": ("/patients", {"q": "p0054321"}),
            "page 2 (keyset)": (cursor, {}),
        }
        print(f"GET /patients, {requests} requests each (whole request: query, count, HTML):")
        for label, (path, params) in pages.items():
            samples = []
            for _ in range(requests):
                t0 = time.perf_counter()
                r = await client.get(path, params=params)
                samples.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text[:300]
            p50, p95 = _ms(samples)
            rows_shown = r.text.count('<tr class="entry')
            verdict = "ok" if p95 <= TARGET_MS else "OVER"
            ok &= p95 <= TARGET_MS
            print(f"  {label:<18} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  ({rows_shown} rows shown)  {verdict}")
    engine.dispose()
    return ok


def main() -> None:
    patients = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    configure_logging("warning", "console")
    name, url = fresh_db()
    try:
        fill(url, patients)
        ok = asyncio.run(measure(url, requests))
    finally:
        drop_db(name)
    print(f"target: every filtered page p95 <= {TARGET_MS} ms: {'met' if ok else 'NOT met'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
