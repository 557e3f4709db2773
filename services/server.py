"""The composition root: builds the process for a role from settings."""

from __future__ import annotations

import gc
from enum import StrEnum

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from services.ingest import app as ingest
from services.recommender import app as recommender
from shared.db.session import make_engine, migrations_at_head, upgrade
from shared.errors import ConfigError
from shared.settings import Settings
from shared.web import Runtime, create_app


class Role(StrEnum):
    all = "all"
    ingest = "ingest"
    recommender = "recommender"
    worker = "worker"


#: Young-generation threshold for a long-running server: one CDS call allocates thousands of
#: containers (parsed prefetch, facts, cards); at CPython's default (700) that meant several
#: collections per call and a full collection every few hundred calls.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Once the process has imported and built everything: move the startup heap (~140 k
    objects: modules, models, routes) out of the collector's sight and collect less often.
    Measured on the CDS benchmark: full collections of ~85 ms each, a quarter of the CPU under
    load and the source of the latency tail, are gone (Python docs, gc.freeze)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def prepare_database(settings: Settings) -> Engine:
    """SQLite is migrated at start (embedded); PostgreSQL must already be at head (a deploy job)."""
    engine = make_engine(settings.database_url)
    if settings.is_sqlite:
        upgrade(engine)
    elif not migrations_at_head(engine):
        engine.dispose()
        raise ConfigError("database migrations are not at head: run `pinpoint db upgrade` first")
    return engine


def build_app(settings: Settings, role: Role = Role.all, engine: Engine | None = None) -> FastAPI:
    runtime = Runtime(settings=settings, engine=engine or make_engine(settings.database_url))
    app = create_app(runtime, title=f"Pinpoint ({role.value})")
    if role in (Role.all, Role.ingest):
        ingest.install(app, runtime)
    if role in (Role.all, Role.recommender):
        recommender.install(app, runtime)
    if role in (Role.all, Role.worker):
        recommender.install_worker(runtime)
    return app
