"""The evidence page's view model: per target the timeline, the checklist and the suggestion.

The verdicts are the engine's (the §3 entry of :class:`~services.recommender.assessor.Assessor`
at ``now``); the readings drawn are the ones the engine used for each block — baseline and
post-block readings assigned by :class:`~services.recommender.engine.relief.PatientContext` — so
the picture and the verdict cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from sqlmodel import Session, col, select

from services.recommender.assessor import Assessor
from services.recommender.engine import Policy
from services.recommender.engine.completeness import mark_unavailable
from services.recommender.engine.relief import PatientContext
from services.recommender.engine.wording import (
    ALERTS,
    VERDICTS,
    pathway_text,
    reason_text,
    sentence,
    target_text,
)
from services.recommender.evidence import chart
from services.recommender.evidence.checklist import Row, checklist
from services.recommender.evidence.outcomes import OutcomeView, outcome_views
from services.recommender.suggestions.builders import assessment_key, resource_id
from shared import humanize
from shared.db.models import Assessment
from shared.domain.facts import Intervention, PainReading, PatientFacts

_DEFINITIVE_LOOK_MONTHS = 7  # how far after a definitive procedure its readings are drawn


@dataclass(frozen=True, slots=True)
class TableRow:
    block: str
    time: datetime
    kind: str  # baseline | after block
    value: float
    relief: float | None
    at_or_above: bool | None


@dataclass(frozen=True, slots=True)
class ProcedureRow:
    """One procedure of the evidence, listed whether or not it has pain scores to draw."""

    label: str
    ref: str
    end: datetime
    agent: str
    drawn: bool
    positive: bool | None = None  # None: not a diagnostic block


@dataclass(frozen=True, slots=True)
class Record:
    careplan: str
    verdict: str
    evaluated_at: datetime


@dataclass(frozen=True, slots=True)
class TargetView:
    anchor: str
    heading: str
    pathway: str
    target: str
    verdict: str
    verdict_text: str
    principal: str | None
    other_reasons: tuple[str, ...]
    next_step: Mapping[str, Any] | None
    earliest: str | None
    threshold: float | None
    timeline: chart.Timeline
    table: tuple[TableRow, ...]
    checklist: tuple[Row, ...]
    record: Record | None
    order: str | None = None
    procedures: tuple[ProcedureRow, ...] = ()
    strip: chart.Strip | None = None
    documentation: tuple[DocumentationRow, ...] = ()


@dataclass(frozen=True, slots=True)
class DocumentationRow:
    """One requirement of the policy's documentation list (issue 19): never part of the verdict."""

    status: str  # met | missing | not-applicable
    status_text: str
    label: str
    text: str
    who: str


_DOCUMENTATION_STATUS = {
    "met": "Documented",
    "missing": "Missing",
    "not-applicable": "Not applicable",
    "unknown": "Not known: data not retrieved",
}
_DOCUMENTATION_LABELS = {
    "baseline-pain-scale": "Pain scale at baseline",
    "same-scale-each-block": "The same pain scale before and after each block",
    "baseline-disability-scale": "Disability scale at baseline",
    "imaging-guidance": "CT or fluoroscopic guidance",
    "no-sedation": "No sedation for diagnostic blocks",
}


def _documentation_rows(item: Mapping[str, Any]) -> tuple[DocumentationRow, ...]:
    rows = []
    for d in item.get("documentation") or []:
        if not isinstance(d, Mapping) or d.get("status") not in _DOCUMENTATION_STATUS:
            continue
        requirement = str(d.get("requirement") or "")
        rows.append(
            DocumentationRow(
                status=str(d["status"]),
                status_text=_DOCUMENTATION_STATUS[str(d["status"])],
                label=_DOCUMENTATION_LABELS.get(requirement, sentence(requirement.replace("-", " "))),
                text=sentence(str(d.get("detail") or "")),
                who=f"Required by {d.get('sourceTitle') or d.get('source')}",
            )
        )
    return tuple(rows)


@dataclass(frozen=True, slots=True)
class AlertView:
    code: str
    severity: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Person:
    """The page header: who this is (from the Patient resource, when present)."""

    name: str | None = None
    birth_date: date | None = None
    sex: str | None = None

    @classmethod
    def of(cls, header: Mapping[str, str] | None) -> Person | None:
        if not header:
            return None
        birth = header.get("birthDate")
        try:
            born = date.fromisoformat(birth[:10]) if birth and len(birth) >= 10 else None
        except ValueError:
            born = None
        return cls(header.get("name"), born, header.get("sex"))


@dataclass(frozen=True, slots=True)
class PageView:
    patient: str
    patient_key: str
    policy_id: str
    policy_version: str
    evaluated_at: datetime
    targets: tuple[TargetView, ...]
    alerts: tuple[AlertView, ...]
    orders: tuple[Mapping[str, Any], ...] = ()
    outcomes: tuple[OutcomeView, ...] = ()
    person: Person | None = None
    origin: str | None = None  # a sentence saying where the data came from, when not the store


