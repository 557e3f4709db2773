"""Evidence snapshots: what each CDS card was drawn from, so its link opens wherever the data came
from (CONTRACT §8; issue 17).

When a CDS call is answered, one row per card (keyed by the card's uuid) keeps the patient's §3
entry as the card saw it, the minimum facts it used — the blocks and procedures of the evidence
with their agents, the pain readings drawn around them, the sedations that touch them — the
policy values of its pathways, and the patient's name, birth date and sex: never raw resources.
Rows are queued to their own group-commit writer (off the answering path, flushed on graceful
stop) and expire after ``cds.evidence_retention`` (default 7 days); :func:`purge_forever` (a
background task the composition root starts) deletes expired rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from services.recommender.engine import Policy
from services.recommender.engine.relief import PatientContext
from shared.db.models import EvidenceSnapshot
from shared.domain.facts import Injectate, Intervention, PainReading, PatientFacts, Sedation, by_time_ref
from shared.logging import get_logger

log = get_logger("pinpoint.evidence.snapshots")
SNAPSHOT = EvidenceSnapshot.__table__  # type: ignore[attr-defined]
FORMAT = 1
#: How often the background task deletes expired snapshots.
PURGE_EVERY = timedelta(hours=1)
_DEFINITIVE_LOOK = timedelta(days=31 * 7)  # as the page draws a definitive procedure's readings


# ------------------------------------------------------------------------------- facts ↔ JSON


def _encode(value: Any) -> Any:
    """Dataclasses (facts, policy values), dates and tuples as JSON values: orjson's own reading of
    them (ISO 8601 dates, as ``isoformat``), at C speed — the Python walk this replaced was the
    largest part of building a CDS call's snapshot."""
    return orjson.loads(orjson.dumps(value))


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _intervention(d: Mapping[str, Any]) -> Intervention:
    inj = d.get("injectate") or {}
    return Intervention(
        ref=d["ref"],
        kind=d["kind"],
        codes=tuple(d.get("codes") or ()),
        status=d["status"],
        diagnostic=bool(d["diagnostic"]),
        intra_articular=bool(d["intra_articular"]),
        region=d["region"],
        joints=tuple(d.get("joints") or ()),
        side=d.get("side"),
        start=_dt(d["start"]),
        end=_dt(d["end"]),
        injectate=Injectate(
            agent=inj.get("agent", "unknown"),
            anaesthetics=tuple(inj.get("anaesthetics") or ()),
            steroid=inj.get("steroid"),
            steroid_mg=inj.get("steroid_mg"),
        ),
        based_on=tuple(d.get("based_on") or ()),
    )


def _reading(d: Mapping[str, Any]) -> PainReading:
    return PainReading(
        ref=d["ref"],
        scale=d["scale"],
        value=float(d["value"]),
        time=_dt(d["time"]),
        part_of=tuple(d.get("part_of") or ()),
        side=d.get("side"),
    )


def facts_from_json(data: Mapping[str, Any]) -> PatientFacts:
    """The :class:`PatientFacts` a snapshot kept (what the page draws: blocks, readings, sedations)."""
    birth = data.get("birth_date")
    return PatientFacts(
        patient=str(data["patient"]),
        sex=data.get("sex"),
        birth_date=date.fromisoformat(birth) if birth else None,
        interventions=tuple(_intervention(i) for i in data.get("interventions") or ()),
        readings=tuple(_reading(r) for r in data.get("readings") or ()),
        sedations=tuple(
            Sedation(s["ref"], _dt(s["start"]), _dt(s["end"]), s["agent"])
            for s in data.get("sedations") or ()
        ),
    )


def _evidence_refs(entry: Mapping[str, Any]) -> set[str]:
    items = [*(entry.get("assessments") or ()), *(entry.get("orderChecks") or ())]
    refs = {str(e.get("procedure")) for i in items for e in i.get("evidence") or () if isinstance(e, Mapping)}
    for alert in entry.get("alerts") or ():
        refs |= {str(r) for r in alert.get("evidence") or ()}
    return refs


