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

:func:`summarize` is pure (over outcome rows); :func:`collect` reads the store in batches.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.recommender.assessor import Assessor
from services.recommender.patients.repository import load_resources, patient_keys_with_data

BATCH = 200


@dataclass(frozen=True, slots=True)
class Row:
    """One procedure's outcome and whether its pathway's criteria were met the day before it."""

    outcome: Mapping[str, Any]
    criteria_met: bool | None  # None: no assessment of that pathway and target the day before


def _overlaps(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.get("region") != b.get("region"):
        return False
    sides = {a.get("side"), b.get("side")}
    if None not in sides and "bilateral" not in sides and len(sides) > 1:
        return False
    ja, jb = set(a.get("joints") or []), set(b.get("joints") or [])
    return not ja or not jb or bool(ja & jb)


def criteria_met_before(
    assessor: Assessor, facts: Any, patient_ref: str, outcome: Mapping[str, Any]
) -> bool | None:
    """Was the procedure's pathway ``supported`` for its target on the day before it?"""
    performed = datetime.fromisoformat(str(outcome["performed"]))
    day_before = performed - timedelta(days=1)
    entry = assessor.entry(facts, patient_ref, day_before)
    pathway = str(outcome.get("pathway"))
    wanted = {pathway, f"{pathway}-repeat"}
    verdicts = [
        a["verdict"]
        for a in entry.get("assessments") or []
        if a.get("pathway") in wanted and _overlaps(a.get("target") or {}, outcome.get("target") or {})
    ]
    if not verdicts:
        return None
    return "supported" in verdicts


def rows_of(assessor: Assessor, resources: Sequence[Mapping[str, Any]], now: datetime) -> list[Row]:
    out: list[Row] = []
    for ref, facts in assessor.facts(resources).items():
        entry = assessor.entry(facts, ref, now)
        for outcome in entry.get("outcomes") or []:
            out.append(Row(outcome, criteria_met_before(assessor, facts, ref, outcome)))
    return out


def collect(engine: Engine, assessor: Assessor, now: datetime, batch: int = BATCH) -> list[Row]:
    """Every stored patient's outcome rows, read ``batch`` patients at a time."""
    with Session(engine) as session:
        keys = patient_keys_with_data(session)
    rows: list[Row] = []
    for i in range(0, len(keys), batch):
        with Session(engine) as session:
            loaded = load_resources(session, keys[i : i + batch])
        for resources in loaded.values():
            rows += rows_of(assessor, resources, now)
    return rows


def kaplan_meier(durations: Iterable[tuple[int, bool]]) -> tuple[list[tuple[int, float]], int | None]:
    """Steps ``(day, survival)`` of the Kaplan–Meier curve of ``(days, event)`` pairs (event =
    relief lost; not an event = censored) and the median: the first day survival <= 0.5."""
    items = sorted(durations)
    at_risk = len(items)
    survival = 1.0
    steps: list[tuple[int, float]] = [(0, 1.0)]
    median: int | None = None
    i = 0
    while i < len(items):
        day = items[i][0]
        events = sum(1 for d, e in items[i:] if d == day and e)
        total = sum(1 for d, _ in items[i:] if d == day)
        if events:
            survival *= 1 - events / at_risk
            steps.append((day, round(survival, 4)))
            if median is None and survival <= 0.5:
                median = day
        at_risk -= total
        i += total
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
            f"{p['pathway']}: {p['procedures']} procedure(s)",
            f"  criteria met the day before: {_pct(p['criteriaMetBefore'])}",
            f"  >= 50 % relief at 3 months: {_pct(p['relief3Months'])}; "
            f"at 6 months: {_pct(p['relief6Months'])}",
            "  median relief: "
            + (f"{median} days" if median is not None else "not reached")
            + f" (Kaplan-Meier over {p['reliefDurations']} procedure(s), censoring honoured)",
        ]
        for f in p["function"]:
            lines.append(
                f"  {f['instrument']}: median change at 3 months {f['medianChange3Months']:g} points, "
                f"{round(f['shareReachingMcid'] * 100)} % reaching the MCID (n = {f['n']})"
            )
    return "\n".join(lines) + "\n"
