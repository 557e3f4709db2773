"""Geometry of the pain-score timeline: one panel per block, pure (no I/O, no clock).

A panel's x axis is clock time around one block (baseline reading → last post-block reading or
the end of the anaesthetic window), its y axis the pain on the block's scale. Blocks days apart
get panels of their own so each relief curve stays readable, the gap between them is stated.
Everything drawn is in SVG user units of a fixed viewBox (:data:`WIDTH` × :data:`HEIGHT`); the
page scales it with CSS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.domain import terminology as t

WIDTH, HEIGHT = 360.0, 236.0
LEFT, RIGHT, TOP, BOTTOM = 40.0, 14.0, 30.0, 40.0
_TICK_STEPS_MIN = (15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080, 20160, 43200)
_MAX_X_TICKS = 6


def scale_max(scale: str | None) -> float:
    """Upper end of a pain scale: VAS in mm (0-100), the numeric scales 0-10."""
    return 100.0 if scale == t.VAS else 10.0


def scale_name(scale: str | None) -> str:
    return {
        t.NRS_0_10: "NRS 0-10",
        t.SEVERITY_0_10: "pain severity 0-10",
        t.VAS: "VAS 0-100 mm",
    }.get(scale or "", scale or "unknown scale")


@dataclass(frozen=True, slots=True)
class Reading:
    time: datetime
    value: float


@dataclass(frozen=True, slots=True)
class BlockInput:
    """What one panel shows. ``window_minutes`` is the agent's minimum duration (policy);
    ``threshold`` the pathway's relief threshold in percent; both may be absent."""

    label: str
    start: datetime
    end: datetime
    scale: str | None
    baseline: float | None
    baseline_time: datetime | None
    readings: Sequence[Reading]
    threshold: float | None
    window_minutes: float | None
    peak_relief: float | None
    sustained_minutes: int | None
    positive: bool
    agent: str = "unknown"


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    value: float
    time: datetime
    relief: float | None
    baseline: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True, slots=True)
class Panel:
    block: BlockInput
    width: float
    height: float
    plot: tuple[float, float, float, float]  # x0, y0 (top), x1, y1 (bottom)
    marker_x: float  # the block's end (where relief is measured from)
    block_span: tuple[float, float]  # start → end of the procedure
    window: tuple[float, float] | None  # the anaesthetic window, end → end + minimum minutes
    baseline_y: float | None
    threshold_y: float | None
    threshold_value: float | None  # the pain value at the relief threshold
    sustained: tuple[float, float] | None  # end → end + sustained minutes, on the threshold line
    points: tuple[Point, ...]
    polyline: str
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    peak: Point | None
    y_max: float


@dataclass(frozen=True, slots=True)
class Timeline:
    """A target's panels in time order, with the gap before each panel after the first."""

    panels: tuple[Panel, ...]
    gaps: tuple[str | None, ...] = field(default=())


def threshold_value(baseline: float, threshold: float) -> float:
    """The pain value at which relief reaches ``threshold`` %: baseline × (1 − threshold/100)."""
    return baseline * (1.0 - threshold / 100.0)


def _r(value: float) -> float:
    return round(value, 1)


def _x_range(block: BlockInput) -> tuple[datetime, datetime]:
    times = [block.start, block.end, *(r.time for r in block.readings)]
    if block.baseline_time is not None:
        times.append(block.baseline_time)
    lo, hi = min(times), max(times)
    if block.window_minutes:
        hi = max(hi, block.end + timedelta(minutes=block.window_minutes))
    hi = max(hi, block.end + timedelta(minutes=60))
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def _tick_step(span_minutes: float) -> int:
    for step in _TICK_STEPS_MIN:
        if span_minutes / step <= _MAX_X_TICKS:
            return step
    return _TICK_STEPS_MIN[-1]


def _tick_label(when: datetime, step: int) -> str:
    if step >= 1440:
        return f"{when.day} {when:%b}"
    if step >= 360:
        return f"{when:%a %H:%M}"
    return f"{when:%H:%M}"


