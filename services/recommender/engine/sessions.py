"""Sessions, caps and the prerequisites shared by pathways (CRITERIA §9.4; CONTRACT §6).

A session is all completed procedures of one family, cap region and calendar date. Cervical and
thoracic form one spinal region, lumbar and sacral another; the sacroiliac joint is one region
(both sides: the reading that counts more sessions protects the patient), each knee and each hip
is its own region. A junction joint takes its upper vertebra's region.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from functools import lru_cache

from services.recommender.engine import why
from services.recommender.engine.model import DEFERRED, NOT_MET, Detail, Finding
from services.recommender.engine.policy import Policy
from shared.domain import terminology as t
from shared.domain._json import add_months
from shared.domain.facts import ConditionFact, Intervention, PatientFacts
from shared.humanize import days as days_text
from shared.humanize import plural

SPINE_CT = frozenset({"cervical", "thoracic"})
SPINE_LS = frozenset({"lumbar"})


def cap_region(region: str, side: str | None = None) -> str:
    if region in SPINE_CT:
        return "spine-cervicothoracic"
    if region == "lumbar":
        return "spine-lumbosacral"
    if region in ("knee", "hip"):
        return f"{region}-{side or 'unstated'}"
    return region


def regions_of_group(region: str) -> frozenset[str]:
    """Anatomical regions whose conditions speak for this one (onset, radiculopathy)."""
    if region in SPINE_CT:
        return SPINE_CT
    if region == "lumbar":
        return SPINE_LS
    return frozenset({region})


def family(iv: Intervention) -> str | None:
    """The session family of a procedure (the pathway whose cap it counts toward)."""
    k = iv.kind
    if k in (t.FACET_BLOCK, t.FACET_BLOCK_US):
        if iv.diagnostic:
            return "facet-diagnostic"
        return "facet-therapeutic"
    if k == t.FACET_RFA:
        return "facet-rfa"
    if k in (t.SIJ_BLOCK, t.SIJ_NERVE_BLOCK):
        return "sij-diagnostic" if iv.diagnostic else "sij-therapeutic"
    if k == t.SIJ_RFA:
        return "sij-rfa"
    if k in (t.ESI_INTERLAMINAR, t.ESI_TRANSFORAMINAL):
        return "esi"
    if k == t.GENICULAR_RFA:
        return "genicular-rfa"
    if k == t.GENICULAR_BLOCK:
        return "genicular-block"
    if k == t.JOINT_INJECTION and iv.injectate.steroid:
        return f"{iv.region}-steroid"
    return None


def session_dates(
    interventions: Iterable[Intervention], fam: str, region: str, side: str | None, on: date, policy: Policy
) -> list[date]:
    """Calendar dates of past sessions counted toward date ``on`` (0 <= on − P <= 365 days)."""
    group = cap_region(region, side)
    window = policy.g("rolling_window_days")
    dates = {
        iv.end.date()
        for iv in interventions
        if iv.completed and family(iv) == fam and cap_region(iv.region, iv.side) == group
    }
    return sorted(d for d in dates if 0 <= (on - d).days <= window)


def cap_finding(
    dates: list[date], cap: float | None, reason: str, policy: Policy, pathway: str = ""
) -> Finding | None:
    """CONTRACT §6 cap release: k counted sessions, cap c → the (k − c + 1)-th oldest + 366 days."""
    if cap is None:
        return None
    k, c = len(dates), int(cap)
    if k < c:
        return None
    release = dates[k - c] + timedelta(days=policy.g("cap_release_days"))
    detail = why.session_cap(reason, dates, cap, release, f"pathways.{pathway}.session_cap")
    return Finding(DEFERRED, reason, release, detail)


def pain_onset(facts: PatientFacts, region: str) -> date | None:
    return _compute_onset(facts.conditions, regions_of_group(region))


@lru_cache(maxsize=4096)  # a chart's codes come from a small vocabulary
def _names_pain(codes: tuple[str, ...]) -> bool:
    return any(x.startswith(t.PAIN_CONDITIONS) for x in codes)


def _compute_onset(conditions: tuple[ConditionFact, ...], group: frozenset[str]) -> date | None:
    """Earliest onset among active pain conditions of the region (CONTRACT §4 "diagnoses");
    conditions that name no region count only when none names this one. (Not remembered by its
    conditions: hashing them costs what computing it does, and another patient's never match.)"""
    pain = [c for c in conditions if c.active and c.onset and _names_pain(c.codes)]
    regional = [c.onset for c in pain if c.region in group and c.onset]
    if not regional:
        regional = [c.onset for c in pain if c.region is None and c.onset]
    return min(regional) if regional else None


def _required(months: float | None, days: float | None) -> str:
    return plural(months, "month") if months is not None else days_text(days or 0)


def _since(
    code: str, what: str, start: date | None, due: date | None, required: str, key: str, on: date
) -> Detail:
    return why.since(code, what, start, due or on, required, key, on)


def pain_duration_finding(
    facts: PatientFacts, region: str, on: date, months: float | None, days: float | None, pathway: str = ""
) -> Finding | None:
    """Facet and SIJ pain >= 3 calendar months, ESI >= 28 days from onset; unknown onset: not
    checked (CONTRACT §4, §6 "deferred")."""
    if months is None and days is None:
        return None
    onset = pain_onset(facts, region)
    if onset is None:
        return None
    due = add_months(onset, int(months)) if months is not None else onset + timedelta(days=int(days or 0))
    if on < due:
        key = f"pathways.{pathway}.{'pain_months' if months is not None else 'pain_days'}"
        detail = _since("pain-duration-too-short", "pain", onset, due, _required(months, days), key, on)
        return Finding(DEFERRED, "pain-duration-too-short", due, detail)
    return None


def conservative_care_finding(
    facts: PatientFacts, on: date, months: float | None, days: float | None, pathway: str = ""
) -> Finding | None:
    """Conservative care counts from its first documented date; none at all where required is
    ``not-met`` (CONTRACT §6)."""
    if months is None and days is None:
        return None
    code = "conservative-care-too-short"
    key = (
        f"pathways.{pathway}.{'conservative_care_months' if months is not None else 'conservative_care_days'}"
    )
    required = _required(months, days)
    starts = [c.start for c in facts.conservative_care if c.start <= on]
    if not starts:
        return Finding(NOT_MET, code, None, _since(code, "conservative care", None, None, required, key, on))
    first = min(starts)
    due = add_months(first, int(months)) if months is not None else first + timedelta(days=int(days or 0))
    if on < due:
        return Finding(DEFERRED, code, due, _since(code, "conservative care", first, due, required, key, on))
    return None


def untreated_radiculopathy(facts: PatientFacts, region: str, on: date) -> Finding | None:
    """An active radiculopathy (M54.1x / M51.1x) of this spinal region with no later epidural
    injection blocks the facet pathways (CONTRACT §6; CRITERIA §1.2 item 3). Spine surgery is not
    coded in Pinpoint's vocabulary, so only epidurals count as treatment (protective reading)."""
    group = regions_of_group(region)
    for c in facts.conditions:
        if not c.active or not any(x.startswith(t.RADICULOPATHY) for x in c.codes):
            continue
        if c.region is not None and c.region not in group:
            continue
        since = c.onset or date.min
        treated = any(
            iv.completed
            and iv.kind in (t.ESI_INTERLAMINAR, t.ESI_TRANSFORAMINAL)
            and since <= iv.end.date() <= on
            for iv in facts.interventions
        )
        if not treated:
            detail = Detail(
                "untreated-radiculopathy",
                "active radiculopathy, no epidural injection since",
                "treated first",
                "",
                "rules.untreated-radiculopathy",
                "an active radiculopathy of this region has no epidural treatment since its onset; "
                "it must be treated first",
            )
            return Finding(NOT_MET, "untreated-radiculopathy", None, detail)
    return None
