"""CDS Hooks routes: thin — authenticate, call one service function, return JSON."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.recommender.cds_hooks.auth import Caller
from services.recommender.cds_hooks.discovery import SERVICES, CdsService, discovery_document
from services.recommender.cds_hooks.service import (
    CallOutcome,
    authenticate,
    cds_state,
    handle_call,
    handle_feedback,
    record_call,
)
from shared.errors import NotFound, PinpointError
from shared.web import RuntimeDep, read_body


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


def router() -> APIRouter:
    r = APIRouter(tags=["cds-hooks"])

    @r.get("/cds-services")
    async def discovery(request: Request, runtime: RuntimeDep) -> CdsJson:
        await authenticate(request, runtime)
        return CdsJson(discovery_document())

    @r.post("/cds-services/{service_id}")
    async def call(service_id: str, request: Request, runtime: RuntimeDep) -> CdsJson:
        service = _service(service_id)
        started = time.perf_counter()
        caller: Caller | None = None
        outcome = CallOutcome({"cards": []})
        status = 500
        try:
            caller = await authenticate(request, runtime)
            await handle_call(runtime, service, await read_body(request, MAX_BODY_BYTES), outcome)
            status = 200
            return CdsJson(outcome.response)
        except PinpointError as exc:
            status = exc.status
            raise
        finally:
            await record_call(
                runtime, service=service, caller=caller, status=status, started=started, outcome=outcome
            )

    @r.post("/cds-services/{service_id}/feedback")
    async def feedback(service_id: str, request: Request, runtime: RuntimeDep) -> CdsJson:
        service = _service(service_id)
        await authenticate(request, runtime)
        await cds_state(runtime).audit.flush()  # the cards' audit rows tell their pathways
        body = await read_body(request, MAX_BODY_BYTES)
        await asyncio.to_thread(handle_feedback, runtime, service, body)
        return CdsJson({})

    return r
