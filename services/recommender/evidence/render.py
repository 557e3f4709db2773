"""Jinja2 rendering of the evidence page (templates in ``templates/``, autoescaped, no assets)."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import jinja2

from services.recommender.evidence.chart import scale_name
from services.recommender.evidence.page import PageView
from shared import humanize

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _num(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    rounded = round(float(value), digits)
    return f"{rounded:g}"


def _offset(when: datetime) -> str:
    off = when.utcoffset()
    if off is None:
        return ""
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "−"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _clock(when: datetime) -> str:
    return f"{when:%H:%M}"


def _after(when: datetime, minutes: float) -> datetime:
    return when + timedelta(minutes=minutes)


def _stamp(when: datetime) -> str:
    return f"{humanize.day(when)} {_clock(when)} {_offset(when)}".strip()


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=_num,
        clock=_clock,
        day=humanize.day,
        stamp=_stamp,
        offset=_offset,
        after=_after,
        scale_name=scale_name,
    )
    return env


def render_page(view: PageView) -> str:
    return environment().get_template("evidence.html.j2").render(page=view)


def render_error(*, status: int, title: str, detail: str, todo: str) -> str:
    """The short HTML page a browser gets for a refused or missing evidence page."""
    return (
        environment()
        .get_template("error.html.j2")
        .render(status=status, title=title, detail=detail, todo=todo)
    )
