"""One CDS Hooks call end to end: authenticate, validate, gather data, assess, render cards,
audit. Routes call these functions and return what they give."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import Request
from prometheus_client import Counter

from services.recommender.cds_hooks.assess import Assessor, assess
from services.recommender.cds_hooks.auth import Caller, JwksStore, verify_client_jwt
from services.recommender.cds_hooks.cards import CardContext, RenderedCard, cards_for, evidence_link
from services.recommender.cds_hooks.data import as_draft_orders, gather
from services.recommender.cds_hooks.discovery import CdsService
from services.recommender.cds_hooks.feedback import count_feedback, store_feedback
from services.recommender.cds_hooks.models import HookCall, parse_feedback, parse_hook_request
from shared.db.group_commit import GroupCommit
from shared.db.models import AuditLog
from shared.db.session import session_scope
from shared.errors import PreconditionFailed
from shared.logging import get_logger
from shared.web import Runtime

log = get_logger("pinpoint.cds")
AUDIT = AuditLog.__table__  # type: ignore[attr-defined]

CARDS = Counter("pinpoint_cds_cards_total", "CDS cards returned", ["service", "pathway", "indicator"])
CALLS = Counter("pinpoint_cds_calls_total", "CDS service calls", ["service", "outcome"])


@dataclass
class CdsState:
    """Per-process CDS state kept in ``runtime.state["cds"]``; tests may replace the seams."""

    jwks: JwksStore
    audit: GroupCommit
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    assessor: Assessor = assess
    http: httpx.AsyncClient | None = None


def cds_state(runtime: Runtime) -> CdsState:
    state = runtime.state.get("cds")
    if state is None:
        holder: dict[str, httpx.AsyncClient] = {}

        def http() -> httpx.AsyncClient:
            if "client" not in holder:
                holder["client"] = httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False)
            return holder["client"]

        state = CdsState(jwks=JwksStore(http=http), audit=GroupCommit(runtime.engine, AUDIT))
        state.http = None
        runtime.state["cds"] = state
        runtime.state["cds.http"] = http

        async def _close() -> None:
            await state.audit.close()
            if "client" in holder:
                await holder["client"].aclose()

        runtime.on_shutdown.append(_close)
    assert isinstance(state, CdsState)
    return state


def _http(runtime: Runtime) -> httpx.AsyncClient:
    state = cds_state(runtime)
    if state.http is not None:
        return state.http
    factory: Callable[[], httpx.AsyncClient] = runtime.state["cds.http"]
    return factory()


async def authenticate(request: Request, runtime: Runtime) -> Caller:
    """The JWT check for the URL called (``aud`` = public base URL + path)."""
    state = cds_state(runtime)
    return await verify_client_jwt(
        request.headers.get("authorization"),
        audience=runtime.settings.base_url + request.url.path,
        cds=runtime.settings.config.cds,
        jwks=state.jwks,
        engine=runtime.engine,
        now=state.clock(),
    )


def _patient_path_id(space: str, patient_id: str) -> str:
    return patient_id if space == "default" else f"{space}:{patient_id}"


@dataclass
class CallOutcome:
    response: dict[str, Any]
    call: HookCall | None = None
    patient_key: str | None = None
    rendered: list[RenderedCard] = field(default_factory=list)
    used: list[str] = field(default_factory=list)


async def handle_call(runtime: Runtime, service: CdsService, body: bytes, outcome: CallOutcome) -> None:
    """Validate, gather, assess and render into ``outcome`` (filled as far as the call got, for
    the audit); 412 only when no data source was available."""
    settings = runtime.settings
    state = cds_state(runtime)
    call = parse_hook_request(body, service.id, service.hook)
    outcome.call = call
    data = await gather(call, settings, runtime.engine, _http(runtime))
    outcome.patient_key, outcome.used = data.patient_key, data.used
    if not data.available:
        raise PreconditionFailed(
            "No data for this patient: the prefetch has none of this service's keys, fhirServer is not a "
            "configured source (or could not be read), and Pinpoint stores nothing for the patient"
        )
    document = state.assessor(data.resources, settings.policy, state.clock())
    drafts = {f"ServiceRequest/{o['id']}": o for o in as_draft_orders(call.draft_orders, call.patient_id)}
    ctx = CardContext(
        evidence_url=evidence_link(runtime, _patient_path_id(data.id_space, call.patient_id)),
        policy={"id": settings.policy},
        order_hook=service.hook != "patient-view",
    )
    rendered = cards_for(
        document,
        patient_ref=f"Patient/{call.patient_id}",
        hook=service.hook,
        drafts=drafts,
        selections=call.selections,
        ctx=ctx,
    )
    outcome.rendered = rendered
    outcome.response = {"cards": [r.card for r in rendered]}


async def record_call(
    runtime: Runtime,
    *,
    service: CdsService,
    caller: Caller | None,
    status: int,
    started: float,
    outcome: CallOutcome | None,
) -> None:
    """The audit log row of a call (ids, counts, timing) plus one row per card for feedback,
    queued for the group commit before the answer leaves and committed right after it (see
    shared/db/group_commit.py; the feedback route flushes first)."""
    state = cds_state(runtime)
    now = state.clock()
    ms = round((time.perf_counter() - started) * 1000, 1)
    call = outcome.call if outcome else None
    rendered = outcome.rendered if outcome else []
    detail: dict[str, Any] = {
        "service": service.id,
        "hook": service.hook,
        "status": status,
        "ms": ms,
        "cards": len(rendered),
        "card_uuids": [r.card["uuid"] for r in rendered],
    }
    if call is not None:
        detail["hookInstance"] = call.hook_instance
        detail["sources"] = outcome.used if outcome else []
    actor = caller.iss if caller else "unauthenticated"
    rows: list[dict[str, Any]] = [
        {
            "at": now,
            "actor": actor,
            "action": "cds.call",
            "target": outcome.patient_key if outcome else None,
            "detail": detail,
        }
    ]
    rows += [
        {
            "at": now,
            "actor": actor,
            "action": "cds.card",
            "target": r.card["uuid"],
            "detail": {
                "service": service.id,
                "pathway": r.pathway,
                "verdict": r.verdict,
                "indicator": r.card["indicator"],
            },
        }
        for r in rendered
    ]
    await state.audit.write(rows, wait=False)
    CALLS.labels(service.id, str(status)).inc()
    for r in rendered:
        CARDS.labels(service.id, r.pathway, r.card["indicator"]).inc()
    log.info(
        "cds.call",
        service=service.id,
        status=status,
        cards=len(rendered),
        ms=ms,
        hook_instance=call.hook_instance if call else None,
    )


def handle_feedback(runtime: Runtime, service: CdsService, body: bytes) -> int:
    request = parse_feedback(body)
    now = cds_state(runtime).clock()
    with session_scope(runtime.engine) as session:
        new = store_feedback(session, service.id, request, now)
    count_feedback(service.id, new)
    log.info("cds.feedback", service=service.id, items=len(request.feedback), new=len(new))
    return len(new)
