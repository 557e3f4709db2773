"""Sentences from the assessment document for a person: the "why" with its numbers and source,
the evidence per pathway, short targets and verdict words. Cards, the evidence page, CarePlan
texts and ``pinpoint evaluate --format text`` all use these, so they say the same thing.

Every function reads the §3 document (with its ``reasonDetails`` / ``sources`` extension,
docs/assessment-document.md) and never prints a resource id, an ISO date-time, a raw code or
``None``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from services.recommender.engine.wording import reason_text, sentence
from shared.domain import terminology as t
from shared.humanize import day, duration, listing, number, percent, plural

SCALES = {
    t.NRS_0_10: "NRS 0–10",
    t.SEVERITY_0_10: "pain severity 0–10",
    t.VAS: "VAS 0–100 mm",
}
AGENTS = {"unknown": "anaesthetic not named", "mixed": "mixed anaesthetics"}
SHORT_PATHWAYS = {
    "facet-diagnostic": "Diagnostic facet block",
    "facet-rfa": "Facet RFA",
    "facet-rfa-repeat": "Repeat facet RFA",
    "facet-therapeutic": "Therapeutic facet injection",
    "sij-diagnostic": "Diagnostic SIJ block",
    "sij-therapeutic": "Therapeutic SIJ injection",
    "sij-rfa": "SIJ RFA",
    "esi": "Epidural steroid injection",
    "genicular-rfa": "Genicular RFA",
    "knee-steroid": "Knee steroid injection",
}
VERDICT_WORDS = {
    "supported": "supported",
    "partially-supported": "partly supported",
    "not-met": "not met",
    "not-evaluable": "cannot decide",
    "needs-review": "needs review",
    "not-covered": "not covered",
    "deferred": "not yet",
}
ALERT_NAMES = {
    "cumulative-steroid": "Yearly steroid over the limit",
    "steroid-frequency": "Steroid injections too frequent",
    "sedation": "Block under sedation",
    "discordant-blocks": "Discordant comparative blocks",
    "prolonged-response": "Relief far longer than the anaesthetic",
}


def scale_name(code: Any) -> str:
    return SCALES.get(str(code), "pain scale") if code else "no scale"


def agent_name(agent: Any) -> str:
    return AGENTS.get(str(agent or "unknown"), str(agent or "unknown").lower())


def sources_of(document: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(s.get("id")): s for s in document.get("sources") or [] if isinstance(s, Mapping)}


def cite(source_id: Any, sources: Mapping[str, Mapping[str, Any]]) -> str:
    """``LCD L38773``: the short label of a source id (the id itself when unknown)."""
    if not source_id:
        return "no source named"
    found = sources.get(str(source_id))
    return str(found.get("label") or found.get("title")) if found else str(source_id)


def uncited(detail: Mapping[str, Any]) -> bool:
    """A reason that is no policy criterion, hence cites no source: ``data-unavailable`` (what
    could not be retrieved from the EHR, engine/completeness.py)."""
    return detail.get("code") == "data-unavailable"


def because(detail: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """``71.4 % relief after the block on 24 Feb 2025 < 80 % required (LCD L38773)``."""
    text = str(detail.get("text") or reason_text(str(detail.get("code") or "")))
    if uncited(detail):
        return text
    label = detail.get("sourceLabel") or cite(detail.get("source"), sources or {})
    return f"{text} ({label})"


def reasons(item: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per reason: the plain reason, then its numbers and source."""
    details = {str(d.get("code")): d for d in item.get("reasonDetails") or [] if isinstance(d, Mapping)}
    out = []
    for code in item.get("reasons") or []:
        d = details.get(str(code))
        plain = sentence(reason_text(str(code)))
        out.append(f"{plain}: {because(d, sources)}" if d else plain)
    return out


