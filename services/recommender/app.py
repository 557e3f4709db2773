"""Recommender service composition: its routers, readiness checks and background tasks."""

from __future__ import annotations

from fastapi import FastAPI

from services.recommender import delivery  # registers the replayer of parked deliveries
from services.recommender.api import install_reads
from services.recommender.cds_hooks import api as cds_hooks_api
from services.recommender.cds_hooks.service import cds_state
from services.recommender.worker import install_worker as install_loop
from shared.web import Runtime


def install(app: FastAPI, runtime: Runtime) -> None:
    """Routes: CDS Hooks; /suggestions/fhir, /patients/{id}/assessment, /admin/reevaluate."""
    app.include_router(cds_hooks_api.router())
    # A replica that cannot record what it answers is taken out of rotation.
    runtime.checks.setdefault("audit", lambda: cds_state(runtime).audit.health())
    install_reads(app, runtime)
    from services.recommender.evidence import api as evidence_api

    app.include_router(evidence_api.router())  # /patients/{id}/evidence (HTML)


def install_worker(runtime: Runtime) -> None:
    """The evaluation worker loop and the write-back delivery loop (roles all and worker)."""
    install_loop(runtime)
    delivery.install_delivery(runtime)  # write-back of the outbox (issue 8)
