"""Patient-level routes: the live assessment and re-evaluation.

Routes are thin: parse, call one function, return.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from services.recommender.container import Recommender, RecommenderDep
from services.recommender.patients.ids import parse_now, patient_key, patient_ref
from services.recommender.patients.repository import (
    load_patient_resources,
    patient_keys_with_data,
    patient_known,
)
from shared.db.models import AuditLog, utcnow
from shared.db.queue import mark_dirty
from shared.db.session import session_scope
from shared.errors import NotFound
from shared.humanize import plural
from shared.web import FhirResponse, json_request_body, read_json, require_admin_token, require_api_token

router = APIRouter(tags=["recommender"])
reader = [Depends(require_api_token)]


class Reevaluate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient: str | None = None


@router.get("/patients/{pid}/assessment", dependencies=reader)
def assessment(pid: str, parts: RecommenderDep, now: Annotated[str | None, Query()] = None) -> FhirResponse:
    key = patient_key(pid)
    when = parse_now(now)
    with session_scope(parts.engine) as session:
        if not patient_known(session, key):
            raise NotFound(f"No data is stored for patient {pid}")
        resources = load_patient_resources(session, key)
    document = parts.assessor.patient_document(resources, patient_ref(key), when)
    return FhirResponse(document)


@router.post(
    "/admin/reevaluate",
    dependencies=[Depends(require_admin_token)],
    status_code=202,
    openapi_extra=json_request_body(Reevaluate),
)
async def reevaluate(request: Request, parts: RecommenderDep) -> FhirResponse:
    body = await read_json(request, Reevaluate, parts.settings.max_body_bytes)
    return await run_in_threadpool(_reevaluate, parts, body)


def _reevaluate(parts: Recommender, body: Reevaluate | None) -> FhirResponse:
    with session_scope(parts.engine) as session:
        if body is not None and body.patient is not None:
            key = patient_key(body.patient)
            if not patient_known(session, key):
                raise NotFound(f"No data is stored for patient {body.patient}")
            keys = [key]
        else:
            keys = patient_keys_with_data(session)
        marked = mark_dirty(session, keys)
        session.add(
            AuditLog(at=utcnow(), actor="admin", action="reevaluate", target=None, detail={"marked": marked})
        )
    text = f"{plural(marked, 'patient')} marked for re-evaluation"
    return FhirResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
        },
        status_code=202,
    )