def minimal_facts(
    facts: PatientFacts, entry: Mapping[str, Any], policy: Policy, ctx: PatientContext | None = None
) -> PatientFacts:
    """The facts the entry's evidence used: its procedures, the readings the page draws around
    them (baseline and after, as the engine assigned them) and the sedations that touch them.
    Re-judged on these facts alone, each block keeps its baseline and its readings. ``ctx``: the
    engine's context of ``facts`` from the evaluation (its readings already assigned)."""
    refs = _evidence_refs(entry)
    used = tuple(iv for iv in facts.interventions if iv.ref in refs)
    if ctx is None or ctx.facts is not facts:
        ctx = PatientContext(facts, policy)
    readings: dict[str, PainReading] = {}
    for iv in used:
        if iv.diagnostic:
            base = ctx.baseline(iv, timedelta(hours=policy.g("baseline_window_hours")))
            post = list(ctx.post_readings(iv))
        else:
            base = ctx.baseline(iv, timedelta(days=policy.g("long_term_baseline_days")))
            end, last = iv.end, iv.end + _DEFINITIVE_LOOK
            post = [r for r in facts.readings if end < r.time <= last]
        for r in [*([base] if base else []), *post]:
            readings[r.ref] = r  # a reference is one reading of the facts
    lookback = timedelta(minutes=policy.g("sedation_lookback_minutes"))
    sedations = tuple(
        s for s in facts.sedations if any(s.start <= iv.end and s.end >= iv.start - lookback for iv in used)
    )
    return PatientFacts(
        patient=facts.patient,
        sex=facts.sex,
        birth_date=facts.birth_date,
        interventions=used,
        readings=tuple(sorted(readings.values(), key=by_time_ref)),
        sedations=sedations,
    )


