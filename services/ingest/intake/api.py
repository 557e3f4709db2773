"""The FHIR bases: ``/fhir`` (source ``default``) and ``/sources/{source_id}/fhir``.

Routes only: authenticate, call one intake function, return. Writes check the source's inbound
credential (refused before the body is read when the source has none and is not open); reads
need the API token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from services.ingest.container import Ingest, IngestDep
from services.ingest.intake import push, reads
from services.ingest.intake.auth import check_writable, verify_inbound
from services.ingest.intake.pipeline import Result
from services.ingest.subscriptions.medplum import medplum_delivery
from services.ingest.subscriptions.state import CLASSIC_ROW
from shared.errors import TooLarge, Unauthorized
from shared.settings import Source
from shared.web import FhirResponse, Runtime, RuntimeDep, read_body, require_api_token

DEFAULT = "/fhir"  # the default source's FHIR base
SOURCE = "/sources/{source_id}/fhir"  # a configured source's FHIR base
_SOURCE_ID_DOC = "The id of a source configured in the config file"


async def get_source(request: Request, runtime: RuntimeDep) -> Source:
    return push.resolve_source(runtime.settings, request.path_params.get("source_id", "default"))


async def declare_source_id(
    source_id: Annotated[str, Path(description=_SOURCE_ID_DOC)],
) -> None:
    """Declares ``/sources/{source_id}`` on the routes of that base (so the OpenAPI lists and
    validates it); :func:`get_source`, shared with ``/fhir``, reads it."""


SourceDep = Annotated[Source, Depends(get_source)]

#: ``source_id`` declared in the OpenAPI only (as :func:`declare_source_id` declares it): the
#: delivery routes resolve nothing through FastAPI's dependencies (see :func:`_parts`).
SOURCE_ID = {
    "parameters": [
        {
            "name": "source_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "description": _SOURCE_ID_DOC, "title": "Source Id"},
            "description": _SOURCE_ID_DOC,
        }
    ]
}


def _parts(request: Request) -> tuple[Runtime, Ingest, Source]:
    """What :data:`RuntimeDep`, :data:`IngestDep` and :data:`SourceDep` give, read without
    FastAPI's dependency resolution: the delivery routes (notifications, rest-hooks), where it
    was a tenth of the server's CPU per notification at 200/s."""
    state = request.app.state
    runtime: Runtime = state.runtime
    ingest: Ingest = state.ingest
    return (
        runtime,
        ingest,
        push.resolve_source(runtime.settings, request.path_params.get("source_id", "default")),
    )


ReadAccess = [Depends(require_api_token)]
SourceOnly = [Depends(declare_source_id)]
SourceRead = [*SourceOnly, *ReadAccess]

#: Every route is served on both bases: the default source's and a configured source's.
router = APIRouter(tags=["ingest"], default_response_class=FhirResponse)


def _ctype(request: Request) -> str | None:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() or None


async def _body(request: Request, runtime: RuntimeDep, source: Source) -> bytes:
    """The body within ``PINPOINT_MAX_BODY_BYTES``, its credential checked. One over the limit is
    a 413 and, when the credential checks out without the rest of the body (a bearer token, an
    open source), a dead letter of its first bytes and its size; an HMAC signature covers the
    whole body, which is not read: such a sender is not known and nothing is kept. A source with
    no credential of its own that is not open is refused (401) before anything is read."""
    check_writable(runtime.settings, source)
    try:
        body = await read_body(request, runtime.settings.max_body_bytes)
    except TooLarge as exc:
        try:
            verify_inbound(source, request.headers, exc.head)
        except Unauthorized:
            raise exc from None
        await run_in_threadpool(push.keep_too_large, runtime.engine, source, exc, _ctype(request))
        raise
    verify_inbound(source, request.headers, body)
    return body


async def _receive(
    request: Request,
    runtime: RuntimeDep,
    ingest: IngestDep,
    source: Source,
    handler: push.Handler | None = None,
    subscription: str | None = None,
) -> Result:
    """A small body is handed from here to the group writer (no thread-pool hop; its answer waits
    for the commit of its batch); a large one, or one of a wrong media type, is received in the
    thread pool in its own transaction."""
    body = await _body(request, runtime, source)
    ctype = _ctype(request)
    if len(body) > push.GROUPED_MAX_BYTES or push.wrong_media_type(body, ctype) is not None:
        return await run_in_threadpool(
            push.receive, runtime.engine, source, body, ctype, handler, subscription
        )
    outcome: Result | push.PayloadError
    try:
        outcome = await ingest.writer.run(push.PushWork(source, body, handler, subscription))
    except push.Refused as exc:
        outcome = exc.result
    if isinstance(outcome, Result) and push.settled(outcome):
        return outcome
    return await run_in_threadpool(push.settle, runtime.engine, source, body, ctype, outcome)


