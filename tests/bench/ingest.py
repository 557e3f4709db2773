"""Bulk import benchmark (issue 5): ``pinpoint import`` of ../shared/realdata into PostgreSQL.

Prints resources/s, peak RSS, and the ratio to a raw ``COPY`` of the same (source, type, id,
json) rows into an equivalent table, measured in the same run; then peak RSS for a synthetic
NDJSON file at 1x and 8x size (flat memory means the two are about equal).

    .venv/bin/python tests/bench/ingest.py [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Targets: >= 5,000 resources/s, >= 0.2 of raw COPY, peak RSS independent of file size.
Not collected by pytest; needs PostgreSQL and ../shared/realdata.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

REALDATA = ROOT.parent / "shared" / "realdata"


from tests.bench._pg import admin as _admin  # noqa: E402
from tests.bench._pg import fresh_db as _fresh_db  # noqa: E402
from tests.bench._pg import raw_copy  # noqa: E402


def child(url: str, paths: list[str]) -> None:
    """One import in its own process, so that its peak RSS is its own."""
    from services.ingest.bulk import import_paths
    from shared.db.session import make_engine
    from shared.logging import configure_logging
    from shared.settings import Source

    configure_logging("warning", "console")
    engine = make_engine(url)
    report = import_paths(engine, Source(id="default"), [Path(p) for p in paths])
    engine.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "resources": report.resources,
                "seconds": report.seconds,
                "kept": report.tally.total("kept"),
                "peak_rss_mb": peak_mb,
            }
        )
    )


def run_child(url: str, paths: list[Path]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, *map(str, paths)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def synthetic_ndjson(folder: Path, copies: int) -> Path:
    """Observation.ndjson of pathling repeated ``copies`` times with fresh ids."""
    src = REALDATA / "bulk-ndjson" / "pathling-encoders-R4" / "Observation.ndjson"
    lines = src.read_bytes().splitlines()
    out = folder / f"Observation-x{copies}.ndjson"
    with out.open("wb") as fh:
        for k in range(copies):
            for line in lines:
                fh.write(line.replace(b'"id":"', f'"id":"c{k}-'.encode(), 1) + b"\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--pg",
        default=os.environ.get(
            "PINPOINT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    if not REALDATA.exists():
        sys.exit("../shared/realdata is not present")
    dbs: list[str] = []
    try:
        name, url = _fresh_db(args.pg)
        dbs.append(name)
        first = run_child(url, [REALDATA])
        again = run_child(url, [REALDATA])
        n_copy, copy_s = raw_copy(url, REALDATA)
        rate = first["resources"] / first["seconds"]
        copy_rate = n_copy / copy_s
        print(f"realdata: {int(first['resources'])} resources, {int(first['kept'])} kept")
        print(f"  import (empty db):   {rate:10,.0f} resources/s  ({first['seconds']:.2f} s)")
        print(f"  re-import (dupes):   {again['resources'] / again['seconds']:10,.0f} resources/s")
        print(f"  raw COPY same rows:  {copy_rate:10,.0f} resources/s  ({copy_s:.2f} s)")
        print(f"  ratio import / COPY: {rate / copy_rate:10.2f}   (target >= 0.2)")
        print(f"  peak RSS (import):   {first['peak_rss_mb']:10.0f} MB")
        with tempfile.TemporaryDirectory() as tmp:
            for copies in (1, 8):
                name, url = _fresh_db(args.pg)
                dbs.append(name)
                path = synthetic_ndjson(Path(tmp), copies)
                res = run_child(url, [path])
                size = path.stat().st_size / 1e6
                print(
                    f"  NDJSON {size:6.1f} MB: peak RSS {res['peak_rss_mb']:5.0f} MB, "
                    f"{res['resources'] / res['seconds']:,.0f} resources/s"
                )
    finally:
        for name in dbs:
            _admin(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
