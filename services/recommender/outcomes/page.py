"""The ``/outcomes`` page: the practice summary per pathway, with the Kaplan–Meier curve of relief
duration drawn as inline SVG (no script, no asset; the evidence page's security headers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from services.recommender.engine.wording import pathway_text
from shared.domain import terminology as t
from shared.humanize import plural

W, H, L, R, T, B = 420.0, 170.0, 44.0, 12.0, 10.0, 28.0


def _share(share: Mapping[str, Any]) -> str:
    if share.get("share") is None:
        return "no data"
    return f"{round(share['share'] * 100)} % of {share['n']}"


def km_path(steps: Sequence[Mapping[str, Any]], horizon: int) -> tuple[str, list[tuple[float, str]]]:
    """The survival step curve as SVG polyline points, and the x ticks (days)."""
    span = max(horizon, 1)

    def x(day: float) -> float:
        return round(L + (W - L - R) * min(day, span) / span, 1)

    def y(s: float) -> float:
        return round(T + (H - T - B) * (1 - s), 1)

    points: list[str] = []
    last = 1.0
    for step in steps:
        day, s = float(step["day"]), float(step["survival"])
        points.append(f"{x(day)},{y(last)}")
        points.append(f"{x(day)},{y(s)}")
        last = s
    points.append(f"{x(span)},{y(last)}")
    ticks = [(x(d), f"{d} d") for d in (0, span // 2, span)]
    return " ".join(points), ticks


def _km_svg(p: Mapping[str, Any]) -> str:
    steps = p.get("kaplanMeier") or []
    horizon = max([int(s["day"]) for s in steps] + [p.get("medianReliefDays") or 0, 30])
    path, ticks = km_path(steps, int(horizon * 1.1))
    half = round(T + (H - T - B) * 0.5, 1)
    grid = "".join(
        f'<line class="grid" x1="{L}" x2="{W - R}" y1="{round(T + (H - T - B) * (1 - v), 1)}" '
        f'y2="{round(T + (H - T - B) * (1 - v), 1)}"/><text class="tick" x="{L - 4}" '
        f'y="{round(T + (H - T - B) * (1 - v), 1) + 4}" text-anchor="end">{int(v * 100)} %</text>'
        for v in (0.0, 0.5, 1.0)
    )
    xt = "".join(
        f'<text class="tick" x="{tx}" y="{H - 8}" text-anchor="{"end" if i == len(ticks) - 1 else "middle"}">'
        f"{escape(label)}</text>"
        for i, (tx, label) in enumerate(ticks)
    )
    label = f"Share still relieved by days since the procedure, {escape(pathway_text(str(p['pathway'])))}"
    return (
        f'<svg class="km" viewBox="0 0 {W:g} {H:g}" width="{W:g}" height="{H:g}" role="img" '
        f'aria-label="{label}">{grid}{xt}<line class="median-line" x1="{L}" x2="{W - R}" y1="{half}" '
        f'y2="{half}"><title>one half</title></line><polyline class="km-curve" points="{path}"/></svg>'
    )


def render(summary: Mapping[str, Any], policy: str) -> str:
    since = summary.get("since")
    sections = []
    for p in summary.get("pathways") or []:
        median = p.get("medianReliefDays")
        rows = "".join(
            f"<tr><td>{escape(t.FUNCTION_NAMES.get(str(f['instrument']), str(f['instrument'])))}</td>"
            f"<td>{f['medianChange3Months']:g}</td>"
            f"<td>{round(f['shareReachingMcid'] * 100)} %</td><td>{f['n']}</td></tr>"
            for f in p.get("function") or []
        )
        function = (
            "<table class='function'><thead><tr><th scope='col'>Instrument</th><th scope='col'>Median change"
            " at 3 months</th><th scope='col'>Reaching the MCID</th><th scope='col'>n</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            if rows
            else "<p class='muted'>No functional score at 3 months.</p>"
        )
        sections.append(
            f"<section class='pathway' aria-labelledby='pw-{escape(str(p['pathway']))}'>"
            f"<h2 id='pw-{escape(str(p['pathway']))}'>{escape(pathway_text(str(p['pathway'])))}</h2>"
            f"<dl><dt>Procedures</dt><dd>{p['procedures']}</dd>"
            f"<dt>Criteria met the day before</dt><dd>{_share(p['criteriaMetBefore'])}</dd>"
            f"<dt>&ge; 50 % relief at 3 months</dt><dd>{_share(p['relief3Months'])}</dd>"
            f"<dt>&ge; 50 % relief at 6 months</dt><dd>{_share(p['relief6Months'])}</dd>"
            f"<dt>Median relief (Kaplan–Meier)</dt><dd>"
            f"{f'{median} days' if median is not None else 'not reached'} over "
            f"{plural(p['reliefDurations'], 'procedure')}, censoring honoured</dd></dl>"
            f"<figure><figcaption>Relief duration</figcaption>{_km_svg(p)}</figure>{function}</section>"
        )
    body = "".join(sections) or "<p>No definitive or therapeutic procedure is stored.</p>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>Pinpoint · outcomes</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:60rem;padding:0 1rem;color:#111827}"
        ".pathway{border:1px solid #d1d5db;border-radius:.5rem;padding:1rem;margin:0 0 1rem}"
        "dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}"
        "figure{margin:.75rem 0}svg.km{width:100%;max-width:420px;height:auto;display:block}"
        ".grid{stroke:#e5e7eb}.tick{font-size:10px;fill:#4b5563}"
        ".km-curve{fill:none;stroke:#1d4ed8;stroke-width:2}"
        ".median-line{stroke:#b45309;stroke-dasharray:5 4}table{border-collapse:collapse;font-size:.9rem}"
        "th,td{text-align:left;padding:.2rem .6rem .2rem 0;border-bottom:1px solid #e5e7eb}"
        ".muted{color:#4b5563}"
        "</style></head><body><header><p class='muted'>PINPOINT · OUTCOMES</p>"
        "<h1>What the definitive procedures achieved</h1>"
        f"<p class='muted'>Policy {escape(policy)}{' · since ' + escape(str(since)) if since else ''} · "
        "criteria judged on the day before each procedure</p></header>"
        f"<main>{body}</main></body></html>"
    )
