"""The evidence page routes (CONTRACT §2 Recommender, Security; §8).

- ``GET /patients/{id}/evidence`` — the live evaluation of what Pinpoint stores for the patient.
- ``GET /evidence/cards/{card}`` — what a CDS card links to: the live evaluation when Pinpoint
  stores data for the card's patient, else the card's evidence snapshot ("as evaluated on … from
  the EHR's data"), kept ``cds.evidence_retention``.
- ``GET /smart/{source}/launch``, ``/smart/{source}/callback``, ``/smart/evidence`` — the page as
  a SMART on FHIR app launched from the EHR (:mod:`services.recommender.evidence.smart`).

Access to the first two: a valid signed link (``exp`` + ``sig``, what CDS cards carry) or a
valid API (or admin) bearer token; with no tokens configured the page is open like every read
(loopback-only deployments, CONTRACT §2). The SMART page: the session the launch made.
A browser (``Accept: text/html``) gets a short HTML page saying what to do for a refusal, an
unknown or expired link; API clients keep the OperationOutcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.recommender.cds_hooks.data import UserToken, merge, read_patient
from services.recommender.cds_hooks.discovery import PREFETCH_DATA
from services.recommender.container import Recommender, RecommenderDep
from services.recommender.evidence.page import PageView, Person, Record, build, stored_records, view
from services.recommender.evidence.render import render_error, render_page
from services.recommender.evidence.smart import COOKIE, SmartSession
from services.recommender.evidence.snapshots import Snapshot, load_snapshot, patient_header
from services.recommender.patients.ids import parse_now, patient_key
from services.recommender.patients.repository import load_patient_resources, patient_known
from shared import humanize
from shared.db.models import utcnow
from shared.db.session import session_scope
from shared.errors import NotFound, PinpointError, Unauthorized, UpstreamError
from shared.web import check_api_token

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors *; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(tags=["recommender"])


# ------------------------------------------------------------------------------- errors for people


def wants_html(request: Request) -> bool:
    """A browser navigating (``Accept: text/html…``), not an API client."""
    accept = request.headers.get("accept", "").lower()
    return "text/html" in accept


def _days(span: timedelta) -> str:
    days = span.days
    return (
        f"{days} day{'s' if days != 1 else ''}" if days >= 1 else f"{int(span.total_seconds() // 3600)} hours"
    )


def html_error(exc: PinpointError, parts: Recommender) -> HTMLResponse:
    retention = _days(parts.settings.config.cds.evidence_retention)
    if exc.status == 401:
        title = "This evidence page cannot be opened"
        todo = (
            "Open the card again from the patient's chart in the EHR: each time the card is shown it "
            "carries a fresh link. Opening Pinpoint directly needs an API token."
        )
    elif exc.status == 404:
        title = "Nothing is kept for this link"
        todo = (
            f"Evidence behind a card is kept for {retention}. Open the patient's chart in the EHR again "
            "to get the current cards and their evidence."
        )
    elif exc.status in (400, 422):
        title = "This link is not complete"
        todo = "Open Pinpoint from the card or the app list in the patient's chart in the EHR."
    else:
        title = "The evidence page could not be shown"
        todo = "Try again in a minute. If it keeps failing, tell the team that runs Pinpoint."
    body = render_error(status=exc.status, title=title, detail=exc.diagnostics, todo=todo)
    return HTMLResponse(body, status_code=exc.status, headers={**_HEADERS, **exc.headers})


def _answer(request: Request, parts: Recommender, make: Callable[[], Response]) -> Response:
    try:
        return make()
    except PinpointError as exc:
        if wants_html(request):
            return html_error(exc, parts)
        raise


def _page(page: PageView) -> HTMLResponse:
    return HTMLResponse(render_page(page), headers=_HEADERS)


# ------------------------------------------------------------------------------- access


def authorize(request: Request, parts: Recommender, key: str, exp: str | None, sig: str | None) -> None:
    """A valid signed link, else the API token rule (open when no tokens are configured)."""
    if (exp is not None or sig is not None) and parts.links.valid(key, exp, sig, now=utcnow()):
        return
    _token_or_refuse(request, parts, exp, sig)


def _token_or_refuse(request: Request, parts: Recommender, exp: str | None, sig: str | None) -> None:
    try:
        check_api_token(request, parts.settings)
    except Unauthorized:
        if exp is not None or sig is not None:
            raise Unauthorized(
                "The evidence link is invalid or has expired; open it again from the card"
            ) from None
        raise


# ------------------------------------------------------------------------------- pages


def _stored_page(
    parts: Recommender, key: str, when_text: str | None, person: Person | None
) -> PageView | None:
    """The live evaluation of the stored data, or None when nothing is stored for ``key``."""
    when = parse_now(when_text)
    with session_scope(parts.engine) as session:
        if not patient_known(session, key):
            return None
        resources = load_patient_resources(session, key)
        records = stored_records(session, key)
    person = person or Person.of(patient_header(resources, key.partition(":")[2]))
    return build(resources, key, parts.assessor, parts.settings.policy, when, records, person=person)


def snapshot_page(parts: Recommender, snap: Snapshot) -> PageView:
    page = view(
        snap.entry,
        snap.facts,
        snap.patient_key,
        parts.assessor.policy,
        parts.settings.policy,
        snap.evaluated_at,
        person=Person.of(snap.data.get("patient")),
        policy_ref=(str(snap.data["policy"]["id"]), str(snap.data["policy"]["version"])),
    )
    day = humanize.day(page.evaluated_at)
    origin = (
        f"As evaluated on {day} at {page.evaluated_at:%H:%M} from the EHR's data "
        "(Pinpoint stores no data for this patient)."
    )
    missing = snap.data.get("unavailable") or []
    if missing:
        origin += " Some data could not be retrieved from the EHR then: the affected targets say which."
    return replace(page, origin=origin)


@router.get("/patients/{pid}/evidence", response_class=HTMLResponse)
def evidence(
    pid: str,
    request: Request,
    parts: RecommenderDep,
    exp: Annotated[str | None, Query()] = None,
    sig: Annotated[str | None, Query()] = None,
    now: Annotated[str | None, Query()] = None,
) -> Response:
    def make() -> Response:
        key = patient_key(pid)
        authorize(request, parts, key, exp, sig)
        page = _stored_page(parts, key, now, None)
        if page is None:
            raise NotFound(f"No data is stored for patient {pid}")
        return _page(page)

    return _answer(request, parts, make)


@router.get("/evidence/cards/{card}", response_class=HTMLResponse)
def card_evidence(
    card: str,
    request: Request,
    parts: RecommenderDep,
    exp: Annotated[str | None, Query()] = None,
    sig: Annotated[str | None, Query()] = None,
    now: Annotated[str | None, Query()] = None,
) -> Response:
    """What a card's ``absolute`` link opens: stored data live, else the card's snapshot."""

    def make() -> Response:
        if not (
            (exp is not None or sig is not None) and parts.links.card_valid(card, exp, sig, now=utcnow())
        ):
            _token_or_refuse(request, parts, exp, sig)
        snap = load_snapshot(parts.engine, card, utcnow())
        if snap is None:
            retention = _days(parts.settings.config.cds.evidence_retention)
            raise NotFound(
                f"No evidence is kept for this card (evidence is kept {retention} after a card is shown)"
            )
        page = _stored_page(parts, snap.patient_key, now, Person.of(snap.data.get("patient")))
        return _page(page if page is not None else snapshot_page(parts, snap))

    return _answer(request, parts, make)


# ------------------------------------------------------------------------------- SMART app launch


@router.get("/smart/{source}/launch")
async def smart_launch(
    source: str,
    request: Request,
    parts: RecommenderDep,
    launch: Annotated[str | None, Query()] = None,
    iss: Annotated[str | None, Query()] = None,
) -> Response:
    try:
        target = await parts.smart.begin(source, launch, iss)
    except PinpointError as exc:
        if wants_html(request):
            return html_error(exc, parts)
        raise
    return RedirectResponse(target, status_code=302, headers={"Cache-Control": "no-store"})


@router.get("/smart/{source}/callback")
async def smart_callback(
    source: str,
    request: Request,
    parts: RecommenderDep,
    code: Annotated[str | None, Query()] = None,
    state: Annotated[str | None, Query()] = None,
    error: Annotated[str | None, Query()] = None,
) -> Response:
    try:
        sid = await parts.smart.complete(source, code, state, error)
    except PinpointError as exc:
        if wants_html(request):
            return html_error(exc, parts)
        raise
    response = RedirectResponse("/smart/evidence", status_code=303, headers={"Cache-Control": "no-store"})
    secure = parts.smart.cookie_secure()
    response.set_cookie(
        COOKIE,
        sid,
        httponly=True,
        secure=secure,
        samesite="none" if secure else "lax",  # an EHR frames the app: a cross-site cookie needs None
        path="/smart",
        max_age=3600,
    )
    return response


def _stored(parts: Recommender, key: str) -> tuple[list[dict[str, Any]], dict[str, Record]]:
    with session_scope(parts.engine) as db:
        stored = load_patient_resources(db, key) if patient_known(db, key) else []
        return stored, (stored_records(db, key) if stored else {})


async def _ehr_page(parts: Recommender, session: SmartSession) -> PageView:
    """The page of the session's patient from the EHR (with the token), merged with what is
    stored; the card's snapshot (appContext) or the stored data when the EHR cannot be read."""
    key = f"{session.source}:{session.patient}"
    ehr, failed = await read_patient(
        parts.smart.http, session.iss, UserToken(session.access_token), session.patient
    )
    stored, records = await asyncio.to_thread(_stored, parts, key)
    if ehr or not failed:
        resources = merge(stored, ehr)
        person = Person.of(patient_header(resources, session.patient))
        unavailable = frozenset() if stored else frozenset(kind for k in failed for kind in PREFETCH_DATA[k])
        origin = "Read from the EHR just now" + (" and Pinpoint's stored data." if stored else ".")
        return build(
            resources,
            key,
            parts.assessor,
            parts.settings.policy,
            utcnow(),
            records,
            person=person,
            origin=origin,
            unavailable=unavailable,
        )
    snap = (
        await asyncio.to_thread(load_snapshot, parts.engine, session.card, utcnow()) if session.card else None
    )
    if snap is not None and snap.patient_key == key:
        return snapshot_page(parts, snap)
    if stored:
        return build(stored, key, parts.assessor, parts.settings.policy, utcnow(), records)
    raise UpstreamError("The EHR's data for this patient could not be read; try again in a minute")


@router.get("/smart/evidence", response_class=HTMLResponse)
async def smart_evidence(request: Request, parts: RecommenderDep) -> Response:
    try:
        session = parts.smart.session(request.cookies.get(COOKIE))
        return _page(await _ehr_page(parts, session))
    except PinpointError as exc:
        if wants_html(request):
            return html_error(exc, parts)
        raise
