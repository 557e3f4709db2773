"""``GET /`` (what this service is, where to go) and ``GET /patients`` (the worklist, HTML) and
``GET /patients.csv`` (the same rows as CSV). The worklist is a patient-data read: an API (or
admin) bearer token once any credential is configured, open on a loopback-only deployment."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from services.recommender.container import RecommenderDep
from services.recommender.engine import wording
from services.recommender.worklist import repository as store
from services.recommender.worklist.render import PAGE_HEADERS, render
from services.recommender.worklist.rows import ATTENTION_WORDS, NO_DATE
from shared import humanize
from shared.db.models import WorklistEntry
from shared.db.session import session_scope
from shared.errors import InvalidInput
from shared.web import require_api_token

PAGE_SIZE = 50

Opt = Annotated[str | None, Query()]


_LANDING_LINKS = (
    ("/patients", "Worklist", "every patient Pinpoint has judged, what needs attention first"),
    ("/outcomes", "Outcomes", "what each procedure achieved across the practice"),
    ("/feedback", "Feedback", "how clinicians answered the cards: accepted, overridden and why"),
    ("/whatif", "Policy what-if", "how verdicts would change under another policy"),
    ("/docs", "API documentation", "every endpoint, try it in the browser"),
    ("/readyz", "Health", "database, migrations, queues: 200 when ready"),
)


def _filters(
    pathway: Opt = None,
    verdict: Opt = None,
    alert: Opt = None,
    source: Opt = None,
    due_by: Opt = None,
    q: Opt = None,
) -> store.Filters:
    """The worklist's filters, read once from the query for the page and its CSV."""
    due: date | None = None
    if due_by:
        try:
            due = date.fromisoformat(due_by.strip())
        except ValueError:
            raise InvalidInput(f"due_by: not a date (YYYY-MM-DD): {due_by[:40]!r}", code="value") from None
    return store.Filters(
        pathway=pathway or None,
        verdict=verdict or None,
        alert=alert or None,
        source=source or None,
        due_by=due,
        q=(q or "").strip()[:100] or None,
    )


FiltersDep = Annotated[store.Filters, Depends(_filters)]


def evidence_href(row: WorklistEntry) -> str:
    pid = row.patient_id if row.source == "default" else f"{row.source}:{row.patient_id}"
    return f"/patients/{quote(pid, safe=':')}/evidence"


def _day(value: date) -> str:
    return "" if value == NO_DATE else humanize.day(value)


def _alert_titles(alerts: str) -> list[str]:
    return [wording.ALERTS.get(code, code.replace("-", " ")) for code in alerts.strip(",").split(",") if code]


def _csv_lines(rows: Iterator[WorklistEntry]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = [
        "patient",
        "name",
        "source",
        "pathway",
        "target",
        "verdict",
        "reason",
        "earliest date",
        "alerts",
        "evidence",
    ]
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [
                row.patient_id,
                row.name or "",
                row.source,
                wording.pathway_text(row.pathway),
                row.target,
                wording.VERDICTS.get(row.verdict, row.verdict),
                row.reason,
                "" if row.due == NO_DATE else row.due.isoformat(),
                "; ".join(_alert_titles(row.alerts)),
                evidence_href(row),
            ]
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
    yield buffer.getvalue()


router = APIRouter(tags=["worklist"])
reader = [Depends(require_api_token)]


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def landing(request: Request, parts: RecommenderDep) -> HTMLResponse:
    # the pages this process serves (a role without the worklist does not link to it)
    present = {*request.app.openapi().get("paths", {}), "/docs"}  # docs: every role (shared.web)
    links = [link for link in _LANDING_LINKS if link[0] in present]
    html = render("landing.html.j2", links=links, policy=parts.settings.policy)
    return HTMLResponse(html, headers=PAGE_HEADERS)


@router.get("/patients", response_class=HTMLResponse, dependencies=reader)
def worklist(parts: RecommenderDep, f: FiltersDep, after: Opt = None) -> HTMLResponse:
    """The worklist: current assessments, what needs attention first; 50 a page."""
    try:
        cursor = store.Cursor.decode(after) if after else None
    except ValueError:
        raise InvalidInput("after: not a worklist page cursor", code="value") from None
    with session_scope(parts.engine) as session:
        rows, next_cursor = store.page(session, f, cursor, PAGE_SIZE)
        total = store.count(session, f)
    params = {
        k: v
        for k, v in (
            ("pathway", f.pathway),
            ("verdict", f.verdict),
            ("alert", f.alert),
            ("source", f.source),
            ("q", f.q),
        )
        if v
    }
    if f.due_by:
        params["due_by"] = f.due_by.isoformat()
    sources = sorted({"default", *(s.id for s in parts.settings.config.sources)})
    html = render(
        "worklist.html.j2",
        rows=[
            {
                "row": row,
                "href": evidence_href(row),
                "pathway": wording.pathway_text(row.pathway),
                "verdict": wording.VERDICTS.get(row.verdict, row.verdict),
                "attention": ATTENTION_WORDS.get(row.attention, ""),
                "due": _day(row.due),
                "alerts": _alert_titles(row.alerts),
            }
            for row in rows
        ],
        total=total,
        filters=f,
        first=cursor is None,
        next_href=f"/patients?{urlencode({**params, 'after': next_cursor.encode()})}"
        if next_cursor
        else None,
        first_href=f"/patients?{urlencode(params)}" if params else "/patients",
        csv_href=f"/patients.csv?{urlencode(params)}" if params else "/patients.csv",
        pathways=sorted(wording.PATHWAYS.items(), key=lambda kv: kv[1]),
        verdicts=list(wording.VERDICTS.items()),
        alerts=sorted(wording.ALERTS.items(), key=lambda kv: kv[1]),
        sources=sources,
    )
    return HTMLResponse(html, headers=PAGE_HEADERS)


@router.get("/patients.csv", dependencies=reader)
def worklist_csv(parts: RecommenderDep, f: FiltersDep) -> StreamingResponse:
    """Every worklist row the filters select, as CSV (streamed a page at a time)."""

    def lines() -> Iterator[str]:
        with session_scope(parts.engine) as session:
            yield from _csv_lines(store.every(session, f))

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="pinpoint-worklist.csv"',
            "Cache-Control": "no-store",
        },
    )
