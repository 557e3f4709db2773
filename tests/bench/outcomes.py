"""Benchmark: ``pinpoint outcomes`` over N patients on PostgreSQL, end to end (not a test).

    .venv/bin/python tests/bench/outcomes.py [N=5000] [--jobs 2] [--baseline] [--keep]

1. Builds N patients of realistic histories into a PostgreSQL database of its own (prefixed
   ``h19speed_``, migrated to head, dropped at the end unless ``--keep``): every single-patient
   vignette of ``tests/fixtures/vignettes`` (blocks with their pain diaries, ablations, repeat
   ablations, ESIs, SIJ and knee injections, pain and ODI / NDI / PROMIS scores over a year), each
   in 8 variants (pain and function scores moved by a point or a few, some follow-up readings
   missing), each patient a variant shifted by -420..+60 days, with Synthea-shaped noise
   (physiotherapy sessions, vital signs, encounters, claims) passed through ingest's own relevance
   check so that only what ``pinpoint import`` keeps is stored. Rows are written with ``COPY``
   exactly as ingest writes them (identity, patient key, content hash, raw JSON).
2. Times ``pinpoint outcomes --format json`` as its own process (wall time, peak RSS of it and
   its worker processes) and checks that the procedures per pathway are those seeded.
3. ``--workers W`` (the first summary after ingest): every seeded patient is marked dirty and
   drained by ``W`` × ``pinpoint worker --once`` at the same time (wall, CPU a patient), which
   store each patient's outcome cache entry; then the summary is timed and counts the patients it
   had to evaluate itself (entries it rewrote: ≈ 0 expected), then again cold (cache emptied: must
   give the same summary) and after 1 % changed.
4. ``--baseline``: also times the straightforward path in this process (every patient read in
   batches and evaluated in full, now and on the day before each procedure) and checks it gives
   the same summary.

Prints patients/s, wall time, peak memory and ``/proc/loadavg``; the figure that counts is
100,000 patients (target: under a minute).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import random
import re
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.ingest.intake.pipeline import Candidate, check, patient_key_of  # noqa: E402
from services.ingest.intake.repository import content_hash  # noqa: E402
from tests.bench._load import loadavg  # noqa: E402
from tests.bench._pg import admin, drop_db, fresh_db  # noqa: E402
from tests.bench.backfill import noise, timed  # noqa: E402
from tests.serving import clean_env  # noqa: E402

VIGNETTES = ROOT / "tests" / "fixtures" / "vignettes"
SOURCE = "default"
VARIANTS = 8
LN = "http://loinc.org"
#: a realistic day's churn: one pain score changed for 1 % of the patients (a new value each time)
CHANGE = (
    "UPDATE resource SET"
    " raw = jsonb_set(raw, '{valueInteger}', to_jsonb(((raw->>'valueInteger')::int + 1) % 11)),"
    " content_hash = md5(raw::text)"
    " WHERE resource_type = 'Observation' AND raw ? 'valueInteger' AND patient_key LIKE 'default:h19-%00'"
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_REF = re.compile(r"^([A-Z][A-Za-z]+)/(.+)$")


def _templates() -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for folder in sorted(VIGNETTES.iterdir()):
        bundle = folder / "bundle.json"
        if not bundle.exists():
            continue
        resources = [e["resource"] for e in orjson.loads(bundle.read_bytes())["entry"]]
        if sum(1 for r in resources if r["resourceType"] == "Patient") == 1:
            out.append((folder.name, resources))
    return out


def _perturb(resources: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Scores moved a little, a few follow-up readings missing (never the procedures)."""
    out = []
    for res in copy.deepcopy(resources):
        if res["resourceType"] == "Observation":
            if "partOf" not in res and rng.random() < 0.06:
                continue
            if isinstance(res.get("valueInteger"), int) and rng.random() < 0.35:
                res["valueInteger"] = min(10, max(0, res["valueInteger"] + rng.choice((-1, 1))))
            q = res.get("valueQuantity")
            if isinstance(q, dict) and isinstance(q.get("value"), int | float) and rng.random() < 0.5:
                hi = 10 if q["value"] <= 10 and q.get("unit") != "%" else 100
                q["value"] = min(hi, max(0, q["value"] + rng.choice((-1, 1)) * (1 if hi == 10 else 4)))
        out.append(res)
    return out


