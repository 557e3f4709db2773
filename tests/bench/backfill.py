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
   CarePlans (suggestions stored), also after the processes' start-up, peak RSS; then everyone
   marked again and the workers run once more on unchanged data (a re-evaluation).
4. ``--before REF`` (e.g. ``main``): that commit (its source, ``git archive``, on this
   environment) imports the same export into a database of its own just before this branch's
   import, and its workers run the same two drains on that database, interleaved with these
   (before, after, before again, after again): CPU a resource / a patient and rates side by side,
   with ``/proc/loadavg`` at each.

For each stage also the CPU time of its processes and of the PostgreSQL backends serving them
(per resource / per patient), which the other work on a shared machine does not inflate as much
as wall time. Prints per-stage rates, the import / COPY ratio, peak memory and
``/proc/loadavg``, and the time projected for 10 M resources / 100 k patients from the measured
rates and from the CPU time. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.db.queue import mark_dirty  # noqa: E402
from shared.db.session import session_scope  # noqa: E402
from tests.bench._load import loadavg  # noqa: E402
from tests.bench._pg import BackendCPU, at_head_of, drop_db, fresh_db, raw_copy  # noqa: E402
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
import json, resource, subprocess, sys
procs = [subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, text=True) for _ in range(int(sys.argv[1]))]
outs = [p.communicate()[0] for p in procs]
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": max(p.returncode for p in procs), "peak_kb": use.ru_maxrss,
                  "cpu": use.ru_utime + use.ru_stime, "out": outs}))
