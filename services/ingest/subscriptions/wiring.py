"""Composition: the subscription worker as a background task, its readiness check."""

from __future__ import annotations

from sqlmodel import Session

from services.ingest.subscriptions import state
from services.ingest.subscriptions.recovery import SubscriptionWorker
from shared.db.models import utcnow
from shared.fhir.sources import source_clients
from shared.web import Check, Runtime


def inbox_check(runtime: Runtime) -> Check:
    """``ok`` unless a notification has waited longer than ``ready_max_queue_age`` for its fetch."""

    def check() -> str:
        try:
            with Session(runtime.engine) as session:
                oldest = state.oldest_pending(session)
        except Exception as exc:
            return f"unknown: {type(exc).__name__}"
        limit = runtime.settings.ready_max_queue_age
        if oldest is not None and utcnow() - oldest > limit:
            return f"stuck: a notification has waited more than {int(limit.total_seconds())} s for its fetch"
        return "ok"

    return check


def install(runtime: Runtime) -> SubscriptionWorker:
    worker = SubscriptionWorker(runtime.settings, runtime.engine, source_clients(runtime))
    runtime.state["subscription_worker"] = worker
    runtime.checks.setdefault("inbox", inbox_check(runtime))
    if any(s.fhir_base_url is not None for s in runtime.settings.config.sources):
        runtime.background.append(("subscriptions", worker.run_forever))
    return worker
