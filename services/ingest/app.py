"""Ingest service composition: its routers, readiness checks and background tasks."""

from __future__ import annotations

from fastapi import FastAPI

from services.ingest.api import router
from services.ingest.subscriptions import wiring as subscriptions
from shared.web import Runtime


def install(app: FastAPI, runtime: Runtime) -> None:
    app.include_router(router())
    subscriptions.install(runtime)
