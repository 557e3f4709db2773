"""Small readers for raw FHIR JSON shared by the relevance filter and the normaliser."""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from shared.domain import terminology as t


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if type(value) is list:
        return value
    return [value]


def codings(concept: Any) -> Iterator[Mapping[str, Any]]:
    """Codings of a CodeableConcept (or of a list of them). Raw JSON: objects are dicts."""
    for cc in concept if type(concept) is list else (concept,):
        if type(cc) is dict:
            coding = cc.get("coding")
            if type(coding) is list:
                for c in coding:
                    if type(c) is dict:
                        yield c


# The readers below walk the codings inline (no generator): they run on every resource read.


def code_set(concept: Any, systems: frozenset[str] | str) -> set[str]:
    """Codes (stripped) of the codings of ``systems`` (one system or a set of them)."""
    out: set[str] = set()
    if concept is None:
        return out
    one = type(systems) is str
    for cc in concept if type(concept) is list else (concept,):
        if type(cc) is dict:
            coding = cc.get("coding")
            if type(coding) is list:
                for c in coding:
                    if type(c) is dict and "code" in c:
                        system = c.get("system")
                        if (system == systems) if one else (system in systems):
                            out.add(str(c["code"]).strip())
    return out


def texts(concept: Any) -> list[str]:
    """``text`` of the concept(s) and ``display`` of their codings."""
    out: list[str] = []
    if concept is None:
        return out
    for cc in concept if type(concept) is list else (concept,):
        if type(cc) is dict:
            text = cc.get("text")
            if type(text) is str:
                out.append(text)
            coding = cc.get("coding")
            if type(coding) is list:
                for c in coding:
                    if type(c) is dict:
                        display = c.get("display")
                        if type(display) is str:
                            out.append(display)
    return out


def procedure_codes(concept: Any) -> list[str]:
    """CPT or HCPCS codes of a CodeableConcept (CONTRACT §4: SNOMED is never mapped)."""
    out: list[str] = []
    for cc in concept if type(concept) is list else (concept,):
        if type(cc) is dict:
            coding = cc.get("coding")
            if type(coding) is list:
                for c in coding:
                    if type(c) is dict:
                        code = c.get("code")
                        if isinstance(code, str):
                            system = c.get("system")
                            if system == t.CPT or system in t.HCPCS_SYSTEMS:
                                out.append(code.strip().upper())
    return out


def rxnorm_names(concept: Any) -> set[str]:
    """Ingredient names of the agents the rules know, from RxNorm codings or text."""
    names = {t.RXNORM_NAMES[code] for code in code_set(concept, t.RXNORM) if code in t.RXNORM_NAMES}
    if not names:
        for text in texts(concept):
            names |= words_in(text)
    return names


_WORDS = tuple(
    {**t.AGENT_WORDS, **t.STEROID_WORDS, **t.SEDATIVE_WORDS, **{n: n for n in t.NSAID_WORDS}}.items()
)


@lru_cache(maxsize=4096)
def words_in(text: str) -> frozenset[str]:
    """Ingredient names whose words (brand or generic) occur anywhere in ``text``, any case.
    Cached: medication and order texts repeat across patients (a small vocabulary)."""
    low = text.lower()
    return frozenset(name for word, name in _WORDS if word in low)


def reference(value: Any) -> str | None:
    if type(value) is dict or (value is not None and isinstance(value, Mapping)):
        ref = value.get("reference")
        if isinstance(ref, str):
            return ref
    return None


def references(value: Any) -> list[str]:
    return [r for r in (reference(v) for v in as_list(value)) if r]


