"""Backfill benchmark (issue 21): N patients of realistic histories, import then workers, PostgreSQL.

    .venv/bin/python tests/bench/backfill.py [N=2000] [--jobs 2] [--workers 2] [--keep DIR]

Writes a Synthea-shaped Bulk Data export (one NDJSON file per resource type) for N patients: each
patient's pain history (the engine benchmark's generator: diagnosis, pain scores, medial branch
blocks with their pain diaries, radiofrequency ablation, follow-up scores, a draft order, heart
rates) inside Synthea-shaped noise (encounters, claims, explanations of benefit, diagnostic
reports, immunizations, vital signs), about 100 resources per patient. Then, on a fresh
PostgreSQL database:

1. a raw ``COPY`` of every line (type, id, JSON) into a scratch table: the floor of any import;
2. ``pinpoint import DIR --jobs J`` as its own process: resources/s and peak RSS;
3. ``W`` × ``pinpoint worker --once`` at the same time on the filled queue: patients/s to
   CarePlans (suggestions stored), peak RSS.

Prints per-stage rates, the import / COPY ratio, peak memory and ``/proc/loadavg``, and the time
projected for 10 M resources / 100 k patients from the measured rates. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench._load import loadavg  # noqa: E402
from tests.bench._pg import drop_db, fresh_db, raw_copy  # noqa: E402
from tests.bench.evaluate import noise, patient  # noqa: E402
from tests.serving import PINPOINT, clean_env  # noqa: E402


def write_export(folder: Path, n: int, seed: int = 20260317) -> tuple[int, int]:
    """One NDJSON file per type, written as generated (memory flat in N): (resources, bytes)."""
    rng = random.Random(seed)
    files: dict[str, IO[bytes]] = {}
    count = 0
    try:
        for i in range(n):
            history = patient(i, rng)
            for res in history + noise(history[0]["id"], rng):
                rtype = res["resourceType"]
                fh = files.get(rtype)
                if fh is None:
                    fh = files[rtype] = (folder / f"{rtype}.ndjson").open("wb")
                fh.write(orjson.dumps(res) + b"\n")
                count += 1
    finally:
        for fh in files.values():
            fh.close()
    return count, sum(p.stat().st_size for p in folder.glob("*.ndjson"))


_STAGE = """
import resource, subprocess, sys
procs = [subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL) for _ in range(int(sys.argv[1]))]
codes = [p.wait() for p in procs]
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(max(codes), usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
"""


def timed(args: list[str], env: dict[str, str], procs: int = 1) -> tuple[float, float, float]:
    """``procs`` copies of ``pinpoint <args>`` at once, under a small parent of their own so that
    the peak RSS is this stage's: (wall seconds, peak RSS MB of any process of the stage, CPU
    seconds of all its processes)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _STAGE, str(procs), str(PINPOINT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=7200,
        check=True,
    )
    wall = time.perf_counter() - t0
    code, peak_kb, cpu = out.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"pinpoint {' '.join(args)} exited with {code}")
    return wall, int(peak_kb) / 1024, float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="0: import only")
    parser.add_argument("--keep", type=Path, help="write the export here and keep it")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="pinpoint-backfill-")
    folder = args.keep or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    resources, size = write_export(folder, args.n)
    gen_s = time.perf_counter() - t0
    print(
        f"{args.n:,} patients, {resources:,} resources ({resources / args.n:.0f} each),"
        f" {size / 1e6:,.0f} MB NDJSON (written in {gen_s:.0f} s)"
    )
    from tests.bench._pg import BackendCPU  # lazy

    name, url = fresh_db()
    try:
        cpu0 = time.process_time()
        with BackendCPU(name) as copy_server:
            n_copy, copy_s = raw_copy(url, folder)
        copy_client = time.process_time() - cpu0
        env = clean_env(PINPOINT_DATABASE_URL=url, PINPOINT_LOG_LEVEL="warning")
        # Bytecode cached as in an installed deployment: not recompiled by every process started.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with BackendCPU(name) as import_server:
            import_s, import_rss, import_client = timed(
                ["import", str(folder), "--jobs", str(args.jobs)], env
            )
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT count(*) FROM resource")).scalar_one()
            queued = conn.execute(sa.text("SELECT count(*) FROM evaluation_queue")).scalar_one()
        import_load = loadavg()
        work_s, work_rss = 0.0, 0.0
        if args.workers:
            work_s, work_rss, _ = timed(["worker", "--once"], env, procs=args.workers)
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM evaluation_queue")).scalar_one()
            plans = conn.execute(
                sa.text("SELECT count(*) FROM suggestion WHERE resource_type = 'CarePlan'")
            ).scalar_one()
        engine.dispose()
    finally:
        drop_db(name)
        tmp.cleanup()
    import_rate, copy_rate = resources / import_s, n_copy / copy_s
    done = queued - left
    work_rate = done / work_s if work_s else 0.0
    copy_cpu = copy_client + copy_server.seconds
    import_cpu = import_client + import_server.seconds
    print(f"  raw COPY of every line:   {copy_rate:10,.0f} resources/s ({copy_s:.1f} s)")
    print(
        f"  pinpoint import --jobs {args.jobs}: {import_rate:10,.0f} resources/s ({import_s:.1f} s,"
        f" {kept:,} kept, {queued:,} patients queued); {import_rate / copy_rate:.2f} x raw COPY;"
        f" peak RSS {import_rss:.0f} MB"
    )
    print(
        f"  CPU (client + server): raw COPY {copy_client:.1f} + {copy_server.seconds:.1f} s ="
        f" {1e6 * copy_cpu / n_copy:.0f} us a resource; import {import_client:.1f} +"
        f" {import_server.seconds:.1f} s = {1e6 * import_cpu / resources:.0f} us a resource;"
        f" per CPU second, import {(copy_cpu / n_copy) / (import_cpu / resources):.2f} x raw COPY"
    )
    print(f"  /proc/loadavg after the import: {import_load}")
    if not args.workers:
        return
    print(
        f"  {args.workers} x pinpoint worker --once: {work_rate:10,.0f} patients/s ({work_s:.1f} s,"
        f" {done:,} evaluated, {left:,} left, {plans:,} CarePlans); peak RSS {work_rss:.0f} MB"
    )
    per_patient = resources / args.n
    projected = 10_000_000 / import_rate + 100_000 / work_rate
    print(
        f"  projected for 10 M resources / 100 k patients ({per_patient:.0f} a patient here): import"
        f" {10_000_000 / import_rate / 60:.1f} min + workers {100_000 / work_rate / 60:.1f} min ="
        f" {projected / 60:.1f} min (goal <= 20 min)"
    )
    print(f"  /proc/loadavg: {loadavg()} ({os.cpu_count()} CPUs, shared)")


if __name__ == "__main__":
    main()
