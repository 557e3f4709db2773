"""Reads of what Pinpoint wrote (its own FHIR base), the live assessment, re-evaluation.

Routes are thin: parse, call one function, return.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict

from services.recommender.evaluation import Evaluator
from services.recommender.store import (
    SUGGESTION_TYPES,
    load_patient_resources,
    patient_keys_with_data,
    patient_known,
    read_suggestion,
    search_suggestions,
)
from services.recommender.suggestions import SYSTEM
from shared.db.models import AuditLog, utcnow
from shared.db.queue import mark_dirty
from shared.db.session import session_scope
from shared.errors import InvalidInput, NotFound
from shared.web import FhirResponse, Runtime, RuntimeDep, require_admin_token, require_api_token


def patient_key(value: str) -> str:
    """``P-1``, ``Patient/P-1`` (default source) or ``source:P-1`` → ``source:P-1``."""
    value = value.strip().removeprefix("Patient/")
    if not value:
        raise InvalidInput("A patient id is required", code="required")
    source, sep, pid = value.partition(":")
    if not sep:
        return f"default:{value}"
    if not source or not pid:
        raise InvalidInput(f"Not a patient id: {value!r} (use <id> or <source>:<id>)", code="value")
    return f"{source}:{pid.removeprefix('Patient/')}"


def _type(rtype: str) -> str:
    if rtype not in SUGGESTION_TYPES:
        raise NotFound(f"Pinpoint writes no {rtype} resources (only {', '.join(SUGGESTION_TYPES)})")
    return rtype


def evaluator_of(runtime: Runtime) -> Evaluator:
    """The configured policy, loaded once per process."""
    evaluator = runtime.state.get("evaluator")
    if evaluator is None:
        evaluator = Evaluator.from_settings(runtime.settings)
        runtime.state["evaluator"] = evaluator
    assert isinstance(evaluator, Evaluator)
    return evaluator


def _parse_now(value: str | None) -> datetime:
    if value is None:
        return utcnow()
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidInput(f"now: not an ISO date-time: {value!r}", code="value") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


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


class Reevaluate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient: str | None = None


def router() -> APIRouter:
    r = APIRouter(tags=["recommender"])
    reader = [Depends(require_api_token)]

    @r.get("/suggestions/fhir/metadata")
    def metadata(runtime: RuntimeDep) -> FhirResponse:
        return FhirResponse(capability_statement(runtime.settings.base_url))

    @r.get("/suggestions/fhir/{rtype}", dependencies=reader)
    def search(
        rtype: str,
        runtime: RuntimeDep,
        request: Request,
        patient: Annotated[str | None, Query()] = None,
        identifier: Annotated[str | None, Query()] = None,
        count: Annotated[int, Query(alias="_count", ge=0, le=1000)] = 1000,
    ) -> FhirResponse:
        _type(rtype)
        ident = identifier.removeprefix(f"{SYSTEM}|") if identifier else None
        with session_scope(runtime.engine) as session:
            found = search_suggestions(
                session,
                rtype,
                patient_key=patient_key(patient) if patient is not None else None,
                identifier=ident,
                limit=count,
            )
        base = f"{runtime.settings.base_url}/suggestions/fhir"
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

    @r.get("/suggestions/fhir/{rtype}/{rid}", dependencies=reader)
    def read(rtype: str, rid: str, runtime: RuntimeDep) -> FhirResponse:
        _type(rtype)
        with session_scope(runtime.engine) as session:
            row = read_suggestion(session, rtype, rid)
        if row is None or row.resource is None:
            raise NotFound(f"{rtype}/{rid} is not a suggestion Pinpoint holds")
        return FhirResponse(row.resource, headers={"ETag": f'W/"{row.version}"'})

    @r.get("/patients/{pid}/assessment", dependencies=reader)
    def assessment(pid: str, runtime: RuntimeDep, now: Annotated[str | None, Query()] = None) -> FhirResponse:
        key = patient_key(pid)
        when = _parse_now(now)
        with session_scope(runtime.engine) as session:
            if not patient_known(session, key):
                raise NotFound(f"No data is stored for patient {pid}")
            resources = load_patient_resources(session, key)
        document = evaluator_of(runtime).document(resources, f"Patient/{key.partition(':')[2]}", when)
        return FhirResponse(document)

    @r.post("/admin/reevaluate", dependencies=[Depends(require_admin_token)], status_code=202)
    def reevaluate(runtime: RuntimeDep, body: Annotated[Reevaluate | None, Body()] = None) -> FhirResponse:
        with session_scope(runtime.engine) as session:
            if body is not None and body.patient is not None:
                key = patient_key(body.patient)
                if not patient_known(session, key):
                    raise NotFound(f"No data is stored for patient {body.patient}")
                keys = [key]
            else:
                keys = patient_keys_with_data(session)
            marked = mark_dirty(session, keys)
            session.add(
                AuditLog(
                    at=utcnow(), actor="admin", action="reevaluate", target=None, detail={"marked": marked}
                )
            )
        text = f"{marked} patient(s) marked for re-evaluation"
        return FhirResponse(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
            },
            status_code=202,
        )

    return r