def cautions(item: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``Yearly steroid over the limit: 412 mg … > 200 mg threshold … (Brown-Beresford et al. 2022)``."""
    return [
        f"{ALERT_NAMES.get(str(c.get('code')), 'Alert')}: {because(c, sources)}"
        for c in item.get("cautions") or []
        if isinstance(c, Mapping)
    ]


def short_target(target: Mapping[str, Any] | None) -> str:
    """``right L4–S1`` for the contiguous joints L4-L5, L5-S1; ``left knee``; ``bilateral SIJ``."""
    if not target:
        return ""
    side = str(target.get("side") or "")
    joints = [str(j) for j in target.get("joints") or []]
    if not joints or joints in (["SIJ"], ["knee"]):
        return " ".join(p for p in (side, joints[0] if joints else str(target.get("region") or "")) if p)
    pairs = [j.split("-") for j in joints]
    contiguous = all(len(p) == 2 for p in pairs) and all(a[1] == b[0] for a, b in itertools.pairwise(pairs))
    where = f"{pairs[0][0]}–{pairs[-1][1]}" if contiguous and len(pairs) > 1 else ", ".join(joints)
    return f"{side} {where}".strip()


# A block with one of these reasons was not shown to fail: the data to judge it is missing.
UNJUDGED = frozenset({"no-baseline", "no-follow-up", "data-unavailable", "scale-mismatch", "low-baseline"})


def is_block(e: Mapping[str, Any]) -> bool:
    return "steroid-frequency" not in (e.get("reasons") or [])


def block_rows(evidence: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The evidence as rows a person reads: date, agent, pain before (scale), best relief,
    sustained, result (no ids)."""
    rows = []
    for e in evidence:
        if not isinstance(e, Mapping) or not is_block(e):
            continue
        base = e.get("baseline")
        before = "no score" if base is None else f"{number(base)} ({scale_name(e.get('scale'))})"
        reasons = [str(r) for r in e.get("reasons") or []]
        if e.get("positive"):
            result = "positive"
        elif UNJUDGED.intersection(reasons):
            result = "cannot be judged"  # missing data is no failed block: find the data first
        else:
            result = "not positive"
        why_not = [reason_text(r) for r in reasons]
        if why_not:
            result += ": " + "; ".join(why_not)
        rows.append(
            {
                "date": day(e.get("performed")),
                "agent": agent_name(e.get("agent")),
                "before": before,
                "relief": percent(e.get("peakReliefPercent")),
                "sustained": duration(e.get("sustainedMinutes"), "–")
                if e.get("peakReliefPercent") is not None
                else "–",
                "result": result,
            }
        )
    return rows


def injection_dates(evidence: Sequence[Mapping[str, Any]]) -> list[str]:
    return [day(e.get("performed")) for e in evidence if isinstance(e, Mapping) and not is_block(e)]


def positives(item: Mapping[str, Any]) -> list[float]:
    return [
        float(e["peakReliefPercent"])
        for e in item.get("evidence") or []
        if isinstance(e, Mapping) and e.get("positive") and e.get("peakReliefPercent") is not None
    ]


def decisive(item: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]]) -> str:
    """The number that decided: for a supported item the positive blocks and the threshold
    (``2 blocks, 86 % and 100 % relief (≥ 80 %)``), else the principal reason's numbers."""
    details = [d for d in item.get("reasonDetails") or [] if isinstance(d, Mapping)]
    if details:
        return because(details[0], sources)
    return _decisive_supported(item)


def _short_because(detail: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]]) -> str:
    if uncited(detail):
        return str(detail.get("summary") or detail.get("text"))
    label = detail.get("sourceLabel") or cite(detail.get("source"), sources)
    return f"{detail.get('summary') or detail.get('text')} ({label})"


def _decisive_supported(item: Mapping[str, Any]) -> str:
    if item.get("verdict") != "supported":
        return reason_text(str(item["reasons"][0])) if item.get("reasons") else ""
    reliefs = positives(item)
    threshold = item.get("reliefThreshold") or {}
    if reliefs:
        need = f" (≥ {percent(threshold['required'])})" if threshold.get("required") is not None else ""
        return f"{plural(len(reliefs), 'block')}, {listing([percent(r) for r in reliefs])} relief{need}"
    return ""


def headline(pathway: str, target: Mapping[str, Any] | None, item: Mapping[str, Any], sources: Any) -> str:
    """``Facet RFA, right L4–S1: supported — 2 blocks, 86 % and 100 % relief (≥ 80 %)`` within
    140 characters (the principal reason in words when its numbers do not fit)."""
    verdict = str(item.get("verdict") or "")
    where = short_target(target)
    name = SHORT_PATHWAYS.get(pathway, pathway)
    head = f"{name}{', ' + where if where else ''}: {VERDICT_WORDS.get(verdict, verdict)}"
    details = [d for d in item.get("reasonDetails") or [] if isinstance(d, Mapping)]
    why = decisive(item, sources)
    short = ""
    if details:
        short = _short_because(details[0], sources)
        if details[0].get("code") != str((item.get("reasons") or [""])[0]):
            short = ""
    if item.get("cautions"):
        caution = item["cautions"][0]
        alert = ALERT_NAMES.get(str(caution.get("code")), "an alert").lower()
        why = f"but {alert} ({number(caution.get('measured'))} mg)"
    for candidate in (
        f"{head} — {why}" if why else head,
        f"{head} — {short}" if short else head,
        f"{head} — {reason_text(str(item['reasons'][0]))}" if item.get("reasons") else head,
        head,
    ):
        if len(candidate) <= 140:
            return candidate
    return head[:139] + "…"