def relief_threshold(policy: Policy, pathway: str) -> float | None:
    """The relief threshold drawn for a pathway: ``threshold``, else ``repeat_threshold``."""
    for key in ("threshold", "repeat_threshold"):
        value = policy.opt(pathway, key)
        if value is not None:
            return value
    return None


def _block_input(
    ctx: PatientContext, policy: Policy, iv: Intervention, item: Mapping[str, Any], label: str, pathway: str
) -> tuple[chart.BlockInput, list[PainReading], PainReading | None]:
    g = policy.g
    if iv.diagnostic:
        base = ctx.baseline(iv, timedelta(hours=g("baseline_window_hours")))
        post = [r for r in ctx.post_readings(iv) if base is None or r.scale == base.scale]
        window = policy.agent(iv.injectate.agent, iv.injectate.anaesthetics).minimum_minutes
    else:
        base = ctx.baseline(iv, timedelta(days=g("long_term_baseline_days")))
        until = iv.end + timedelta(days=31 * _DEFINITIVE_LOOK_MONTHS)
        post = [
            r
            for r in ctx.facts.readings
            if base is not None and r.scale == base.scale and iv.end < r.time <= until
        ]
        window = None
    block = chart.BlockInput(
        label=label,
        start=iv.start,
        end=iv.end,
        scale=base.scale if base else item.get("scale"),
        baseline=base.value if base else None,
        baseline_time=base.time if base else None,
        readings=[chart.Reading(r.time, r.value) for r in post],
        threshold=relief_threshold(policy, pathway),
        window_minutes=window,
        peak_relief=item.get("peakReliefPercent"),
        sustained_minutes=item.get("sustainedMinutes"),
        positive=bool(item.get("positive")),
        agent=str(item.get("agent") or iv.injectate.agent),
    )
    return block, post, base


def _table(
    blocks: Sequence[tuple[chart.BlockInput, list[PainReading], PainReading | None]],
) -> list[TableRow]:
    rows: list[TableRow] = []
    for block, post, base in blocks:
        if base is not None:
            rows.append(TableRow(block.label, base.time, "baseline", base.value, None, None))
        for r in post:
            relief = None if not base else max(0.0, (base.value - r.value) / base.value * 100.0)
            ok = None if relief is None or block.threshold is None else relief >= block.threshold
            rows.append(TableRow(block.label, r.time, "after the block", r.value, relief, ok))
    return rows


def _target_view(
    item: Mapping[str, Any],
    facts: PatientFacts,
    ctx: PatientContext,
    policy: Policy,
    policy_setting: str,
    index: int,
    record: Record | None,
    now: datetime,
    order: str | None = None,
) -> TargetView:
    pathway = str(item["pathway"])
    by_ref = {iv.ref: iv for iv in facts.interventions}
    blocks = []
    procedures: list[ProcedureRow] = []
    evidence = [e for e in item.get("evidence") or [] if isinstance(e, Mapping)]
    for n, e in enumerate(sorted(evidence, key=lambda e: str(e.get("performed"))), 1):
        iv = by_ref.get(str(e.get("procedure")))
        if iv is None:
            continue
        noun = "Block" if iv.diagnostic else "Procedure"
        block = _block_input(ctx, policy, iv, e, f"{noun} {n}", pathway)
        drawn = block[0].baseline is not None or bool(block[0].readings)
        if drawn:
            blocks.append(block)
        procedures.append(
            ProcedureRow(
                block[0].label,
                iv.ref,
                iv.end,
                str(e.get("agent") or "unknown"),
                drawn,
                bool(e.get("positive")) if iv.diagnostic else None,
            )
        )
    repeat = any(not by_ref[p.ref].diagnostic for p in procedures)
    reasons = [str(r) for r in item.get("reasons") or []]
    target = item.get("target") or (item.get("supportedTargets") or [None])[0]
    where = target_text(target) if target else ""
    heading = pathway_text(pathway) + (f" — {where}" if where else "")
    verdict = str(item.get("verdict"))
    return TargetView(
        anchor=f"target-{index}",
        heading=heading if order is None else f"Order {order.partition('/')[2]}: {heading}",
        pathway=pathway,
        target=where,
        verdict=verdict,
        verdict_text=sentence(VERDICTS.get(verdict, verdict)),
        principal=sentence(reason_text(reasons[0], item.get("unavailable"))) if reasons else None,
        other_reasons=tuple(sentence(reason_text(r)) for r in reasons[1:]),
        next_step=item.get("nextStep"),
        earliest=humanize.day(item["earliestDate"]) if item.get("earliestDate") else None,
        threshold=relief_threshold(policy, pathway),
        timeline=chart.timeline([b for b, _, _ in blocks]),
        table=tuple(_table(blocks)),
        checklist=checklist(item, policy, policy_setting, repeat=repeat),
        record=record,
        order=order,
        procedures=tuple(procedures),
        strip=chart.strip([(p.label.split()[-1], p.end, p.positive) for p in procedures], now)
        if procedures
        else None,
        documentation=_documentation_rows(item),
    )


