"""One CDS Hooks call end to end: authenticate, validate, gather data, assess, render cards,
audit. Routes call these functions and return what they give."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import Request
from prometheus_client import Counter
from sqlalchemy.engine import Engine

from services.recommender.assessor import Assessor
from services.recommender.cds_hooks.auth import Caller, JwksStore, jti_ledger, verify_client_jwt
from services.recommender.cds_hooks.cards import CardContext, RenderedCard, cards_for
from services.recommender.cds_hooks.data import Admission, Slot, as_draft_orders, gather
from services.recommender.cds_hooks.discovery import CdsService
from services.recommender.cds_hooks.feedback import count_feedback, store_feedback
from services.recommender.cds_hooks.models import HookCall, parse_feedback, parse_hook_request
from services.recommender.evidence.links import EvidenceLinks
from services.recommender.evidence.snapshots import SNAPSHOT, patient_header, snapshot_body, snapshot_rows
from shared.db.group_commit import GroupCommit, GroupInsertNew
from shared.db.models import AuditLog
from shared.db.session import session_scope
from shared.errors import PreconditionFailed
from shared.fhir.sources import SourceClients
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("pinpoint.cds")
AUDIT = AuditLog.__table__  # type: ignore[attr-defined]

#: The audit and snapshot writers gather this long before each transaction (nobody waits for
#: them but feedback, which flushes, and shutdown): one commit per 20 ms however many calls.
AUDIT_LINGER = 0.02

#: CDS calls working on a parsed prefetch at once (:class:`~.data.Admission`): enough that one
#: computes while others wait for their stored-data read, few enough that the heap stays small.
CALLS_IN_HAND = 4

CARDS = Counter("pinpoint_cds_cards_total", "CDS cards returned", ["service", "pathway", "indicator"])
CALLS = Counter("pinpoint_cds_calls_total", "CDS service calls", ["service", "outcome"])


@dataclass
class Cds:
    """The CDS Hooks parts of a process, built once by the composition root
    (:mod:`services.recommender.container`). Tests replace the seams (``assessor``, ``clock``)."""

    settings: Settings
    engine: Engine
    assessor: Assessor
    links: EvidenceLinks
    audit: GroupCommit
    http: httpx.AsyncClient  # fhirServer reads and JWKS fetches
    snapshots: GroupCommit  # the cards' evidence snapshots, written off the answering path
    sources: SourceClients | None = None  # the sources' own outbound credentials (token caches)
    jwks: JwksStore = field(init=False)
    admission: Admission = field(init=False)
    seen: GroupInsertNew = field(init=False)  # the JWT ids accepted (replay cache), batched
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.jwks = JwksStore(http=lambda: self.http)
        self.admission = Admission(CALLS_IN_HAND)
        self.seen = jti_ledger(self.engine, lambda: self.clock())

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: Engine,
        assessor: Assessor,
        links: EvidenceLinks,
        sources: SourceClients | None = None,
    ) -> Cds:
        return cls(
            settings,
            engine,
            assessor,
            links,
            GroupCommit(engine, AUDIT, linger=AUDIT_LINGER),
            httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False),
            GroupCommit(engine, SNAPSHOT, linger=AUDIT_LINGER),
            sources,
        )

    async def aclose(self) -> None:
        """Commit the queued audit rows and snapshots, close the outbound client (graceful stop)."""
        await self.audit.close()
        await self.snapshots.close()
        await self.seen.close()
        await self.http.aclose()


async def authenticate(request: Request, cds: Cds, *, patient_data: bool = True) -> Caller:
    """The JWT check for the URL called (``aud`` = public base URL + path). ``patient_data``:
    a service call or feedback, never open once any credential is configured."""
    return await verify_client_jwt(
        request.headers.get("authorization"),
        audience=cds.settings.base_url + request.url.path,
        cds=cds.settings.config.cds,
        jwks=cds.jwks,
        seen=cds.seen,
        now=cds.clock(),
        locked=patient_data and cds.settings.auth_configured,
    )


@dataclass
class CallOutcome:
    response: dict[str, Any]
    call: HookCall | None = None
    patient_key: str | None = None
    rendered: list[RenderedCard] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)  # the assessment document's policy id, version
    #: Work for after the answer has left: the cards' evidence snapshot (see :func:`handle_call`).
    after: Callable[[], Awaitable[None]] | None = None


async def handle_call(cds: Cds, service: CdsService, body: bytes, outcome: CallOutcome) -> None:
    """Validate, gather, assess and render into ``outcome`` (filled as far as the call got, for
    the audit); 412 only when no data source was available. Each card links to its evidence
    (:meth:`EvidenceLinks.card_link`); ``outcome.after`` builds the call's evidence snapshot and
    queues it for the cards' group commit once the answer has left (measured on v02: the snapshot
    costs about a third of the evaluation, which the EHR no longer waits for)."""
    slot = cds.admission.slot()
    await slot.take()
    try:
        await _handle_call(cds, service, body, outcome, slot)
    finally:
        slot.give()


async def _handle_call(cds: Cds, service: CdsService, body: bytes, outcome: CallOutcome, slot: Slot) -> None:
    settings = cds.settings
    call = parse_hook_request(body, service.id, service.hook)
    outcome.call = call
    data = await gather(call, settings, cds.engine, cds.http, cds.sources, slot)
    outcome.patient_key, outcome.used = data.patient_key, data.used
    if not data.available:
        log.warning("cds.no_data", service=service.id, hook_instance=call.hook_instance, **data.problems)
        raise PreconditionFailed(data.unavailable_reason())
    if data.unavailable:
        log.info("cds.data_unavailable", service=service.id, kinds=sorted(data.unavailable))
    now = cds.clock()
    assessed = cds.assessor.assess(data.resources, now, data.unavailable)
    document = assessed.document
    outcome.policy = dict(document.get("policy") or {"id": settings.policy})
    drafts = {f"ServiceRequest/{o['id']}": o for o in as_draft_orders(call.draft_orders, call.patient_id)}
    ctx = CardContext(
        evidence_url=cds.links.base_url,  # each card's own link is set below
        policy={"id": settings.policy},
        order_hook=service.hook != "patient-view",
    )
    patient_ref = f"Patient/{call.patient_id}"
    rendered = cards_for(
        document,
        patient_ref=patient_ref,
        hook=service.hook,
        drafts=drafts,
        selections=call.selections,
        ctx=ctx,
    )
    wall = datetime.now(UTC)
    for r in rendered:
        r.card["links"] = [cds.links.card_link(r.card["uuid"], data.id_space, now=wall)]
    outcome.rendered = rendered
    outcome.response = {"cards": [r.card for r in rendered]}
    if not rendered:
        return

    async def keep_snapshot() -> None:
        """Built and queued after the answer has left (a background task of the response)."""
        entry: dict[str, Any] = next(
            (p for p in document.get("patients") or [] if p.get("patient") == patient_ref), {}
        )
        snapshot = snapshot_body(
            entry=entry,
            facts=assessed.facts.get(patient_ref),
            context=assessed.contexts.get(patient_ref),
            policy=cds.assessor.policy,
            patient=patient_header(data.resources, call.patient_id),
            now=now,
            unavailable=data.unavailable,
        )
        rows = snapshot_rows(
            (r.card["uuid"] for r in rendered),
            patient_key=data.patient_key,
            service_id=service.id,
            body=snapshot,
            now=wall,
            retention=settings.config.cds.evidence_retention,
        )
        await cds.snapshots.write(rows, wait=False)

    outcome.after = keep_snapshot


async def record_call(
    cds: Cds,
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
    now = cds.clock()
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
                "policy": str((outcome.policy if outcome else {}).get("id", "unknown")),
                "policyVersion": str((outcome.policy if outcome else {}).get("version", "unknown")),
            },
        }
        for r in rendered
    ]
    await cds.audit.write(rows, wait=False)
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


def handle_feedback(cds: Cds, service: CdsService, body: bytes) -> int:
    request = parse_feedback(body)
    now = cds.clock()
    with session_scope(cds.engine) as session:
        new = store_feedback(session, service.id, request, now)
    count_feedback(service.id, new)
    log.info("cds.feedback", service=service.id, items=len(request.feedback), new=len(new))
    return len(new)