def _physio(pid: str, start: datetime, rng: random.Random) -> list[dict[str, Any]]:
    """Kept noise: physiotherapy sessions (conservative care) and heart rates (dropped)."""
    subj = {"reference": f"Patient/{pid}"}
    out: list[dict[str, Any]] = []
    for k in range(rng.randint(3, 9)):
        out.append(
            {
                "resourceType": "Procedure",
                "id": f"pt{k}",
                "status": "completed",
                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97110"}]},
                "subject": subj,
                "performedDateTime": (start + timedelta(days=7 * k)).isoformat(),
            }
        )
    for k in range(rng.randint(2, 6)):
        out.append(
            {
                "resourceType": "Observation",
                "id": f"hr{k}",
                "status": "final",
                "code": {"coding": [{"system": LN, "code": "8867-4"}]},
                "subject": subj,
                "effectiveDateTime": (start + timedelta(days=k)).isoformat(),
                "valueQuantity": {"value": 70 + k, "unit": "/min"},
            }
        )
    return out


def _relabel(value: Any, pid: str, ids: set[tuple[str, str]]) -> Any:
    """Ids and references rewritten to the placeholder patient ``§`` (each patient's own)."""
    if isinstance(value, dict):
        out = {k: _relabel(v, pid, ids) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and (m := _REF.match(ref)):
            kind, rid = m.groups()
            if kind == "Patient" and rid == pid:
                out["reference"] = "Patient/§"
            elif (kind, rid) in ids:
                out["reference"] = f"{kind}/§.{rid}"
        return out
    if isinstance(value, list):
        return [_relabel(v, pid, ids) for v in value]
    return value


class Variant:
    """One patient history as text templates (placeholder ``§`` for the patient, dates split out),
    with its kept resources only."""

    def __init__(self, name: str, resources: list[dict[str, Any]], rng: random.Random) -> None:
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        onset = min(datetime.fromisoformat(m) for m in _DATE.findall(orjson.dumps(resources).decode()))
        extra = _physio(pid, datetime(onset.year, onset.month, onset.day, 9, tzinfo=UTC), rng)
        extra += noise(pid, rng)[: rng.randint(10, 40)]
        kept = []
        for res in _perturb(resources, rng) + extra:
            decision = check(Candidate(0, res))
            assert decision.status in ("kept", "dropped"), (name, decision.reason)
            if decision.status == "kept":
                kept.append(res)
        ids = {(r["resourceType"], r["id"]) for r in kept}
        self.name = name
        self.resources = kept
        self.items: list[tuple[str, str, list[str]]] = []
        for res in kept:
            res = _relabel(res, pid, ids)
            res["id"] = "§" if res["resourceType"] == "Patient" else f"§.{res['id']}"
            text = orjson.dumps(res).decode()
            self.items.append((res["resourceType"], res["id"], _DATE.split(text) + _DATE.findall(text)))

    def render(self, pid: str, shift: int, cache: dict[str, str]) -> list[tuple[str, str, str]]:
        """(type, id, JSON) of each kept resource for patient ``pid``, dates moved by ``shift``."""
        out = []
        for rtype, rid, parts in self.items:
            n = (len(parts) + 1) // 2
            texts, dates = parts[:n], parts[n:]
            chunks = [texts[0]]
            for d, tail in zip(dates, texts[1:], strict=True):
                moved = cache.get(d)
                if moved is None:
                    moved = cache[d] = (date.fromisoformat(d) + timedelta(days=shift)).isoformat()
                chunks += (moved, tail)
            out.append((rtype, rid.replace("§", pid), "".join(chunks).replace("§", pid)))
        return out


def variants(seed: int = 19) -> list[Variant]:
    rng = random.Random(seed)
    return [Variant(name, res, rng) for name, res in _templates() for _ in range(VARIANTS)]


def _seed_range(args: tuple[str, int, int]) -> int:
    """COPY patients ``lo``..``hi`` (one process of the seeding)."""
    import psycopg  # lazy: benchmark only

    dsn, lo, hi = args
    vs = variants()
    now = datetime.now(UTC).isoformat()
    rows = 0
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY resource (source, resource_type, resource_id, patient_key, content_hash, deleted, raw,"
            " received_at) FROM STDIN"
        ) as out:
            for i in range(lo, hi):
                rng = random.Random(i)
                v = vs[i % len(vs)]
                pid = f"h19-{i:06d}"
                shift = rng.randint(-420, 60)
                cache: dict[str, str] = {}
                for rtype, rid, text in v.render(pid, shift, cache):
                    res = orjson.loads(text)
                    out.write_row(
                        (SOURCE, rtype, rid, patient_key_of(SOURCE, res), content_hash(res), False, text, now)
                    )
                    rows += 1
        conn.commit()
    return rows


def expected(n: int, now: datetime) -> Counter[str]:
    """Procedures per pathway seeded: each variant's (shifts never move a procedure past now)."""
    from services.recommender.assessor import Assessor  # lazy
    from services.recommender.outcomes.summary import rows_of  # lazy

    assessor = Assessor.load("cms-lcd")
    per: list[Counter[str]] = []
    for v in variants():
        per.append(Counter(str(r.outcome["pathway"]) for r in rows_of(assessor, v.resources, now)))
    total: Counter[str] = Counter()
    for i in range(n):
        total.update(per[i % len(per)])
    return total


def timed_outcomes(url: str) -> tuple[dict[str, Any], float, float]:
    """``pinpoint outcomes --format json`` as its own process: (summary, wall s, peak RSS MB)."""
    env = clean_env(PINPOINT_DATABASE_URL=url, PINPOINT_LOG_LEVEL="warning")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    stage = timed(["outcomes", "--format", "json"], env, _database_name(url))
    return orjson.loads(stage.out[0]), stage.wall, stage.peak_mb


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def drain_workers(url: str, n: int, workers: int) -> float:
    """Every patient marked dirty, then ``workers`` × ``pinpoint worker --once`` at once: wall s."""
    from shared.db.queue import mark_dirty  # lazy
    from shared.db.session import make_engine, session_scope  # lazy

    engine = make_engine(url)
    with session_scope(engine) as session:
        keys = session.execute(
            sa.text("SELECT DISTINCT patient_key FROM resource WHERE patient_key IS NOT NULL")
        ).scalars()
        marked = mark_dirty(session, list(keys))
    engine.dispose()
    env = clean_env(PINPOINT_DATABASE_URL=url, PINPOINT_LOG_LEVEL="warning")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    print(f"/proc/loadavg before: {loadavg()} ({os.cpu_count()} CPUs, shared)")
    stage = timed(["worker", "--once"], env, _database_name(url), procs=workers)
    wall = stage.wall
    print(
        f"{workers} x pinpoint worker --once on {marked:,} patients marked: {wall:.1f} s ="
        f" {marked / wall:,.0f} patients/s (whole processes); CPU {stage.cpu * 1e3 / marked:.2f} ms"
        f" a patient (+ {stage.server * 1e3 / marked:.2f} ms in PostgreSQL);"
        f" 100,000 patients ~ {100_000 / (marked / wall) / 60:.1f} min"
    )
    print(f"/proc/loadavg after:  {loadavg()}")
    return wall


def cache_state(url: str) -> tuple[int, datetime | None]:
    """(entries, latest ``computed_for``) of the outcome cache."""
    from shared.db.session import make_engine  # lazy

    engine = make_engine(url)
    with engine.connect() as conn:
        count, latest = conn.execute(sa.text("SELECT count(*), max(computed_for) FROM outcome_cache")).one()
    engine.dispose()
    return int(count), latest


def rewritten_since(url: str, mark: datetime | None) -> int:
    """Entries written after ``mark``: the patients the summary evaluated itself."""
    from shared.db.session import make_engine  # lazy

    engine = make_engine(url)
    with engine.connect() as conn:
        sql = "SELECT count(*) FROM outcome_cache" + (" WHERE computed_for > :m" if mark else "")
        n = conn.execute(sa.text(sql), {"m": mark} if mark else {}).scalar_one()
    engine.dispose()
    return int(n)


def baseline(url: str, now: datetime) -> tuple[dict[str, Any], float]:
    """The straightforward path: every patient read in batches, evaluated in full now and on the
    day before each procedure (what ``pinpoint outcomes`` did before it was made fast)."""
    from sqlmodel import Session  # lazy

    from services.recommender.assessor import Assessor  # lazy
    from services.recommender.outcomes.summary import summarize  # lazy
    from services.recommender.patients.repository import load_resources, patient_keys_with_data  # lazy
    from shared.db.session import make_engine  # lazy
    from tests.unit.engine.test_outcomes_fast import straightforward_rows  # lazy

    engine = make_engine(url)
    assessor = Assessor.load("cms-lcd")
    t0 = time.perf_counter()
    with Session(engine) as session:
        keys = patient_keys_with_data(session)
    rows = []
    for i in range(0, len(keys), 200):
        with Session(engine) as session:
            loaded = load_resources(session, keys[i : i + 200])
        for resources in loaded.values():
            rows += straightforward_rows(assessor, resources, now)
    summary = summarize(rows)
    engine.dispose()
    return summary, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=2, help="processes seeding the database")
    parser.add_argument("--baseline", action="store_true", help="also time the straightforward path")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    parser.add_argument("--url", help="an already seeded database: time only")
    parser.add_argument(
        "--workers", type=int, default=0, help="first drain every patient with this many worker processes"
    )
    args = parser.parse_args()
    now = datetime.now(UTC)
    vs = variants()
    print(
        f"{len(vs)} variants of {len(vs) // VARIANTS} vignettes, "
        f"{sum(len(v.resources) for v in vs) / len(vs):.0f} kept resources a patient on average"
    )
    name = None
    url = args.url
    if url is None:
        name, url = fresh_db()
    try:
        if name is not None:
            t0 = time.perf_counter()
            dsn = url.replace("postgresql+psycopg://", "postgresql://")
            step = -(-args.n // args.jobs)
            ranges = [(dsn, lo, min(args.n, lo + step)) for lo in range(0, args.n, step)]
            with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
                rows = sum(pool.map(_seed_range, ranges))
            admin(url, "VACUUM ANALYZE resource")
            print(f"seeded {args.n:,} patients, {rows:,} kept resources in {time.perf_counter() - t0:.0f} s")
        want = expected(args.n, now)
        admin(url, "TRUNCATE outcome_cache")  # cold means cold, also with --url
        runs: list[tuple[str, str | None]] = [
            ("cold: no cache (as after a backfill)", None),
            ("warm: nothing changed", None),
            ("warm, 1 % of patients changed since", CHANGE),
        ]
        if args.workers:
            drain_workers(url, args.n, args.workers)
            entries, _ = cache_state(url)
            print(f"  outcome cache entries stored by the workers: {entries:,} of {args.n:,} patients")
            runs = [
                ("after the workers drained everyone", None),
                ("cold: cache emptied (must give the same summary)", "TRUNCATE outcome_cache"),
                ("warm, 1 % of patients changed since", CHANGE),
            ]
        first: dict[str, Any] | None = None
        cold_wall = 0.0
        for label, change in runs:
            if change:
                admin(url, change)
            before = cache_state(url)[1] if args.workers else None
            print(f"/proc/loadavg before: {loadavg()} ({os.cpu_count()} CPUs, shared)")
            summary, wall, rss = timed_outcomes(url)
            if args.workers:
                print(f"  patients the summary evaluated itself: {rewritten_since(url, before):,}")
            got = {p["pathway"]: p["procedures"] for p in summary["pathways"]}
            ok = got == dict(want)
            print(
                f"pinpoint outcomes, {label}: {args.n:,} patients in {wall:.1f} s ="
                f" {args.n / wall:,.0f} patients/s (whole process: start, read, evaluate, summarise);"
                f" peak RSS {rss:.0f} MB; 100,000 patients ~ {100_000 / (args.n / wall):.0f} s"
                " (target < 60 s)"
            )
            print(f"/proc/loadavg after:  {loadavg()}")
            print(
                f"  procedures per pathway {'match' if ok else 'DO NOT match'} the seeded:",
                dict(sorted(got.items())),
            )
            if not ok:
                print(f"  seeded: {dict(sorted(want.items()))}")
                sys.exit(1)
            if first is None:
                first, cold_wall = summary, wall
                for p in summary["pathways"]:
                    print(
                        f"  {p['pathway']:<18} criteria met before {p['criteriaMetBefore']['share']}"
                        f" (n {p['criteriaMetBefore']['n']}), relief 3 mo {p['relief3Months']['share']},"
                        f" 6 mo {p['relief6Months']['share']}, median relief {p['medianReliefDays']} d"
                    )
            elif (not change or change.startswith("TRUNCATE")) and summary != first:
                print("  this summary DIFFERS from the first one")
                sys.exit(1)
        if args.baseline:
            ref, ref_s = baseline(url, now)
            same = {**ref, "since": None} == {**summary, "since": None}
            print(
                f"straightforward path (one process, in-process): {ref_s:.1f} s ="
                f" {args.n / ref_s:,.0f} patients/s; straightforward / cold = {ref_s / cold_wall:.1f} x;"
                f" same summary: {same}"
            )
            print(f"/proc/loadavg after:  {loadavg()}")
            if not same:
                sys.exit(1)
    finally:
        if name is not None:
            if args.keep:
                print(f"kept: {url}")
            else:
                drop_db(name)


if __name__ == "__main__":
    main()
