"""Ingest routes: FHIR bases of the sources. Thin: parse, call the intake, return."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from services.ingest.store import read_resource, upsert_resource
from shared.db.deadletters import record_dead_letter
from shared.db.session import session_scope
from shared.errors import Gone, InvalidInput, NotFound, UnsupportedMediaType
from shared.web import FhirResponse, RuntimeDep

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "text/json")


async def read_json_body(request: Request, runtime: RuntimeDep, source: str) -> dict[str, Any] | None:
    """The request body as a FHIR resource dict; ``None`` for an empty body (a ping).

    Bodies that are not JSON or not FHIR are answered 400 and kept as dead letters.
    """
    body = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body.strip():
        return None
    if ctype and ctype not in JSON_TYPES:
        raise UnsupportedMediaType(f"Content-Type {ctype} is not supported; send application/fhir+json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = f"Body is not valid JSON: {exc.msg} at position {exc.pos}"
        _reject(runtime, source, reason, body, ctype, "structure")
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        _reject(
            runtime,
            source,
            "Body is JSON but not a FHIR resource (no resourceType)",
            body,
            ctype,
            "structure",
        )
    return data


def _reject(runtime: RuntimeDep, source: str, reason: str, body: bytes, ctype: str, code: str) -> None:
    err = InvalidInput(reason, code=code)
    record_dead_letter(
        runtime.engine,
        source=source,
        kind="push",
        reason=reason,
        payload=body,
        content_type=ctype,
        outcome=err.outcome(),
    )
    raise err


def router() -> APIRouter:
    r = APIRouter(tags=["ingest"])

    @r.post("/fhir")
    async def post_base(request: Request, runtime: RuntimeDep) -> FhirResponse:
        data = await read_json_body(request, runtime, "default")
        if data is None:
            return FhirResponse({"resourceType": "OperationOutcome", "issue": []}, status_code=200)
        entries = (
            [e.get("resource") for e in data.get("entry", [])] if data["resourceType"] == "Bundle" else [data]
        )
        responses: list[dict[str, Any]] = []
        with session_scope(runtime.engine) as session:
            for res in entries:
                if not isinstance(res, dict) or "id" not in res:
                    responses.append({"response": {"status": "400"}})
                    continue
                patient = (
                    res.get("subject", {}).get("reference")
                    if res["resourceType"] != "Patient"
                    else f"Patient/{res['id']}"
                )
                result = upsert_resource(
                    session, source="default", resource=res, resource_id=res["id"], patient_ref=patient
                )
                status = "201 Created" if result.outcome == "created" else "200 OK"
                responses.append(
                    {"response": {"status": status, "location": f"{res['resourceType']}/{res['id']}"}}
                )
        return FhirResponse({"resourceType": "Bundle", "type": "batch-response", "entry": responses})

    @r.get("/fhir/{rtype}/{rid}")
    def read(rtype: str, rid: str, runtime: RuntimeDep) -> FhirResponse:
        with session_scope(runtime.engine) as session:
            row = read_resource(session, "default", rtype, rid)
        if row is None:
            raise NotFound(f"{rtype}/{rid} is not stored")
        if row.deleted:
            raise Gone(f"{rtype}/{rid} was deleted")
        return FhirResponse(row.raw)

    return r
