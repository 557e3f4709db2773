"""CDS Hooks routes: thin — authenticate, call one service function, return JSON."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask

from services.recommender.cds_hooks.auth import Caller
from services.recommender.cds_hooks.discovery import SERVICES, CdsService, discovery_document
from services.recommender.cds_hooks.service import (
    CallOutcome,
    authenticate,
    handle_call,
    handle_feedback,
    record_call,
)
from services.recommender.container import Recommender, RecommenderDep
from shared.errors import NotFound, PinpointError
from shared.fhir.text import refuse_unstorable_json
from shared.web import read_body


class CdsJson(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _service(service_id: str) -> CdsService:
    service = SERVICES.get(service_id)
    if service is None:
        raise NotFound(f"No CDS service {service_id!r}; see GET /cds-services")
    return service


#: A prefetch of thousands of resources is a few MB; beyond this a call is refused with 413 before
#: it is read whole (an EHR bug or an attack, not a chart).
MAX_BODY_BYTES = 32 * 1024 * 1024


def _limit(parts: Recommender) -> int:
    return min(MAX_BODY_BYTES, parts.settings.max_body_bytes)


router = APIRouter(tags=["cds-hooks"])


@router.get("/cds-services")
async def discovery(request: Request, parts: RecommenderDep) -> CdsJson:
    await authenticate(request, parts.cds, patient_data=False)
    return CdsJson(discovery_document())


@router.post("/cds-services/{service_id}")
async def call(service_id: str, request: Request, parts: RecommenderDep) -> CdsJson:
    service = _service(service_id)
    started = time.perf_counter()
    caller: Caller | None = None
    outcome = CallOutcome({"cards": []})
    status = 500
    try:
        caller = await authenticate(request, parts.cds)
        await handle_call(parts.cds, service, await read_body(request, _limit(parts)), outcome)
        status = 200
        # the evidence snapshot is built and queued after the answer has been sent
        return CdsJson(outcome.response, background=BackgroundTask(outcome.after) if outcome.after else None)
    except PinpointError as exc:
        status = exc.status
        raise
    finally:
        await record_call(
            parts.cds, service=service, caller=caller, status=status, started=started, outcome=outcome
        )


@router.post("/cds-services/{service_id}/feedback")
async def feedback(service_id: str, request: Request, parts: RecommenderDep) -> CdsJson:
    service = _service(service_id)
    await authenticate(request, parts.cds)
    await parts.cds.audit.flush()  # the cards' audit rows tell their pathways
    body = await read_body(request, _limit(parts))
    refuse_unstorable_json(body)  # feedback is stored: no NUL (PostgreSQL refuses it)
    await asyncio.to_thread(handle_feedback, parts.cds, service, body)
    return CdsJson({})