def x_ticks(lo: datetime, hi: datetime, x: Callable[[datetime], float]) -> tuple[Tick, ...]:
    """Ticks at round clock times (in the block's own offset) every step that gives ≤ 6 ticks."""
    span = (hi - lo).total_seconds() / 60
    step = _tick_step(span)
    tz = lo.tzinfo
    if step >= 1440:
        first = lo.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        midnight = lo.replace(hour=0, minute=0, second=0, microsecond=0)
        minutes = (lo - midnight).total_seconds() / 60
        first = midnight + timedelta(minutes=(int(minutes // step) * step))
    ticks: list[Tick] = []
    cur = first
    while cur <= hi:
        if cur >= lo:
            ticks.append(Tick(_r(x(cur)), _tick_label(cur.astimezone(tz) if tz else cur, step)))
        cur += timedelta(minutes=step)
    return tuple(ticks)


def panel(block: BlockInput) -> Panel:
    """Lay out one block's panel."""
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    lo, hi = _x_range(block)
    span = (hi - lo).total_seconds() or 1.0
    y_max = scale_max(block.scale)

    def x(when: datetime) -> float:
        return x0 + (when - lo).total_seconds() / span * (x1 - x0)

    def y(value: float) -> float:
        clamped = min(max(value, 0.0), y_max)
        return y1 - clamped / y_max * (y1 - y0)

    base = block.baseline
    points: list[Point] = []
    if base is not None and block.baseline_time is not None:
        points.append(Point(_r(x(block.baseline_time)), _r(y(base)), base, block.baseline_time, None, True))
    for reading in sorted(block.readings, key=lambda r: r.time):
        relief = None if not base else max(0.0, (base - reading.value) / base * 100.0)
        points.append(Point(_r(x(reading.time)), _r(y(reading.value)), reading.value, reading.time, relief))

    window = None
    if block.window_minutes:
        window = (_r(x(block.end)), _r(x(block.end + timedelta(minutes=block.window_minutes))))
    thr_value = threshold_value(base, block.threshold) if base and block.threshold is not None else None
    sustained = None
    if block.sustained_minutes and thr_value is not None:
        sustained = (_r(x(block.end)), _r(x(block.end + timedelta(minutes=block.sustained_minutes))))
    post = [p for p in points if not p.baseline]
    peak = min(post, key=lambda p: (p.value, p.time)) if post else None
    step = 2.0 if y_max == 10.0 else 20.0
    y_ticks = tuple(Tick(_r(y(v * step)), f"{v * step:g}") for v in range(int(y_max / step) + 1))
    return Panel(
        block=block,
        width=WIDTH,
        height=HEIGHT,
        plot=(x0, y0, x1, y1),
        marker_x=_r(x(block.end)),
        block_span=(_r(x(block.start)), _r(x(block.end))),
        window=window,
        baseline_y=_r(y(base)) if base is not None else None,
        threshold_y=_r(y(thr_value)) if thr_value is not None else None,
        threshold_value=thr_value,
        sustained=sustained,
        points=tuple(points),
        polyline=" ".join(f"{p.x},{p.y}" for p in points),
        x_ticks=x_ticks(lo, hi, x),
        y_ticks=y_ticks,
        peak=peak,
        y_max=y_max,
    )


def gap_text(previous_end: datetime, start: datetime) -> str:
    days = (start.date() - previous_end.date()).days
    if days >= 1:
        return f"{days} day{'s' if days != 1 else ''} later"
    hours = max(0, round((start - previous_end).total_seconds() / 3600))
    return f"{hours} h later"


def timeline(blocks: Sequence[BlockInput]) -> Timeline:
    ordered = sorted(blocks, key=lambda b: b.end)
    panels = tuple(panel(b) for b in ordered)
    gaps = tuple(
        None if i == 0 else gap_text(ordered[i - 1].end, ordered[i].start) for i in range(len(ordered))
    )
    return Timeline(panels, gaps)


# --- the overview strip: every procedure of a target on one date axis ------------------------------
STRIP_WIDTH, STRIP_HEIGHT = 360.0, 62.0
_STRIP_X0, _STRIP_X1, _STRIP_Y = 14.0, 346.0, 30.0
_MONTH_STEPS = (1, 2, 3, 6, 12, 24)


@dataclass(frozen=True, slots=True)
class Mark:
    x: float
    label: str  # "1", "2", …
    when: datetime
    positive: bool | None  # None: not a diagnostic block (drawn neutral)


@dataclass(frozen=True, slots=True)
class Strip:
    width: float
    height: float
    axis: tuple[float, float, float]  # x0, x1, y
    marks: tuple[Mark, ...]
    now_x: float | None
    ticks: tuple[Tick, ...]


def _add_months(when: datetime, months: int) -> datetime:
    month = when.month - 1 + months
    return when.replace(year=when.year + month // 12, month=month % 12 + 1, day=1)


def strip(marks: Sequence[tuple[str, datetime, bool | None]], now: datetime | None) -> Strip:
    """Procedures as markers on a date axis (first procedure − 5 % … max(last, now) + 5 %)."""
    times = [m[1] for m in marks] + ([now] if now is not None else [])
    lo, hi = min(times), max(times)
    if hi - lo < timedelta(days=14):
        lo, hi = lo - timedelta(days=7), hi + timedelta(days=7)
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    span = (hi - lo).total_seconds()

    def x(when: datetime) -> float:
        return _r(_STRIP_X0 + (when - lo).total_seconds() / span * (_STRIP_X1 - _STRIP_X0))

    months = span / (30.44 * 86400)
    step = next((s for s in _MONTH_STEPS if months / s <= 5), _MONTH_STEPS[-1])
    cur = _add_months(lo.replace(hour=0, minute=0, second=0, microsecond=0), 1)
    while (cur.month - 1) % step:
        cur = _add_months(cur, 1)
    ticks: list[Tick] = []
    while cur <= hi:
        ticks.append(Tick(x(cur), f"{cur:%b %Y}"))
        cur = _add_months(cur, step)
    return Strip(
        width=STRIP_WIDTH,
        height=STRIP_HEIGHT,
        axis=(_STRIP_X0, _STRIP_X1, _STRIP_Y),
        marks=tuple(Mark(x(when), label, when, positive) for label, when, positive in marks),
        now_x=x(now) if now is not None else None,
        ticks=tuple(ticks),
    )
