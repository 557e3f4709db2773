"""HTTP routes of the recommender."""

from __future__ import annotations

from fastapi import FastAPI

from shared.web import Runtime


def install_reads(app: FastAPI, runtime: Runtime) -> None:
    """Suggestion reads, the live assessment and re-evaluation; queue readiness and gauges."""
    from services.recommender.api import suggestions
    from services.recommender.metrics import COLLECTOR
    from services.recommender.worker import queue_check

    app.include_router(suggestions.router())
    COLLECTOR.engine = runtime.engine
    runtime.checks.setdefault("queue", queue_check(runtime.engine, runtime.settings.ready_max_queue_age))