def policy_values(policy: Policy, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The policy values behind the entry's verdicts: general, agents and its pathways' keys, as
    JSON values — the same for every call of a policy naming the same pathways: computed once per
    policy and set of pathways (callers must not change them)."""
    pathways = tuple(
        sorted(
            {
                str(i.get("pathway"))
                for i in [*(entry.get("assessments") or ()), *(entry.get("orderChecks") or ())]
            }
        )
    )
    key = (id(policy), pathways)
    cached = _POLICY_VALUES.get(key)
    if cached is None or cached[0] is not policy:
        if len(_POLICY_VALUES) >= 256:  # policies replaced in a long-lived process (tests)
            _POLICY_VALUES.clear()
        values = {
            "id": policy.id,
            "version": str(policy.version),
            "general": dict(policy.general),
            "agents": {k: {"minimumMinutes": a.minimum_minutes} for k, a in policy.agents.items()},
            "pathways": {p: dict(policy.pathways[p]) for p in pathways if p in policy.pathways},
        }
        cached = _POLICY_VALUES[key] = (policy, _encode(values))
    return cached[1]


#: :func:`policy_values` by (policy identity, pathways); the policy is kept so its id stays its own.
_POLICY_VALUES: dict[tuple[int, tuple[str, ...]], tuple[Policy, dict[str, Any]]] = {}


def patient_header(resources: Iterable[Mapping[str, Any]], patient_id: str) -> dict[str, str] | None:
    """Name, birth date and sex of the Patient resource with ``patient_id``, when present."""
    for res in resources:
        if res.get("resourceType") == "Patient" and res.get("id") == patient_id:
            out: dict[str, str] = {}
            name = human_name(res.get("name"))
            if name:
                out["name"] = name
            if isinstance(res.get("birthDate"), str):
                out["birthDate"] = res["birthDate"]
            if isinstance(res.get("gender"), str):
                out["sex"] = res["gender"]
            return out or None
    return None


def human_name(names: Any) -> str | None:
    """``Mrs Jane Q Doe`` from FHIR HumanName (``official`` / ``usual`` first; ``text`` wins)."""
    if not isinstance(names, list):
        return None
    named = [n for n in names if isinstance(n, dict)]
    named.sort(key=lambda n: {"official": 0, "usual": 1}.get(str(n.get("use")), 2))
    for n in named:
        if isinstance(n.get("text"), str) and n["text"].strip():
            return str(n["text"]).strip()
        parts = [*(n.get("prefix") or []), *(n.get("given") or []), n.get("family") or ""]
        text = " ".join(str(p) for p in parts if isinstance(p, str) and p).strip()
        if text:
            return text
    return None


# ------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Snapshot:
    card: str
    patient_key: str
    service_id: str
    created_at: datetime
    expires_at: datetime
    data: Mapping[str, Any]

    @property
    def entry(self) -> Mapping[str, Any]:
        return self.data.get("entry") or {}

    @property
    def facts(self) -> PatientFacts:
        return facts_from_json(self.data.get("facts") or {"patient": self.entry.get("patient", "Patient/?")})

    @property
    def evaluated_at(self) -> datetime:
        return datetime.fromisoformat(str(self.data["evaluatedAt"]))


def snapshot_body(
    *,
    entry: Mapping[str, Any],
    facts: PatientFacts | None,
    policy: Policy,
    patient: Mapping[str, str] | None,
    now: datetime,
    unavailable: Iterable[str] = (),
    context: PatientContext | None = None,
) -> dict[str, Any]:
    """The snapshot of one call (shared by its cards); ``context``: the evaluation's, reused."""
    kept = minimal_facts(facts, entry, policy, context) if facts is not None else None
    raw: dict[str, Any] = {"entry": entry}
    if kept is not None:
        raw["facts"] = kept
    encoded = _encode(raw)  # one pass for the entry and the facts
    body: dict[str, Any] = {
        "format": FORMAT,
        "evaluatedAt": now.isoformat(),
        "entry": encoded["entry"],
        "policy": policy_values(policy, entry),
        "unavailable": sorted(unavailable),
    }
    if kept is not None:
        body["facts"] = encoded["facts"]
    if patient:
        body["patient"] = dict(patient)
    return body


def snapshot_rows(
    cards: Iterable[str],
    *,
    patient_key: str,
    service_id: str,
    body: Mapping[str, Any],
    now: datetime,
    retention: timedelta,
) -> list[dict[str, Any]]:
    return [
        {
            "card": card,
            "patient_key": patient_key,
            "service_id": service_id,
            "created_at": now,
            "expires_at": now + retention,
            "snapshot": dict(body),
        }
        for card in cards
    ]


_BY_CARD = sa.select(SNAPSHOT).where(SNAPSHOT.c.card == sa.bindparam("card"))


def load_snapshot(engine: Engine, card: str, now: datetime) -> Snapshot | None:
    """The card's snapshot, or None when unknown or expired."""
    with engine.connect() as conn:
        row = conn.execute(_BY_CARD, {"card": card}).mappings().first()
    if row is None or row["expires_at"] <= now:
        return None
    return Snapshot(
        row["card"],
        row["patient_key"],
        row["service_id"],
        row["created_at"],
        row["expires_at"],
        row["snapshot"],
    )


def purge_expired(engine: Engine, now: datetime) -> int:
    with engine.begin() as conn:
        result = conn.execute(sa.delete(SNAPSHOT).where(SNAPSHOT.c.expires_at <= now))
    return int(result.rowcount or 0)


async def purge_forever(
    engine: Engine, clock: Callable[[], datetime], every: timedelta = PURGE_EVERY
) -> None:
    """Delete expired snapshots now and then every ``every`` (a background task, ended by
    cancellation at shutdown)."""
    while True:
        try:
            removed = await asyncio.to_thread(purge_expired, engine, clock())
            if removed:
                log.info("evidence.snapshots.purged", rows=removed)
        except Exception as exc:  # the next round tries again; readiness is the audit writer's
            log.warning("evidence.snapshots.purge_failed", error=type(exc).__name__)
        await asyncio.sleep(every.total_seconds())
