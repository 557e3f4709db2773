"""``GET /outcomes``: the practice's outcomes per pathway (HTML), protected like every
patient-data read (API or admin token; open when no tokens are configured, CONTRACT §2)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from services.recommender.container import RecommenderDep
from services.recommender.outcomes.page import render
from services.recommender.outcomes.summary import practice_summary
from shared.errors import InvalidInput
from shared.web import check_api_token

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(tags=["recommender"])


@router.get("/outcomes", response_class=HTMLResponse)
def outcomes(
    request: Request, parts: RecommenderDep, since: Annotated[str | None, Query()] = None
) -> HTMLResponse:
    check_api_token(request, parts.settings)
    try:
        start = date.fromisoformat(since) if since else None
    except ValueError:
        raise InvalidInput("since: not a date (YYYY-MM-DD)", code="value") from None
    summary = practice_summary(parts.engine, parts.assessor, datetime.now(UTC), start)
    return HTMLResponse(render(summary, parts.settings.policy), headers=_HEADERS)
