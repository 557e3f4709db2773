"""The recommender's parts, built once per process from settings.

:class:`Recommender` holds what the HTTP routes need (the one door to the engine, the evidence
links, the CDS Hooks parts); :class:`~services.recommender.evaluation.Evaluation` (a module of
its own: ``pinpoint worker`` loads no web framework) what the background evaluation needs. The
process's composition root (``services/server.py``) builds them, registers their routes, checks,
gauges and background tasks, and closes them on shutdown. Routes receive :class:`Recommender`
through :data:`RecommenderDep`; the worker and the delivery loop receive their parts through their
constructors. Tests replace a seam on the built object (``parts.cds.clock``, ``parts.cds.assessor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine

from services.recommender.assessor import Assessor
from services.recommender.cds_hooks.service import Cds
from services.recommender.evidence.links import EvidenceLinks
from services.recommender.evidence.smart import SmartLaunch
from services.recommender.evidence.snapshots import purge_forever
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
