"""Numbers, dates and durations as a person reads them — the one formatting of cards, the
evidence page, CarePlan texts, the clinic's pages and the commands' messages.

``day(2025-02-03)`` → ``3 Feb 2025``; ``duration(272205)`` → ``6 months``; ``percent(71.43)`` →
``71.4 %``. Pure: no clock, no locale (English month abbreviations, as the cards are English).
"""

from __future__ import annotations

from datetime import date, datetime

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MINUTES_PER_DAY = 24 * 60
_DAYS_PER_MONTH = 365.25 / 12


def _as_date(value: date | datetime | str | None) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip().replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            return None


def day(value: date | datetime | str | None, missing: str = "an unknown date") -> str:
    """``3 Feb 2025`` (the date part of a date-time, as written in the data's own offset)."""
    d = _as_date(value)
    if d is None:
        return missing
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def number(value: float | int | None, missing: str = "–") -> str:
    """At most one decimal, no trailing ``.0``."""
    if value is None:
        return missing
    rounded = round(float(value), 1)
    return f"{int(rounded)}" if rounded.is_integer() else f"{rounded:.1f}"


def percent(value: float | int | None, missing: str = "no reading") -> str:
    """``71.4 %``: one decimal at most, so a value just under a threshold never reads as it."""
    if value is None:
        return missing
    return f"{number(value)} %"


def plural(n: float | int, word: str, words: str | None = None) -> str:
    shown = number(n)
    return f"{shown} {word if shown == '1' else (words or word + 's')}"


def duration(minutes: float | int | None, missing: str = "no relief") -> str:
    """Minutes under 2 h, hours under 2 days, days under 2 months, else months."""
    if minutes is None:
        return missing
    m = float(minutes)
    if m < 120:
        return plural(round(m), "min", "min")
    if m < 2 * _MINUTES_PER_DAY:
        return plural(round(m / 60, 1), "hour")
    days = m / _MINUTES_PER_DAY
    if days < 60:
        return plural(round(days), "day")
    return plural(round(days / _DAYS_PER_MONTH), "month")


def days(n: float | int | None) -> str:
    """A count of days; whole months or years where that is how people say it."""
    if n is None:
        return "–"
    if n >= 365 and n % 365 == 0:
        return plural(n // 365, "year")
    return plural(n, "day")


def listing(items: list[str], conj: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conj} {items[-1]}"
