"""Documentation readiness per assessment and order check (issue 19; CONTRACT §8).

Each requirement a policy states for a pathway (``pathways.<id>.documentation``: requirement code
→ ``{source, required}``) is checked against the procedures the verdict used and the order itself:
``met``, ``missing`` or ``not-applicable`` (nothing to check yet, or the policy does not ask),
with the source's id and its name for a person (``sourceTitle``, from the policy's ``sources``).
A documentation gap never changes the verdict (CONTRACT §6 last "Verdicts" clause).

Requirements (L38773 [S2], CGS "Pathway to an RFA" [S3], SIJ [S18] and ESI [S19] LCDs):

- ``baseline-pain-scale``: every procedure used has a pain score before it (the block's baseline
  window; for an order with no procedure yet, a pain score in the long-term baseline window
  before the requested date);
- ``same-scale-each-block``: every diagnostic block used was scored on one pain scale, before and
  after;
- ``baseline-disability-scale``: a disability (functional) scale recorded before the first block
  of the series, within ``general.disability_baseline_window_days`` before it;
- ``imaging-guidance``: every procedure used and the order were done under CT or fluoroscopic
  guidance as their CPT codes state (ultrasound facet codes 0213T-0218T and the epidural codes
  without imaging 62320 / 62322 do not);
- ``no-sedation``: no diagnostic block used was done under IV sedation or anaesthesia.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from services.recommender.engine.relief import PatientContext, sides_compatible
from services.recommender.engine.wording import PAIN_SCALES
from shared import humanize
from shared.domain import terminology as t
from shared.domain.facts import Intervention

MET, MISSING, NOT_APPLICABLE = "met", "missing", "not-applicable"
NO_IMAGING_CPT = frozenset({"0213T", "0214T", "0215T", "0216T", "0217T", "0218T", "62320", "62322"})
_DIAGNOSTIC_KINDS = frozenset(
    {t.FACET_BLOCK, t.FACET_BLOCK_US, t.SIJ_BLOCK, t.SIJ_NERVE_BLOCK, t.GENICULAR_BLOCK}
)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _day(value: datetime) -> str:
    """'4 Mar 2025'."""
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def _blocks(procs: Sequence[Intervention]) -> list[Intervention]:
    return [iv for iv in procs if iv.kind in _DIAGNOSTIC_KINDS and iv.diagnostic]


def _baseline_pain(
    ctx: PatientContext, procs: Sequence[Intervention], on: date, evidence: Sequence[Mapping[str, Any]]
) -> tuple[str, str]:
    if procs:
        refs = {iv.ref for iv in procs}
        missing = [e for e in evidence if e.get("procedure") in refs and e.get("baseline") is None]
        if missing:
            return (
                MISSING,
                f"no pain score before the procedure of {humanize.day(missing[0].get('performed'))}",
            )
        return MET, "a pain score was recorded before each procedure"
    days = int(ctx.policy.g("long_term_baseline_days"))
    found = [r for r in ctx.facts.readings if 0 <= (on - r.time.date()).days <= days]
    if found:
        return MET, f"pain score {found[-1].value:g} on {_day(found[-1].time)}"
    return MISSING, f"no pain score in the {days} days before {on.isoformat()}"


def _same_scale(evidence: Sequence[Mapping[str, Any]], blocks: Sequence[Intervention]) -> tuple[str, str]:
    refs = {iv.ref for iv in blocks}
    items = [e for e in evidence if e.get("procedure") in refs]
    if not items:
        return NOT_APPLICABLE, "no diagnostic block yet"
    scales = {e.get("scale") for e in items if e.get("scale")}
    if any("scale-mismatch" in (e.get("reasons") or []) for e in items) or len(scales) > 1:
        return MISSING, "the blocks were not scored on one pain scale before and after"
    if not scales:
        return MISSING, "no pain scale recorded for the blocks"
    scale = str(next(iter(scales)))
    return MET, f"every block scored on {PAIN_SCALES.get(scale, 'one pain scale')}"


def _disability(
    ctx: PatientContext, procs: Sequence[Intervention], on: date, side: str | None
) -> tuple[str, str]:
    first = min((iv.start for iv in procs), default=None)
    window = timedelta(days=ctx.policy.g("disability_baseline_window_days"))
    if first is None:
        scores = [s for s in ctx.facts.function_scores if s.time.date() <= on]
        label = f"before {on.isoformat()}"
        lo = None
    else:
        scores = [s for s in ctx.facts.function_scores if s.time <= first]
        lo = first - window
        label = f"in the {window.days} days before the first block on {_day(first)}"
    scores = [s for s in scores if (lo is None or s.time >= lo) and sides_compatible(s.side, side)]
    if not scores:
        return MISSING, f"no disability scale {label}"
    s = scores[-1]
    name = t.FUNCTION_NAMES.get(s.instrument, s.instrument)
    unit = " %" if s.scale == "percent" else ""
    return MET, f"{name} {s.value:g}{unit} on {_day(s.time)}"


def _imaging(procs: Sequence[Intervention], order_codes: Sequence[str]) -> tuple[str, str]:
    codes = {c for iv in procs for c in iv.codes} | set(order_codes)
    if not codes:
        return NOT_APPLICABLE, "no procedure or order to check"
    unguided = sorted(codes & NO_IMAGING_CPT)
    if unguided:
        return MISSING, f"CPT {', '.join(unguided)}: not under CT or fluoroscopic guidance"
    return MET, "the CPT codes include CT or fluoroscopic guidance"


def _sedation(ctx: PatientContext, blocks: Sequence[Intervention]) -> tuple[str, str]:
    if not blocks:
        return NOT_APPLICABLE, "no diagnostic block yet"
    sedated = [iv for iv in blocks if ctx.sedated(iv)]
    if sedated:
        return MISSING, f"the block of {_day(sedated[0].end)} was done under sedation"
    return MET, "no block under sedation"


def _item(ctx: PatientContext, requirement: str, status: str, source: str, detail: str) -> dict[str, str]:
    return {
        "requirement": requirement,
        "status": status,
        "source": source,
        "sourceTitle": ctx.policy.source_title(source),
        "detail": detail,
    }


def check(
    ctx: PatientContext,
    pathway: str,
    evidence: Sequence[Mapping[str, Any]],
    on: date,
    side: str | None,
    order_codes: Sequence[str] = (),
) -> tuple[dict[str, str], ...]:
    """The ``documentation`` list of one assessment or order check (see the module docstring)."""
    spec = ctx.policy.pathways.get(pathway, {}).get("documentation") or {}
    by_ref = {iv.ref: iv for iv in ctx.completed}
    procs = [by_ref[str(e.get("procedure"))] for e in evidence if str(e.get("procedure")) in by_ref]
    blocks = _blocks(procs)
    out: list[dict[str, str]] = []
    for requirement, rule in spec.items():
        source = str(rule.get("source", ""))
        if not rule.get("required", True):
            out.append(_item(ctx, requirement, NOT_APPLICABLE, source, "not required by this policy"))
            continue
        if requirement == "baseline-pain-scale":
            status, detail = _baseline_pain(ctx, procs, on, evidence)
        elif requirement == "same-scale-each-block":
            status, detail = _same_scale(evidence, blocks)
        elif requirement == "baseline-disability-scale":
            status, detail = _disability(ctx, blocks or procs, on, side)
        elif requirement == "imaging-guidance":
            status, detail = _imaging(procs, order_codes)
        elif requirement == "no-sedation":
            status, detail = _sedation(ctx, blocks)
        else:
            continue
        out.append(_item(ctx, requirement, status, source, detail))
    return tuple(out)
