"""The composition root: builds each process of Pinpoint from settings.

- :func:`build_app` — an HTTP process for a role (``pinpoint serve --role …``): the runtime
  (settings, database engine, readiness checks, background tasks, shutdown hooks, the metrics
  registry), the ingest parts (:class:`~services.ingest.container.Ingest`) and the recommender
  parts (:class:`~services.recommender.container.Recommender`,
  :class:`~services.recommender.evaluation.Evaluation`), their routers, checks, gauges and loops.
  The worker process (``pinpoint worker``) is built by ``services/cli.py``, without this module
  and its web framework.
- :func:`replayers` — the dead-letter replayers of the recommender's kinds, handed to ingest.

Nothing else creates a long-lived part: routes receive them through FastAPI dependencies
(``IngestDep``, ``RecommenderDep``), loops through their constructors.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from services.ingest.container import Ingest
from services.ingest.deadletters import api as deadletters_api
from services.ingest.intake import api as intake_api
from services.recommender import whatif
from services.recommender.assessor import Assessor
from services.recommender.cds_hooks import api as cds_api
from services.recommender.cds_hooks import report as feedback_report
from services.recommender.cds_hooks.feedback import OverrideRatioCollector
from services.recommender.container import Recommender
from services.recommender.evaluation import Evaluation
from services.recommender.evidence import api as evidence_api
from services.recommender.metrics import QueueCollector
from services.recommender.outcomes import api as outcomes_api
from services.recommender.patients import api as patients_api
from services.recommender.suggestions import api as suggestions_api
from services.recommender.worker import queue_check
from services.recommender.worklist import api as worklist_api
from services.recommender.writeback import outbox_check, replay_delivery
from shared.db.deadletters import Replayer
from shared.db.session import make_engine
from shared.fhir.sources import SourceClients
from shared.settings import Settings
from shared.web import Runtime, create_app


class Role(StrEnum):
    all = "all"
    ingest = "ingest"
    recommender = "recommender"
    worker = "worker"


def replayers() -> Mapping[str, Replayer]:
    """Dead-letter kinds that ingest does not replay itself, by kind."""
    return {"delivery": replay_delivery}


def build_app(settings: Settings, role: Role = Role.all, engine: Engine | None = None) -> FastAPI:
    runtime = Runtime(settings=settings, engine=engine or make_engine(settings.database_url))
    app = create_app(runtime, title=f"Pinpoint ({role.value})")
    sources = SourceClients()
    runtime.on_shutdown.append(sources.aclose)
    assessor = Assessor.configured(settings.policy) if role != Role.ingest else None
    if role in (Role.all, Role.ingest):
        ingest = Ingest.build(settings, runtime.engine, sources, replayers())
        app.state.ingest = ingest
        app.include_router(intake_api.router)
        app.include_router(deadletters_api.router)
        runtime.checks.setdefault("inbox", ingest.inbox_check)
        runtime.on_shutdown.append(ingest.aclose)
        if ingest.subscribes:
            runtime.background.append(("subscriptions", ingest.subscriptions.run_forever))
        else:  # topic notifications may still arrive: their gaps are counted, the log pruned
            runtime.background.append(("subscription-gaps", ingest.subscriptions.watch_gaps))
    if role in (Role.all, Role.recommender):
        recommender = Recommender.build(settings, runtime.engine, assessor, sources)
        app.state.recommender = recommender
        for router in (
            cds_api.router,
            suggestions_api.router,
            patients_api.router,
            evidence_api.router,
            worklist_api.router,  # / and /patients (HTML), /patients.csv
            feedback_report.router,  # /feedback (HTML)
            whatif.router,  # /whatif (HTML)
            outcomes_api.router,  # /outcomes (HTML)
        ):
            app.include_router(router)
        runtime.metrics.register(OverrideRatioCollector(runtime.engine))  # from the shared store
        runtime.background.append(("evidence-snapshots", recommender.purge_snapshots))
        # A replica that cannot record what it answers is taken out of rotation.
        runtime.checks.setdefault("audit", recommender.cds.audit.health)
        runtime.on_shutdown.append(recommender.aclose)
    if role in (Role.all, Role.recommender, Role.worker):
        runtime.checks.setdefault("queue", queue_check(runtime.engine, settings.ready_max_queue_age))
        runtime.metrics.register(QueueCollector(runtime.engine))
    if role in (Role.all, Role.worker):
        evaluation = Evaluation.build(settings, runtime.engine, assessor)
        app.state.evaluation = evaluation
        runtime.background.append(("worker", evaluation.run_worker))
        runtime.checks.setdefault("outbox", outbox_check(runtime.engine, settings.ready_max_outbox_age))
        if settings.config.writeback is not None:
            runtime.background.append(("writeback", evaluation.run_writeback))
        runtime.on_shutdown.append(evaluation.aclose)
    return app
