"""Recommender service composition: its routers, readiness checks and background tasks."""

from __future__ import annotations

from fastapi import FastAPI

from shared.web import Runtime


def install(app: FastAPI, runtime: Runtime) -> None:
    """Routes arrive with the worker, CDS Hooks and evidence issues."""
    from services.recommender import delivery  # noqa: F401  (registers the delivery replayer)
    from services.recommender.api import install_reads

    install_reads(app, runtime)  # /suggestions/fhir, /patients/{id}/assessment, /admin/reevaluate


def install_worker(runtime: Runtime) -> None:
    """The worker loop arrives with the worker issue."""
    from services.recommender.delivery import install_delivery
    from services.recommender.worker import install_worker as install_loop

    install_loop(runtime)
    install_delivery(runtime)  # write-back of the outbox (issue 8)