def _answer(result: Result) -> Response:
    if result.empty:
        return Response(status_code=result.status)
    return FhirResponse(result.body, status_code=result.status, headers=result.headers or None)


@router.post(DEFAULT)
@router.post(SOURCE, openapi_extra=SOURCE_ID)
@router.post(DEFAULT + "/", include_in_schema=False)
@router.post(SOURCE + "/", include_in_schema=False)
async def post_base(request: Request) -> Response:
    """A Bundle, a single resource, an empty ping, or a Medplum rest-hook (``X-Medplum-*``)."""
    runtime, ingest, source = _parts(request)
    medplum = medplum_delivery(request.headers)
    if medplum.deleted is not None:
        await _body(request, runtime, source)  # Medplum signs the resource, not "{}": refused
        rtype, rid = medplum.deleted
        return FhirResponse(
            await run_in_threadpool(push.delete, runtime.engine, source, rtype, rid, medplum.subscription)
        )
    return _answer(await _receive(request, runtime, ingest, source, subscription=medplum.subscription))


@router.post(DEFAULT + "/{rtype}")
@router.post(SOURCE + "/{rtype}", dependencies=SourceOnly)
async def post_type(
    rtype: str, request: Request, runtime: RuntimeDep, ingest: IngestDep, source: SourceDep
) -> Response:
    return _answer(await _receive(request, runtime, ingest, source, push.post_type_handler(source, rtype)))


@router.put(DEFAULT + "/{rtype}/{rid}")
@router.put(SOURCE + "/{rtype}/{rid}", openapi_extra=SOURCE_ID)
async def put_resource(rtype: str, rid: str, request: Request) -> Response:
    """Also HAPI FHIR's classic rest-hook delivery (``PUT {endpoint}/{type}/{id}``)."""
    runtime, ingest, source = _parts(request)
    handler = push.put_handler(source, rtype, rid)
    return _answer(await _receive(request, runtime, ingest, source, handler, subscription=CLASSIC_ROW))


@router.put(DEFAULT + "/{rtype}/{rid}/_history/{vid}")
@router.put(SOURCE + "/{rtype}/{rid}/_history/{vid}", openapi_extra=SOURCE_ID)
async def put_version(rtype: str, rid: str, vid: str, request: Request) -> Response:
    """HAPI without "strip version ids" PUTs ``{endpoint}/{type}/{id}/_history/{vid}``."""
    return await put_resource(rtype, rid, request)


@router.delete(DEFAULT + "/{rtype}/{rid}")
@router.delete(SOURCE + "/{rtype}/{rid}", dependencies=SourceOnly)
async def delete_resource(
    rtype: str, rid: str, request: Request, runtime: RuntimeDep, source: SourceDep
) -> FhirResponse:
    await _body(request, runtime, source)
    return FhirResponse(await run_in_threadpool(push.delete, runtime.engine, source, rtype, rid, CLASSIC_ROW))


@router.get(DEFAULT + "/metadata", dependencies=ReadAccess)
@router.get(SOURCE + "/metadata", dependencies=SourceRead)
def metadata(runtime: RuntimeDep, source: SourceDep) -> FhirResponse:
    return FhirResponse(reads.capability_statement(runtime.settings, source))


@router.get(DEFAULT + "/{rtype}/{rid}", dependencies=ReadAccess)
@router.get(SOURCE + "/{rtype}/{rid}", dependencies=SourceRead)
def read(rtype: str, rid: str, runtime: RuntimeDep, source: SourceDep) -> FhirResponse:
    return FhirResponse(reads.read(runtime.engine, source, rtype, rid))


@router.get(DEFAULT + "/{rtype}", dependencies=ReadAccess)
@router.get(SOURCE + "/{rtype}", dependencies=SourceRead)
def search(
    rtype: str,
    runtime: RuntimeDep,
    source: SourceDep,
    patient: Annotated[str | None, Query()] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 1000,
) -> FhirResponse:
    return FhirResponse(reads.search(runtime.engine, source, rtype, patient, count))
