"""Benchmark: policy what-if over 10 k patients with realistic histories (not a test).

Run: ``.venv/bin/python tests/bench/whatif.py [PATIENTS]`` (default 10 000). Loads every vignette
as many times as needed, each copy its own patient (ids renamed), into a throw-away SQLite
database with ``pinpoint import``'s code, then times ``run_whatif`` cms-lcd → consensus-2020
over all of them and prints patients per second, the changes found and the peak memory.
Target: 10 000 patients within 60 s.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.ingest.bulk import expand, import_paths  # noqa: E402
from services.recommender.assessor import Assessor  # noqa: E402
from services.recommender.whatif import run_whatif  # noqa: E402
from shared.db.session import make_engine, upgrade  # noqa: E402
from shared.logging import configure_logging  # noqa: E402
from shared.settings import Settings  # noqa: E402

VIGNETTES = ROOT / "tests" / "fixtures" / "vignettes"
NOW = datetime.fromisoformat("2025-06-01T09:00:00-05:00")
TARGET_S = 60.0


def _copy(bundle: dict[str, Any], pid: str) -> list[dict[str, Any]]:
    renamed: dict[str, str] = {}
    resources = []
    for entry in bundle["entry"]:
        r = json.loads(json.dumps(entry["resource"]))
        new = pid if r["resourceType"] == "Patient" else f"{pid}-{r['id']}"
        renamed[f"{r['resourceType']}/{r['id']}"] = f"{r['resourceType']}/{new}"
        r["id"] = new
        resources.append(r)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (renamed.get(v, v) if k == "reference" else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return [walk(r) for r in resources]


def main() -> None:
    patients = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    configure_logging("warning", "console")
    bundles = [
        json.loads((p / "bundle.json").read_text())
        for p in sorted(VIGNETTES.iterdir())
        if (p / "bundle.json").exists()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ndjson = Path(tmp) / "patients.ndjson"
        made = 0
        with ndjson.open("w") as out:
            while made < patients:
                for bundle in bundles:
                    if made >= patients:
                        break
                    for r in _copy(bundle, f"B{made:06d}"):
                        out.write(json.dumps(r) + "\n")
                    made += 1
        url = f"sqlite:///{tmp}/bench.db"
        engine = make_engine(url)
        upgrade(engine)
        settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
        t0 = time.perf_counter()
        report = import_paths(engine, settings.config.source("default"), expand([ndjson]))
        print(
            f"loaded {made:,} patients ({report.resources:,} resources) in {time.perf_counter() - t0:.1f} s"
        )
        t0 = time.perf_counter()
        result = run_whatif(engine, Assessor.load("cms-lcd"), Assessor.load("consensus-2020"), NOW)
        seconds = time.perf_counter() - t0
        engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    changed = {p: result.changed(p) for p in sorted(result.matrix) if result.changed(p)}
    print(
        f"what-if cms-lcd -> consensus-2020: {result.patients:,} patients in {seconds:.1f} s "
        f"({result.patients / seconds:,.0f}/s); {len(result.changes):,} assessment(s) change: {changed}; "
        f"peak RSS {peak:.0f} MiB"
    )
    ok = seconds <= TARGET_S * patients / 10_000
    print(f"target: 10,000 patients within {TARGET_S:.0f} s: {'met' if ok else 'NOT met'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
