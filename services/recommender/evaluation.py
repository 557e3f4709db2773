"""The background evaluation of a process: the worker loop and, when write-back is configured,
the delivery loop with its own HTTP client (``pinpoint worker``, and ``pinpoint serve`` for the
roles that evaluate). Built by the composition roots (``services/cli.py``, ``services/server.py``).

Apart from :mod:`services.recommender.container` and free of the web framework: the worker
process loads only what it runs.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import httpx
from sqlalchemy.engine import Engine

from services.recommender.assessor import Assessor
from services.recommender.worker import DrainStats, Worker, run_forever
from services.recommender.writeback import DeliveryStats, deliver_once, http_client_for, run_delivery
from shared.settings import Settings


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
        """The parts (an invalid policy fails here, before any loop starts)."""
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