def stored_records(session: Session, patient_key: str) -> dict[str, Record]:
    """The worker's current assessments of the patient, by assessment key."""
    rows = session.exec(
        select(Assessment).where(Assessment.patient_key == patient_key, col(Assessment.status) == "current")
    ).all()
    return {
        row.key: Record(f"CarePlan/{resource_id(row.key)}", row.verdict, row.evaluated_at) for row in rows
    }


def _evidence_set(item: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(str(e.get("procedure")) for e in item.get("evidence") or [] if isinstance(e, Mapping))


def data_zone(facts: PatientFacts) -> tzinfo | None:
    """The time zone the data was written in: the offset of its latest procedure or reading."""
    times = [iv.end for iv in facts.interventions] + [r.time for r in facts.readings]
    return max(times).tzinfo if times else None


def build(
    resources: Iterable[Mapping[str, Any]],
    patient_key: str,
    assessor: Assessor,
    policy_setting: str,
    now: datetime,
    records: Mapping[str, Record] | None = None,
    *,
    person: Person | None = None,
    origin: str | None = None,
    unavailable: frozenset[str] = frozenset(),
) -> PageView:
    """The page for one patient at ``now``, evaluated from ``resources`` (``unavailable``: kinds
    of data that could not be read, as for a CDS call)."""
    resources = list(resources)
    pid = patient_key.partition(":")[2]
    ref = f"Patient/{pid}"
    found = assessor.facts(resources).get(ref)
    entry = mark_unavailable(assessor.entry(found, ref, now), unavailable)
    return view(
        entry,
        found or PatientFacts(ref),
        patient_key,
        assessor.policy,
        policy_setting,
        now,
        records,
        person=person,
        origin=origin,
    )


def view(
    entry: Mapping[str, Any],
    facts: PatientFacts,
    patient_key: str,
    policy: Policy,
    policy_setting: str,
    now: datetime,
    records: Mapping[str, Record] | None = None,
    *,
    person: Person | None = None,
    origin: str | None = None,
    policy_ref: tuple[str, str] | None = None,
) -> PageView:
    """The page of an entry already evaluated (live, or an evidence snapshot's) and its facts."""
    pid = patient_key.partition(":")[2]
    ctx = PatientContext(facts, policy)
    records = records or {}
    targets: list[TargetView] = []
    shown: list[tuple[str, frozenset[str]]] = []
    for a in entry.get("assessments") or []:
        record = records.get(assessment_key(patient_key, a))
        targets.append(_target_view(a, facts, ctx, policy, policy_setting, len(targets) + 1, record, now))
        shown.append((str(a["pathway"]), _evidence_set(a)))
    for o in entry.get("orderChecks") or []:
        key = (str(o["pathway"]), _evidence_set(o))
        if key in shown:
            continue  # the same blocks are already drawn for this pathway
        targets.append(
            _target_view(
                o, facts, ctx, policy, policy_setting, len(targets) + 1, None, now, str(o.get("order"))
            )
        )
    alerts = tuple(
        AlertView(
            str(a.get("code")),
            str(a.get("severity") or "warning"),
            ALERTS.get(str(a.get("code")), str(a.get("code"))),
            str(a.get("text") or ""),
        )
        for a in entry.get("alerts") or []
    )
    zone = data_zone(facts)
    policy_id, policy_version = policy_ref or (policy.id, str(policy.version))
    return PageView(
        patient=pid,
        patient_key=patient_key,
        policy_id=policy_id,
        policy_version=policy_version,
        evaluated_at=now.astimezone(zone) if zone is not None else now,
        targets=tuple(targets),
        alerts=alerts,
        orders=tuple(order_summaries(entry)),
        outcomes=outcome_views(entry.get("outcomes") or [], policy),
        person=person,
        origin=origin,
    )


def order_summaries(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Order checks in plain words (verdict and principal reason) for the page's order list."""
    out = []
    for o in entry.get("orderChecks") or []:
        reasons = [str(r) for r in o.get("reasons") or []]
        out.append(
            {
                "order": o.get("order"),
                "pathway": pathway_text(str(o.get("pathway"))),
                "verdict": o.get("verdict"),
                "reason": sentence(reason_text(reasons[0], o.get("unavailable"))) if reasons else None,
            }
        )
    return out
