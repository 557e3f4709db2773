"""Recommender service composition: its routers, readiness checks and background tasks."""

from __future__ import annotations

from fastapi import FastAPI

from services.recommender.cds_hooks import api as cds_hooks_api
from shared.web import Runtime


def install(app: FastAPI, runtime: Runtime) -> None:
    """Routes arrive with the worker, CDS Hooks and evidence issues."""
    app.include_router(cds_hooks_api.router())


def install_worker(runtime: Runtime) -> None:
    """The worker loop arrives with the worker issue."""
