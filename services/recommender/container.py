"""The recommender's parts, built once per process from settings.

:class:`Recommender` holds what the HTTP routes need (the one door to the engine, the evidence
links, the CDS Hooks parts); :class:`Evaluation` what the background evaluation needs (the worker
and, when write-back is configured, the delivery loop with its own HTTP client). The process's
composition root (``services/server.py``) builds them, registers their routes, checks, gauges
and background tasks, and closes them on shutdown. Routes receive :class:`Recommender` through
:data:`RecommenderDep`; the worker and the delivery loop receive their parts through their
constructors. Tests replace a seam on the built object (``parts.cds.clock``, ``parts.cds.assessor``).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Annotated

import httpx
from fastapi import Depends, Request
from sqlalchemy.engine import Engine

from services.recommender.assessor import Assessor
from services.recommender.cds_hooks.service import Cds
from services.recommender.evidence.links import EvidenceLinks
from services.recommender.evidence.smart import SmartLaunch
from services.recommender.evidence.snapshots import purge_forever
from services.recommender.worker import DrainStats, Worker, run_forever
from services.recommender.writeback import DeliveryStats, deliver_once, http_client_for, run_delivery
from shared.fhir.sources import SourceClients
from shared.settings import Settings


@dataclass
class Recommender:
    """What the recommender's routes use; one per process."""

    settings: Settings
    engine: Engine
    assessor: Assessor
    links: EvidenceLinks
    cds: Cds

    smart: SmartLaunch

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: Engine,
        assessor: Assessor | None = None,
        sources: SourceClients | None = None,
    ) -> Recommender:
        """From settings; an invalid ``PINPOINT_POLICY`` is a ConfigError (the start fails)."""
        assessor = assessor or Assessor.configured(settings.policy)
        links = EvidenceLinks.from_settings(settings)
        cds = Cds.build(settings, engine, assessor, links, sources)
        return cls(settings, engine, assessor, links, cds, SmartLaunch.build(settings))

    async def purge_snapshots(self) -> None:
        """Background task: delete evidence snapshots past ``cds.evidence_retention``."""
        await purge_forever(self.engine, self.cds.clock)

    async def aclose(self) -> None:
        await self.cds.aclose()
        await self.smart.aclose()


async def recommender_of(request: Request) -> Recommender:
    """Async on purpose: FastAPI runs a sync dependency in its thread pool, a hop per request."""
    parts: Recommender = request.app.state.recommender
    return parts


RecommenderDep = Annotated[Recommender, Depends(recommender_of)]


@dataclass
class Evaluation:
    """The background evaluation of one process: the worker loop and the write-back delivery."""

    settings: Settings
    engine: Engine
    worker: Worker
    writeback_http: httpx.AsyncClient | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(cls, settings: Settings, engine: Engine, assessor: Assessor | None = None) -> Evaluation:
        assessor = assessor or Assessor.configured(settings.policy)
        http = http_client_for(settings) if settings.config.writeback is not None else None
        return cls(settings, engine, Worker(engine, settings, assessor), http)

    async def run_worker(self) -> None:
        await run_forever(self.worker, self.stop)

    async def run_writeback(self) -> None:
        if self.writeback_http is not None:
            await run_delivery(self.engine, self.settings, self.stop, self.writeback_http)

    async def run(self) -> None:
        """Both loops until :meth:`aclose` (``pinpoint worker``)."""
        await asyncio.gather(self.run_worker(), self.run_writeback())

    async def once(self) -> tuple[DrainStats, DeliveryStats]:
        """``pinpoint worker --once``: drain the queue, then deliver the outbox once (CONTRACT §1)."""
        stats = await asyncio.to_thread(self.worker.drain)
        delivered = await deliver_once(self.engine, self.settings, self.writeback_http)
        return stats, delivered

    def request_stop(self) -> None:
        """Ask both loops to end after the patient or entry in hand (graceful stop)."""
        self.stop.set()

    async def aclose(self) -> None:
        """Stop, then close the write-back client (after the loops have ended)."""
        self.stop.set()
        if self.writeback_http is not None:
            await self.writeback_http.aclose()
