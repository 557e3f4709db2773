"""Outcomes across the practice (issue 19): ``pinpoint outcomes [--since DATE] [--format …]``.

Per pathway, over every stored patient's definitive or therapeutic procedures (the ``outcomes`` of
the assessment document) performed on or after ``--since``:

- ``procedures``: how many;
- ``criteriaMetBefore``: the share whose pathway was ``supported`` for that target when judged on
  the day before the procedure (the precision rate: how often the definitive step followed
  criteria met at the time);
- ``relief3Months`` / ``relief6Months``: the share with >= the relief threshold at that milestone,
  among the procedures whose milestone is due and has a pain score (``n`` given);
- ``medianReliefDays``: the Kaplan–Meier median duration of relief (censored durations honoured;
  null while the curve has not fallen to one half), with the curve's steps;
- ``function``: per instrument, the median change at 3 months (towards better, in the
  instrument's points) and the share reaching its MCID.

:func:`summarize` is pure (over outcome rows); :func:`collect` reads the store in batches (in
parallel processes over a large PostgreSQL store); :func:`practice_summary` is both, the one
path of the command and the page.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import multiprocessing
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from itertools import repeat
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.recommender.assessor import Assessor
from services.recommender.engine.wording import pathway_text
from services.recommender.outcomes import cache
from services.recommender.patients.repository import fingerprints, load_patients, patient_keys_with_resources
from shared.db.session import make_engine
from shared.domain.terminology import FUNCTION_NAMES
from shared.humanize import plural
from shared.logging import get_logger

log = get_logger("pinpoint.outcomes")

BATCH = 250
#: below this many patients the summary is computed in the calling process (no process start-up)
PARALLEL_MIN = 2000


@dataclass(frozen=True, slots=True)
class Row:
    """One procedure's outcome and whether its pathway's criteria were met the day before it."""

    outcome: Mapping[str, Any]
    criteria_met: bool | None  # None: no assessment of that pathway and target the day before


def rows_of(assessor: Assessor, resources: Sequence[Mapping[str, Any]], now: datetime) -> list[Row]:
    """One patient's (or a bundle's) rows: its procedures' outcomes at ``now`` and the criteria
    on the day before each (:meth:`Assessor.procedure_outcomes`)."""
    return [Row(o, met) for o, met in assessor.procedure_outcomes(resources, now)[0]]


def _rows_of_keys(
    engine: Engine, assessor: Assessor, now: datetime, keys: Sequence[str], tag: str
) -> tuple[list[Row], int]:
    """The rows of ``keys`` in that order, ``BATCH`` patients at a time: from the outcome cache
    where its entry is still the same, else evaluated (and the entry replaced). Also how many
    patients were evaluated."""
    rows: list[Row] = []
    evaluated = 0
    for i in range(0, len(keys), BATCH):
        batch = keys[i : i + BATCH]
        with Session(engine) as session:
            stored = cache.usable(session, batch, tag, now)
            current = fingerprints(session, {k: e.refs for k, e in stored.items()}) if stored else {}
            hits = {k: e for k, e in stored.items() if current.get(k) == e.fingerprint}
            loaded = load_patients(session, [k for k in batch if k not in hits], fingerprint=True)
        fresh: list[dict[str, Any]] = []
        for key in batch:
            entry = hits.get(key)
            if entry is not None:
                rows += [Row(o, met) for o, met in entry.rows]
                continue
            found, stored_entry = cache.evaluate(assessor, tag, key, loaded[key], now)
            rows += [Row(o, met) for o, met in found]
            fresh.append(stored_entry)
        evaluated += len(fresh)
        cache.store(engine, fresh)
    return rows, evaluated


_WORKER: dict[str, Engine] = {}


def _rows_of_range(
    url: str, assessor: Assessor, now: datetime, tag: str, keys: Sequence[str]
) -> tuple[list[tuple[Mapping[str, Any], bool | None]], int]:
    """In a worker process: the rows of ``keys`` (its own engine, one connection, kept for the
    process's next range). The cyclic garbage collector is off while it reads and evaluates: the
    many live objects of a batch made it traverse them over and over (half the cost of reading);
    what is garbage is freed by reference counting, and one collection runs after the range."""
    engine = _WORKER.get(url)
    if engine is None:
        engine = _WORKER[url] = make_engine(url, pool_size=1)
    gc.disable()
    try:
        rows, evaluated = _rows_of_keys(engine, assessor, now, keys, tag)
        # sent back as plain tuples: pickling a slotted dataclass costs a fields() walk each
        return [(r.outcome, r.criteria_met) for r in rows], evaluated
    finally:
        gc.enable()
        gc.collect()


def collect(engine: Engine, assessor: Assessor, now: datetime, jobs: int | None = None) -> list[Row]:
    """Every stored patient's outcome rows, read ``BATCH`` patients at a time, each from the
    outcome cache while its entry is provably the same (:mod:`.cache`), else evaluated.

    On PostgreSQL with at least :data:`PARALLEL_MIN` patients, ``jobs`` processes (default: one
    per CPU) each take contiguous ranges of patients in turn (more ranges than processes, so a
    process slowed by other load takes fewer), each with its own connection; memory stays flat
    in the number of patients but for the rows themselves."""
    started = time.perf_counter()
    tag = cache.engine_tag(assessor)
    with Session(engine) as session:
        keys = patient_keys_with_resources(session)
    jobs = jobs or os.cpu_count() or 1
    rows: list[Row] = []
    evaluated = 0
    if jobs < 2 or engine.dialect.name != "postgresql" or len(keys) < PARALLEL_MIN:
        rows, evaluated = _rows_of_keys(engine, assessor, now, keys, tag)
    else:
        step = max(BATCH, -(-len(keys) // (jobs * 8)))
        ranges = [keys[i : i + step] for i in range(0, len(keys), step)]
        url = engine.url.render_as_string(hide_password=False)
        args = (repeat(url), repeat(assessor), repeat(now), repeat(tag), ranges)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for part, n in pool.map(_rows_of_range, *args):
                rows += [Row(o, met) for o, met in part]
                evaluated += n
    cache.prune(engine, keys)
    log.info(
        "outcomes.collected",
        patients=len(keys),
        evaluated=evaluated,
        procedures=len(rows),
        seconds=round(time.perf_counter() - started, 2),
    )
    return rows


def practice_summary(
    engine: Engine, assessor: Assessor, now: datetime, since: date | None = None
) -> dict[str, Any]:
    """The summary of ``pinpoint outcomes`` and ``GET /outcomes`` (one code path for both)."""
    return summarize(collect(engine, assessor, now), since)


def kaplan_meier(durations: Iterable[tuple[int, bool]]) -> tuple[list[tuple[int, float]], int | None]:
    """Steps ``(day, survival)`` of the Kaplan–Meier curve of ``(days, event)`` pairs (event =
    relief lost; not an event = censored) and the median: the first day survival <= 0.5."""
    events: Counter[int] = Counter()
    total: Counter[int] = Counter()
    for day, event in durations:
        total[day] += 1
        if event:
            events[day] += 1
    at_risk = sum(total.values())
    survival = 1.0
    steps: list[tuple[int, float]] = [(0, 1.0)]
    median: int | None = None
    for day in sorted(total):
        if events[day]:
            survival *= 1 - events[day] / at_risk
            steps.append((day, round(survival, 4)))
            if median is None and survival <= 0.5:
                median = day
        at_risk -= total[day]
    return steps, median


def _share(flags: Sequence[bool]) -> dict[str, Any]:
    return {"n": len(flags), "share": round(sum(flags) / len(flags), 3) if flags else None}


def _milestone(outcome: Mapping[str, Any], months: int) -> Mapping[str, Any] | None:
    return next((m for m in outcome.get("milestones") or [] if m.get("months") == months), None)


def summarize(rows: Iterable[Row], since: date | None = None) -> dict[str, Any]:
    """The practice summary per pathway (see the module docstring)."""
    by_pathway: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if since is not None and date.fromisoformat(str(row.outcome["performed"])[:10]) < since:
            continue
        by_pathway[str(row.outcome.get("pathway"))].append(row)
    out: dict[str, Any] = {"since": since.isoformat() if since else None, "pathways": []}
    for pathway, items in sorted(by_pathway.items()):
        judged = [r.criteria_met for r in items if r.criteria_met is not None]
        relief: dict[int, list[bool]] = {3: [], 6: []}
        for r in items:
            threshold = float(r.outcome.get("reliefThresholdPercent") or 50)
            for months in relief:
                m = _milestone(r.outcome, months)
                if m and m.get("status") == "due" and m.get("pain"):
                    relief[months].append(float(m["pain"]["reliefPercent"]) >= threshold)
        durations = [
            (int(r.outcome["reliefDays"]), not r.outcome.get("censored"))
            for r in items
            if r.outcome.get("reliefDays") is not None
        ]
        steps, median = kaplan_meier(durations)
        changes: dict[str, list[tuple[float, bool]]] = defaultdict(list)
        for r in items:
            m = _milestone(r.outcome, 3)
            for f in (m or {}).get("function") or []:
                if f.get("change") is not None:
                    changes[str(f["instrument"])].append((float(f["change"]), bool(f.get("meetsMcid"))))
        out["pathways"].append(
            {
                "pathway": pathway,
                "procedures": len(items),
                "criteriaMetBefore": _share([bool(j) for j in judged]),
                "relief3Months": _share(relief[3]),
                "relief6Months": _share(relief[6]),
                "reliefDurations": len(durations),
                "medianReliefDays": median,
                "kaplanMeier": [{"day": d, "survival": s} for d, s in steps],
                "function": [
                    {
                        "instrument": inst,
                        "n": len(vals),
                        "medianChange3Months": statistics.median(v for v, _ in vals),
                        "shareReachingMcid": round(sum(1 for _, ok in vals if ok) / len(vals), 3),
                    }
                    for inst, vals in sorted(changes.items())
                ],
            }
        )
    return out


def _pct(share: Mapping[str, Any]) -> str:
    if share["share"] is None:
        return "no data"
    return f"{round(share['share'] * 100)} % of {share['n']}"


def render(summary: Mapping[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(summary, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(
            ["pathway", "procedures", "criteria_met_before", "relief_3_months", "relief_6_months",
             "median_relief_days"]
        )  # fmt: skip
        for p in summary["pathways"]:
            writer.writerow(
                [
                    p["pathway"],
                    p["procedures"],
                    p["criteriaMetBefore"]["share"],
                    p["relief3Months"]["share"],
                    p["relief6Months"]["share"],
                    p["medianReliefDays"],
                ]
            )
        return buf.getvalue()
    since = summary.get("since")
    lines = [f"Outcomes of definitive procedures{' since ' + since if since else ''}."]
    if not summary["pathways"]:
        lines.append("No definitive or therapeutic procedure stored.")
    for p in summary["pathways"]:
        median = p["medianReliefDays"]
        lines += [
            "",
            f"{pathway_text(str(p['pathway']))}: {plural(p['procedures'], 'procedure')}",
            f"  criteria met the day before: {_pct(p['criteriaMetBefore'])}",
            f"  >= 50 % relief at 3 months: {_pct(p['relief3Months'])}; "
            f"at 6 months: {_pct(p['relief6Months'])}",
            "  median relief: "
            + (f"{median} days" if median is not None else "not reached")
            + f" (Kaplan-Meier over {plural(p['reliefDurations'], 'procedure')}, censoring honoured)",
        ]
        for f in p["function"]:
            lines.append(
                f"  {FUNCTION_NAMES.get(str(f['instrument']), str(f['instrument']))}: "
                f"median change at 3 months {f['medianChange3Months']:g} points, "
                f"{round(f['shareReachingMcid'] * 100)} % reaching the MCID (n = {f['n']})"
            )
    return "\n".join(lines) + "\n"