"""


@dataclass
class Stage:
    wall: float  # seconds
    peak_mb: float  # peak RSS of any process of the stage
    cpu: float  # CPU seconds of the stage's processes (user + system)
    server: float  # CPU seconds of the PostgreSQL backends serving them
    out: list[str]  # each process's standard output


def timed(args: list[str], env: dict[str, str], database: str, procs: int = 1) -> Stage:
    """``procs`` copies of ``pinpoint <args>`` at once, under a small parent of their own so that
    the peak RSS and CPU time are this stage's, and the CPU time of the database backends
    serving them (:class:`~tests.bench._pg.BackendCPU`)."""
    t0 = time.perf_counter()
    with BackendCPU(database) as server:
        out = subprocess.run(
            [sys.executable, "-c", _STAGE, str(procs), str(PINPOINT), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=7200,
            check=True,
        )
    wall = time.perf_counter() - t0
    result = json.loads(out.stdout)
    if result["code"] != 0:
        raise SystemExit(f"pinpoint {' '.join(args)} exited with {result['code']}:\n{out.stderr[-2000:]}")
    return Stage(wall, result["peak_kb"] / 1024, result["cpu"], server.seconds, result["out"])


_DRAINED = re.compile(r"evaluated ([\d,]+) patients?\b.* in ([\d.]+) s \(([\d.]+) s CPU\)")


def _drain_figures(stage: Stage) -> tuple[float, float, float]:
    """From the workers' own report: (the longest drain's seconds, patients/s after start-up,
    CPU seconds of the drains)."""
    drains = [
        (int(m[1].replace(",", "")), float(m[2]), float(m[3]))
        for m in (_DRAINED.search(o) for o in stage.out)
        if m
    ]
    if not drains:
        return stage.wall, 0.0, stage.cpu
    seconds = max(sec for _, sec, _ in drains)
    return seconds, sum(n for n, _, _ in drains) / seconds, sum(cpu for _, _, cpu in drains)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="0: import only")
    parser.add_argument("--keep", type=Path, help="write the export here and keep it")
    parser.add_argument("--before", metavar="REF", help="also run the workers of git REF side by side")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="pinpoint-backfill-")
    src_tmp = tempfile.TemporaryDirectory(prefix="pinpoint-backfill-before-")
    folder = args.keep or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    resources, size = write_export(folder, args.n)
    gen_s = time.perf_counter() - t0
    print(
        f"{args.n:,} patients, {resources:,} resources ({resources / args.n:.0f} each),"
        f" {size / 1e6:,.0f} MB NDJSON (written in {gen_s:.0f} s)"
    )
    name, url = fresh_db()
    work: Stage | None = None
    again: Stage | None = None
    rewritten = 0
    side: list[tuple[str, str, Stage]] = []  # (code, drain, stage) of --before
    name_b = url_b = ""
    try:
        cpu0 = time.process_time()
        with BackendCPU(name) as copy_server:
            n_copy, copy_s = raw_copy(url, folder)
        copy_client = time.process_time() - cpu0
        env = clean_env(PINPOINT_DATABASE_URL=url, PINPOINT_LOG_LEVEL="warning")
        # Bytecode cached as in an installed deployment: not recompiled by every process started.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env_b: dict[str, str] = {}
        imp_b: tuple[Stage, str] | None = None
        if args.before:
            src = Path(src_tmp.name)  # not inside the export folder: the import reads it all
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", str(src / "services"), str(src / "shared")]
            )
            name_b, url_b = fresh_db()
            env_b = {**env, "PYTHONPATH": str(src), "PINPOINT_DATABASE_URL": url_b}
            at_head_of(src, url_b)
            load_b = loadavg()
            imp_b = (timed(["import", str(folder), "--jobs", str(args.jobs)], env_b, name_b), load_b)
        imp = timed(["import", str(folder), "--jobs", str(args.jobs)], env, name)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT count(*) FROM resource")).scalar_one()
            queued = conn.execute(sa.text("SELECT count(*) FROM evaluation_queue")).scalar_one()
        import_load = loadavg()
        if env_b and args.workers:
            side.append(
                (
                    args.before,
                    f"first drain (load {loadavg()})",
                    timed(["worker", "--once"], env_b, name_b, procs=args.workers),
                )
            )
        if args.workers:
            first_load = loadavg()
            work = timed(["worker", "--once"], env, name, procs=args.workers)
            if side:
                side.append(("this branch", f"first drain (load {first_load})", work))
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM evaluation_queue")).scalar_one()
            plans = conn.execute(
                sa.text("SELECT count(*) FROM suggestion WHERE resource_type = 'CarePlan'")
            ).scalar_one()
            written = conn.execute(sa.text("SELECT count(*) FROM suggestion")).scalar_one()
        if args.workers:  # everyone marked again, nothing changed: what a re-evaluation costs
            with session_scope(engine) as session:
                keys = session.execute(
                    sa.text("SELECT DISTINCT patient_key FROM resource WHERE patient_key IS NOT NULL")
                ).scalars()
                mark_dirty(session, list(keys))
            if env_b:
                engine_b = sa.create_engine(url_b)
                with session_scope(engine_b) as session:
                    keys = session.execute(
                        sa.text("SELECT DISTINCT patient_key FROM resource WHERE patient_key IS NOT NULL")
                    ).scalars()
                    mark_dirty(session, list(keys))
                engine_b.dispose()
                side.append(
                    (
                        args.before,
                        f"re-evaluation (load {loadavg()})",
                        timed(["worker", "--once"], env_b, name_b, procs=args.workers),
                    )
                )
            again_load = loadavg()
            again = timed(["worker", "--once"], env, name, procs=args.workers)
            if side:
                side.append(("this branch", f"re-evaluation (load {again_load})", again))
            with engine.connect() as conn:
                rewritten = conn.execute(sa.text("SELECT count(*) FROM suggestion")).scalar_one() - written
                cached = conn.execute(sa.text("SELECT count(*) FROM outcome_cache")).scalar_one()
            print(f"  outcome cache entries written by the workers: {cached:,} of {args.n:,} patients")
        engine.dispose()
    finally:
        drop_db(name)
        if env_b:
            drop_db(name_b)
        tmp.cleanup()
        src_tmp.cleanup()
    for code, drain, stage in side:
        _, rate, cpu = _drain_figures(stage)
        print(
            f"  workers of {code:<12} {drain}: {args.n / stage.wall:,.0f} patients/s whole"
            f" ({stage.wall:.1f} s), {rate:,.0f}/s after start-up; CPU {cpu * 1e3 / args.n:.2f} ms a"
            f" patient after start-up + server {stage.server * 1e3 / args.n:.2f} ms"
        )
    cores = os.cpu_count() or 1
    import_rate, copy_rate = resources / imp.wall, n_copy / copy_s
    copy_cpu = copy_client + copy_server.seconds
    import_cpu = imp.cpu + imp.server
    print(f"  raw COPY of every line:   {copy_rate:10,.0f} resources/s ({copy_s:.1f} s)")
    print(
        f"  pinpoint import --jobs {args.jobs}: {import_rate:10,.0f} resources/s ({imp.wall:.1f} s,"
        f" {kept:,} kept, {queued:,} patients queued); {import_rate / copy_rate:.2f} x raw COPY;"
        f" peak RSS {imp.peak_mb:.0f} MB"
    )
    print(
        f"  CPU (client + server): raw COPY {copy_client:.1f} + {copy_server.seconds:.1f} s ="
        f" {1e6 * copy_cpu / n_copy:.0f} us a resource; import {imp.cpu:.1f} +"
        f" {imp.server:.1f} s = {1e6 * import_cpu / resources:.0f} us a resource;"
        f" per CPU second, import {(copy_cpu / n_copy) / (import_cpu / resources):.2f} x raw COPY"
    )
    print(f"  /proc/loadavg after the import: {import_load}")
    if imp_b is not None:
        for code, stage, load in ((args.before, *imp_b), ("this branch", imp, import_load)):
            print(
                f"  import of {code:<12} (load {load}): {resources / stage.wall:,.0f} resources/s"
                f" ({stage.wall:.1f} s); CPU {stage.cpu:.1f} + server {stage.server:.1f} s ="
                f" {1e6 * (stage.cpu + stage.server) / resources:.0f} us a resource"
                f" ({1e6 * stage.cpu / resources:.0f} us without the server)"
            )
    if work is None:
        return
    done = queued - left
    work_rate = done / work.wall
    drain_s, drain_rate, drain_cpu = _drain_figures(work)
    print(
        f"  {args.workers} x pinpoint worker --once: {work_rate:10,.0f} patients/s ({work.wall:.1f} s,"
        f" {done:,} evaluated, {left:,} left, {plans:,} CarePlans); peak RSS {work.peak_mb:.0f} MB"
    )
    print(
        f"      after start-up ({work.wall - drain_s:.1f} s): {drain_rate:,.0f} patients/s;"
        f" CPU {work.cpu * 1e3 / max(done, 1):.2f} ms a patient ({drain_cpu * 1e3 / max(done, 1):.2f}"
        f" after start-up) + server {work.server * 1e3 / max(done, 1):.2f} ms a patient"
    )
    if again is not None:
        redo = _drain_figures(again)
        print(
            f"  re-evaluation, nothing changed ({args.workers} x pinpoint worker --once on everyone"
            f" marked again): {args.n / again.wall:,.0f} patients/s ({again.wall:.1f} s; after start-up"
            f" {redo[1]:,.0f}/s), CPU {redo[2] * 1e3 / args.n:.2f} ms a patient after start-up + server"
            f" {again.server * 1e3 / args.n:.2f} ms; {rewritten} suggestion rows written"
        )
    per_patient = resources / args.n
    import_min = 10_000_000 / import_rate / 60
    work_min = ((work.wall - drain_s) + 100_000 / drain_rate) / 60
    print(
        f"  projected for 10 M resources / 100 k patients ({per_patient:.0f} a patient here), at this"
        f" run's rates: import {import_min:.1f} min + workers {work_min:.1f} min ="
        f" {import_min + work_min:.1f} min (goal <= 20 min)"
    )
    cpu_import = import_cpu / resources * 10_000_000 / cores / 60
    # start-up once per process, then the drain's CPU (and the server's) per patient
    cpu_work = ((work.cpu - drain_cpu) + (drain_cpu + work.server) / max(done, 1) * 100_000) / cores / 60
    print(
        f"  the same from CPU time (client and server, all {cores} cores to ourselves):"
        f" import {cpu_import:.1f} min + workers {cpu_work:.1f} min = {cpu_import + cpu_work:.1f} min"
    )
    print(f"  /proc/loadavg: {loadavg()} ({cores} CPUs, shared)")


if __name__ == "__main__":
    main()