_DATE_ONLY = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def parse_instant(value: Any) -> datetime | None:
    """A FHIR ``instant`` (``meta.lastUpdated``): a full date-time with its zone, else ``None``."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


#: Distinct date strings remembered (:func:`parse_datetime`, :func:`parse_date`).
_REMEMBERED = 8192


def parse_datetime(value: Any) -> datetime | None:
    """FHIR dateTime/instant/date → aware datetime; date-only values are midnight UTC of that date.

    A partial date (``2019`` or ``2019-05``) is its first day. A time without offset is read as UTC.
    Unparseable values give ``None``. Each distinct string is parsed once (bounded): a call reads
    the same dates more than once, and dates recur across patients (datetimes are immutable).
    """
    if type(value) is not str:
        return None
    return _datetime_of(value)


@lru_cache(maxsize=_REMEMBERED)
def _datetime_of(value: str) -> datetime | None:
    found = _parse_datetime(value)
    if found is not None:
        zone = found.tzinfo
        same = _ZONES.get(zone)
        if same is None:
            if len(_ZONES) < _ZONES_MAX:  # offsets of hostile input: past the bound, kept as read
                _ZONES[zone] = zone
        elif same is not zone:
            found = found.replace(tzinfo=same)
    return found


#: One ``timezone`` object per offset: ``fromisoformat`` makes a new one for every string with an
#: offset, and two aware datetimes compare quickly only when their ``tzinfo`` is the same object
#: (else each comparison asks both for their offset) — the engine compares times by the thousand.
#: ``timezone`` objects of one offset are equal and print alike, so nothing read changes.
_ZONES: dict[Any, Any] = {UTC: UTC}
_ZONES_MAX = 1024


def _parse_datetime(value: str) -> datetime | None:
    if not value:
        return None
    if len(value) > 10:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            dt = None
        if dt is not None:
            return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
    m = _DATE_ONLY.match(value)
    if m:
        try:
            return datetime(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1), tzinfo=UTC)
        except ValueError:
            return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def parse_date(value: Any) -> date | None:
    """The date of :func:`parse_datetime` (each distinct string once, bounded)."""
    if type(value) is not str:
        return None
    return _date_of(value)


@lru_cache(maxsize=_REMEMBERED)
def _date_of(value: str) -> date | None:
    dt = _datetime_of(value)
    return dt.date() if dt else None


def period_start_end(resource: Mapping[str, Any], prefix: str) -> tuple[datetime | None, datetime | None]:
    """``<prefix>DateTime`` (start = end) or ``<prefix>Period`` (a missing side copies the other)."""
    dt = parse_datetime(resource.get(prefix + "DateTime"))
    if dt:
        return dt, dt
    period = resource.get(prefix + "Period")
    if period is not None and isinstance(period, Mapping):
        start = parse_datetime(period.get("start"))
        end = parse_datetime(period.get("end"))
        return start or end, end or start
    instant = parse_datetime(resource.get(prefix + "Instant"))
    if instant:
        return instant, instant
    return None, None


def is_own_proposal(resource: Mapping[str, Any]) -> bool:
    """Pinpoint's own suggestions carry an identifier in ``urn:pinpoint:recommendation``."""
    for ident in as_list(resource.get("identifier")):
        if isinstance(ident, Mapping) and str(ident.get("system", "")).startswith(t.PINPOINT_RECOMMENDATION):
            return True
    return False


def route_is_oral(route: Any) -> bool:
    if code_set(route, t.SNOMED) & t.ORAL_ROUTE_SNOMED:
        return True
    return any(re.search(r"\b(oral|by mouth|po)\b", x.lower()) for x in texts(route))


def route_is_iv(route: Any) -> bool:
    if code_set(route, t.SNOMED) & t.IV_ROUTE_SNOMED:
        return True
    return any(re.search(r"\b(iv|intravenous)\b", x.lower()) for x in texts(route))


def dosage_routes(resource: Mapping[str, Any]) -> list[Any]:
    """Routes of a MedicationAdministration / Statement / Request."""
    routes: list[Any] = []
    dosage = resource.get("dosage")
    for d in as_list(dosage) + as_list(resource.get("dosageInstruction")):
        if isinstance(d, Mapping) and d.get("route") is not None:
            routes.append(d["route"])
    return routes


@lru_cache(maxsize=4096)  # the same dates and spans recur (today, a policy's months)
def add_months(d: date, months: int) -> date:
    """Calendar months, clamped at month end (CONTRACT §6 "Time")."""
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def days(n: float) -> timedelta:
    return timedelta(days=n)
