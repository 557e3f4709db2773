"""The evidence page's outcome panel (issue 19): per definitive or therapeutic procedure, pain
relief and function over 12 months against baseline, the 50 % line and the instrument's MCID band.

Geometry only (numbers for an inline SVG); the words come from the engine's wording. Input is the
``outcomes`` list of the assessment document (docs/function-and-outcomes.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from services.recommender.engine import Policy
from services.recommender.engine.wording import pathway_text, target_text
from shared import humanize
from shared.domain import terminology as t

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 420.0, 150.0, 44.0, 12.0, 10.0, 26.0
MONTHS = (0, 1, 3, 6, 12)
_STATUS = {"due": "", "pending": "not yet due", "after-next-procedure": "after the next procedure"}


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class Plot:
    """One chart: a y range, its grid lines, an optional reference line and band, the dots."""

    title: str
    y_ticks: tuple[tuple[float, str], ...]
    x_ticks: tuple[tuple[float, str], ...]
    line_y: float | None  # the 50 % line (pain) or the baseline (function)
    line_label: str
    band: tuple[float, float] | None  # the MCID band (function): y of its top and bottom
    band_label: str
    dots: tuple[Dot, ...]
    path: str  # the polyline through the dots


@dataclass(frozen=True, slots=True)
class MilestoneRow:
    months: int
    day: str
    pain: str
    function: str
    note: str


@dataclass(frozen=True, slots=True)
class OutcomeView:
    anchor: str
    heading: str
    summary: str
    rows: tuple[MilestoneRow, ...]
    plots: tuple[Plot, ...]


def _x(months: float) -> float:
    return round(LEFT + (WIDTH - LEFT - RIGHT) * months / 12.0, 1)


def _y(value: float, low: float, high: float) -> float:
    span = (high - low) or 1.0
    return round(TOP + (HEIGHT - TOP - BOTTOM) * (high - value) / span, 1)


def _x_ticks() -> tuple[tuple[float, str], ...]:
    return tuple((_x(m), "0" if m == 0 else f"{m} mo") for m in MONTHS)


def _path(dots: Sequence[Dot]) -> str:
    return " ".join(f"{d.x},{d.y}" for d in dots)


def _months_after(performed: date, when: date) -> float:
    return max(0.0, (when - performed).days / 30.4375)


def _pain_plot(o: Mapping[str, Any], performed: date) -> Plot | None:
    dots = [Dot(_x(0), _y(0, 0, 100), "baseline")]
    for m in o.get("milestones") or []:
        pain = m.get("pain")
        if isinstance(pain, Mapping) and pain.get("reliefPercent") is not None:
            when = date.fromisoformat(str(pain["date"]))
            dots.append(
                Dot(
                    _x(min(12.0, _months_after(performed, when))),
                    _y(float(pain["reliefPercent"]), 0, 100),
                    f"{m['months']} months: {pain['reliefPercent']:g} % relief",
                )
            )
    if len(dots) == 1:
        return None
    threshold = float(o.get("reliefThresholdPercent") or 50)
    return Plot(
        title="Pain relief against baseline",
        y_ticks=tuple((_y(v, 0, 100), f"{v} %") for v in (0, 50, 100)),
        x_ticks=_x_ticks(),
        line_y=_y(threshold, 0, 100),
        line_label=f"{threshold:g} % relief",
        band=None,
        band_label="",
        dots=tuple(dots),
        path=_path(dots),
    )


def _function_plots(o: Mapping[str, Any], performed: date, policy: Policy) -> list[Plot]:
    plots = []
    for base in (o.get("baseline") or {}).get("function") or []:
        inst = str(base.get("instrument"))
        spec = policy.instruments.get(inst)
        if spec is None:
            continue
        low, high, mcid = float(spec["low"]), float(spec["high"]), float(spec["mcid"])
        worse_up = spec["direction"] == "higher-worse"
        b = float(base["value"])
        dots = [Dot(_x(0), _y(b, low, high), f"baseline {b:g}")]
        for m in o.get("milestones") or []:
            for f in m.get("function") or []:
                if f.get("instrument") == inst:
                    when = date.fromisoformat(str(f["date"]))
                    dots.append(
                        Dot(
                            _x(min(12.0, _months_after(performed, when))),
                            _y(float(f["value"]), low, high),
                            f"{m['months']} months: {f['value']:g}",
                        )
                    )
        if len(dots) == 1:
            continue
        edge = b - mcid if worse_up else b + mcid  # a change smaller than the MCID stays in the band
        top, bottom = sorted((_y(b, low, high), _y(max(low, min(high, edge)), low, high)))
        name = t.FUNCTION_NAMES.get(inst, inst)
        plots.append(
            Plot(
                title=f"{name} ({'higher is worse' if worse_up else 'higher is better'})",
                y_ticks=tuple((_y(v, low, high), f"{v:g}") for v in (low, (low + high) / 2, high)),
                x_ticks=_x_ticks(),
                line_y=_y(b, low, high),
                line_label=f"baseline {b:g}",
                band=(top, bottom),
                band_label=f"within the MCID of {mcid:g}",
                dots=tuple(dots),
                path=_path(dots),
            )
        )
    return plots


def _function_text(points: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for f in points:
        name = t.FUNCTION_NAMES.get(str(f.get("instrument")), str(f.get("instrument")))
        change = f.get("change")
        text = f"{name} {f['value']:g}"
        if change is not None:
            word = "better" if change > 0 else "worse" if change < 0 else "unchanged"
            text += f" ({abs(change):g} {word}" + ("; beyond the MCID)" if f.get("meetsMcid") else ")")
        parts.append(text)
    return "; ".join(parts) or "–"


def _summary(o: Mapping[str, Any]) -> str:
    threshold = o.get("reliefThresholdPercent")
    days = o.get("reliefDays")
    if days is None:
        text = "No pain score after the procedure"
    elif o.get("censored"):
        text = f"At least {threshold} % relief for {days} days, still relieved at the last reading"
    elif days == 0:
        text = f"Less than {threshold} % relief at the first reading"
    else:
        text = f"At least {threshold} % relief for {days} days, then lost"
    if o.get("daysToNextProcedure") is not None:
        text += f"; next procedure on the same target after {o['daysToNextProcedure']} days"
    return text + "."


def outcome_views(outcomes: Sequence[Mapping[str, Any]], policy: Policy) -> tuple[OutcomeView, ...]:
    views = []
    for n, o in enumerate(outcomes, 1):
        performed = date.fromisoformat(str(o["performed"])[:10])
        rows = []
        for m in o.get("milestones") or []:
            pain = m.get("pain")
            pain_text = (
                f"{pain['value']:g} ({pain['reliefPercent']:g} % relief)"
                if isinstance(pain, Mapping)
                else "–"
            )
            when = date.fromisoformat(str(m["date"]))
            rows.append(
                MilestoneRow(
                    int(m["months"]),
                    humanize.day(when),
                    pain_text,
                    _function_text(m.get("function") or []),
                    _STATUS.get(str(m.get("status")), ""),
                )
            )
        plots = [p for p in (_pain_plot(o, performed),) if p is not None] + _function_plots(
            o, performed, policy
        )
        heading = pathway_text(str(o.get("pathway")))
        where = target_text(o.get("target"))
        views.append(
            OutcomeView(
                anchor=f"outcome-{n}",
                heading=f"{heading}{', ' + where if where else ''} — {humanize.day(performed)}",
                summary=_summary(o),
                rows=tuple(rows),
                plots=tuple(plots),
            )
        )
    return tuple(views)
