"""Reads of what Pinpoint wrote: its own FHIR base ``/suggestions/fhir``.

Routes are thin: parse, call one function, return.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from services.recommender.container import RecommenderDep
from services.recommender.patients.ids import patient_key
from services.recommender.suggestions.builders import SYSTEM
from services.recommender.suggestions.repository import SUGGESTION_TYPES, read_suggestion, search_suggestions
from shared.db.session import session_scope
from shared.errors import NotFound
from shared.web import FhirResponse, require_api_token


def _type(rtype: str) -> str:
    if rtype not in SUGGESTION_TYPES:
        raise NotFound(f"Pinpoint writes no {rtype} resources (only {', '.join(SUGGESTION_TYPES)})")
    return rtype


def capability_statement(base_url: str) -> dict[str, Any]:
    """What the suggestion store's own FHIR base serves: read and search, nothing else."""
    params = [
        {"name": "patient", "type": "reference", "documentation": "<id> (default source) or <source>:<id>"},
        {"name": "identifier", "type": "token"},
        {"name": "_count", "type": "number"},
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2025-01-01",
        "kind": "instance",
        "software": {"name": "Pinpoint suggestions"},
        "implementation": {
            "description": "Suggestions written by Pinpoint",
            "url": f"{base_url}/suggestions/fhir",
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": t,
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": params,
                    }
                    for t in SUGGESTION_TYPES
                ],
            }
        ],
    }


router = APIRouter(tags=["recommender"])
reader = [Depends(require_api_token)]


@router.get("/suggestions/fhir/metadata")
def metadata(parts: RecommenderDep) -> FhirResponse:
    return FhirResponse(capability_statement(parts.settings.base_url))


@router.get("/suggestions/fhir/{rtype}", dependencies=reader)
def search(
    rtype: str,
    parts: RecommenderDep,
    request: Request,
    patient: Annotated[str | None, Query()] = None,
    identifier: Annotated[str | None, Query()] = None,
    count: Annotated[int, Query(alias="_count", ge=0, le=1000)] = 1000,
) -> FhirResponse:
    _type(rtype)
    ident = identifier.removeprefix(f"{SYSTEM}|") if identifier else None
    with session_scope(parts.engine) as session:
        found = search_suggestions(
            session,
            rtype,
            patient_key=patient_key(patient) if patient is not None else None,
            identifier=ident,
            limit=count,
        )
    base = f"{parts.settings.base_url}/suggestions/fhir"
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [
            {"fullUrl": f"{base}/{rtype}/{res['id']}", "resource": res, "search": {"mode": "match"}}
            for res in found
        ],
    }
    return FhirResponse(bundle)


@router.get("/suggestions/fhir/{rtype}/{rid}", dependencies=reader)
def read(rtype: str, rid: str, parts: RecommenderDep) -> FhirResponse:
    _type(rtype)
    with session_scope(parts.engine) as session:
        row = read_suggestion(session, rtype, rid)
    if row is None or row.resource is None:
        raise NotFound(f"{rtype}/{rid} is not a suggestion Pinpoint holds")
    return FhirResponse(row.resource, headers={"ETag": f'W/"{row.version}"'})
