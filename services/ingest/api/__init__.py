"""Ingest HTTP routes: the FHIR bases of the sources and the dead-letter admin endpoint."""

from __future__ import annotations

from fastapi import APIRouter

from services.ingest.api.admin import router as admin_router
from services.ingest.api.fhir import router as fhir_router


def router() -> APIRouter:
    r = APIRouter()
    r.include_router(fhir_router())
    r.include_router(admin_router())
    return r
