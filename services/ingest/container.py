"""The ingest service's parts, built once per process from settings.

:class:`Ingest` holds the group writer of pushes and notifications (small bodies arriving
together share one transaction and one commit, :class:`~shared.db.group_commit.GroupTransaction`;
drained on graceful stop), the subscription worker (drains the inbox of id-only notifications,
keeps the sources' subscriptions in shape) and the replayers of other services' dead-letter kinds,
handed in by the process's composition root (``services/server.py``), which also registers the
routes, the ``inbox`` readiness check and the background task. Routes receive it through
:data:`IngestDep`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.ingest.intake.fetched import IntakeStore
from services.ingest.intake.push import begin_batch, end_batch
from services.ingest.subscriptions import state
from services.ingest.subscriptions.recovery import SubscriptionWorker
from shared.db.deadletters import Replayer
from shared.db.group_commit import GroupTransaction
from shared.db.models import utcnow
from shared.fhir.sources import SourceClients
from shared.settings import Settings

#: Writer threads of the push writer on PostgreSQL: while one waits for its round trips and its
#: commit's flush to disk, the next takes the pushes that arrived meanwhile. Measured (notify
#: benchmark, wrk with 8 connections, load ~6): one writer acknowledged fewer than 200
#: notifications/s with its thread mostly waiting; 4 fell short of the thread pool they replace on
#: the Medplum shape (700 vs 1,240/s); 8: 1,760/s vs 1,260 at 0.51 vs 0.69 ms CPU each.
PG_WRITERS = 8


@dataclass
class Ingest:
    settings: Settings
    engine: Engine
    sources: SourceClients
    subscriptions: SubscriptionWorker
    writer: GroupTransaction
    replayers: Mapping[str, Replayer] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: Engine,
        sources: SourceClients,
        replayers: Mapping[str, Replayer] | None = None,
    ) -> Ingest:
        worker = SubscriptionWorker(settings, engine, sources, IntakeStore(engine))
        writer = GroupTransaction(
            engine,
            writers=PG_WRITERS if engine.dialect.name == "postgresql" else 1,  # SQLite: one writer
            begin=begin_batch,
            before_commit=end_batch,
        )
        return cls(settings, engine, sources, worker, writer, dict(replayers or {}))

    async def aclose(self) -> None:
        """Graceful stop: every push handed to the writer is committed (their callers answered)."""
        await self.writer.close()

    @property
    def subscribes(self) -> bool:
        """Whether any source has a FHIR server to subscribe to (else no background task)."""
        return any(s.fhir_base_url is not None for s in self.settings.config.sources)

    def inbox_check(self) -> str:
        """``ok`` unless a notification has waited longer than ``ready_max_queue_age`` for its fetch."""
        try:
            with Session(self.engine) as session:
                oldest = state.oldest_pending(session)
        except Exception as exc:
            return f"unknown: {type(exc).__name__}"
        limit = self.settings.ready_max_queue_age
        if oldest is not None and utcnow() - oldest > limit:
            return f"stuck: a notification has waited more than {int(limit.total_seconds())} s for its fetch"
        return "ok"


async def ingest_of(request: Request) -> Ingest:
    """Async on purpose: FastAPI runs a sync dependency in its thread pool, a hop per request."""
    parts: Ingest = request.app.state.ingest
    return parts


IngestDep = Annotated[Ingest, Depends(ingest_of)]
