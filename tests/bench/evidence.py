"""Benchmark: the evidence page for the v02 vignette patient (not a test).

Run: ``.venv/bin/python tests/bench/evidence.py [N]`` (default 300 renders). Prints the time to
build the view model and render the HTML (normalise + evaluate + chart + Jinja2), and the full
``GET /patients/P-001/evidence`` through the ASGI app on SQLite with a signed link (load from
the store + verify + build + render), as p50/p95 in milliseconds, and the page size.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.recommender.assessor import Assessor  # noqa: E402
from services.recommender.evidence.page import build  # noqa: E402
from services.recommender.evidence.render import render_page  # noqa: E402
from services.server import Role, build_app  # noqa: E402
from shared.db.session import make_engine, upgrade  # noqa: E402
from shared.fhir.bundle import resolve  # noqa: E402
from shared.logging import configure_logging  # noqa: E402
from shared.settings import Settings  # noqa: E402

V02 = ROOT / "tests" / "fixtures" / "vignettes" / "v02-two-concordant-blocks"
NOW = datetime.fromisoformat("2025-03-10T08:00:00-05:00")


def _ms(samples: list[float]) -> str:
    qs = statistics.quantiles(samples, n=20)
    return f"p50 {statistics.median(samples) * 1000:.2f} ms, p95 {qs[18] * 1000:.2f} ms"


def render_only(n: int) -> None:
    data = json.loads((V02 / "bundle.json").read_text())
    resources = list(resolve((None, e["resource"]) for e in data["entry"]))
    evaluator = Assessor.load("cms-lcd")
    samples = []
    html = ""
    for _ in range(n):
        t0 = time.perf_counter()
        html = render_page(build(resources, "default:P-001", evaluator, "cms-lcd", NOW))
        samples.append(time.perf_counter() - t0)
    print(f"build + render (v02, {len(resources)} resources): {_ms(samples)}; {len(html) / 1024:.1f} KiB")


async def over_http(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        engine = make_engine(url)
        upgrade(engine)
        settings = Settings(database_url=url, api_tokens=["t"], link_secret="bench", _env_file=None)  # type: ignore[call-arg]
        app = build_app(settings, Role.all, engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            pushed = await client.post(
                "/fhir",
                content=(V02 / "bundle.json").read_bytes(),
                headers={"content-type": "application/fhir+json"},
            )
            assert pushed.status_code == 200, pushed.text
            link = app.state.recommender.links.url("P-001", now=datetime.now(UTC))
            path = link.split("http://127.0.0.1:8080", 1)[1] + "&now=2025-03-10T08:00:00-05:00"
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = await client.get(path)
                samples.append(time.perf_counter() - t0)
                assert r.status_code == 200
        engine.dispose()
    print(f"GET /patients/P-001/evidence (signed link, SQLite, in-process): {_ms(samples)}")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    configure_logging("warning", "console")
    render_only(count)
    asyncio.run(over_http(count))
