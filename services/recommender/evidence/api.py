"""``GET /patients/{id}/evidence``: the HTML evidence page (CONTRACT §2 Recommender, Security).

Access: a valid signed link (``exp`` + ``sig``, what CDS cards carry) or a valid API (or admin)
bearer token. With no tokens configured the page is open like every read (loopback-only
deployments, CONTRACT §2). Every refusal is a 401 OperationOutcome.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from services.recommender.container import Recommender, RecommenderDep
from services.recommender.evidence.page import build, stored_records
from services.recommender.evidence.render import render_page
from services.recommender.patients.ids import parse_now, patient_key
from services.recommender.patients.repository import load_patient_resources, patient_known
from shared.db.models import utcnow
from shared.db.session import session_scope
from shared.errors import NotFound, Unauthorized
from shared.web import check_api_token

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors *; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(tags=["recommender"])


def authorize(request: Request, parts: Recommender, key: str, exp: str | None, sig: str | None) -> None:
    """A valid signed link, else the API token rule (open when no tokens are configured)."""
    if (exp is not None or sig is not None) and parts.links.valid(key, exp, sig, now=utcnow()):
        return
    try:
        check_api_token(request, parts.settings)
    except Unauthorized:
        if exp is not None or sig is not None:
            raise Unauthorized(
                "The evidence link is invalid or has expired; open it again from the card"
            ) from None
        raise


@router.get("/patients/{pid}/evidence", response_class=HTMLResponse)
def evidence(
    pid: str,
    request: Request,
    parts: RecommenderDep,
    exp: Annotated[str | None, Query()] = None,
    sig: Annotated[str | None, Query()] = None,
    now: Annotated[str | None, Query()] = None,
) -> HTMLResponse:
    key = patient_key(pid)
    authorize(request, parts, key, exp, sig)
    when = parse_now(now)
    with session_scope(parts.engine) as session:
        if not patient_known(session, key):
            raise NotFound(f"No data is stored for patient {pid}")
        resources = load_patient_resources(session, key)
        records = stored_records(session, key)
    view = build(resources, key, parts.assessor, parts.settings.policy, when, records)
    return HTMLResponse(render_page(view), headers=_HEADERS)
