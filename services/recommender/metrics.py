"""Queue and outbox gauges for ``/metrics``, read from the database at scrape time.

The composition root registers one :class:`QueueCollector` per process on the runtime's registry.
Counters of evaluations live in ``worker.py``; rates are ``rate(pinpoint_evaluations_total[1m])``.
Labels never carry patient data.
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from services.recommender.worker import queue_state
from services.recommender.writeback import outbox_state
from shared.db.models import Outbox, utcnow
from shared.db.session import session_scope

_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]


class QueueCollector(Collector):
    """Depth and oldest-mark age of the evaluation queue; outbox depth by status and the age of
    its oldest undelivered entry."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depth, oldest, active = queue_state(self.engine)
            _, oldest_outbox = outbox_state(self.engine)
            with session_scope(self.engine) as session:
                outbox = session.execute(
                    sa.select(_OUTBOX.c.status, sa.func.count()).group_by(_OUTBOX.c.status)
                ).all()
        except Exception:
            return
        yield GaugeMetricFamily("pinpoint_queue_depth", "Dirty patients waiting for evaluation", value=depth)
        yield GaugeMetricFamily("pinpoint_queue_claimed", "Dirty patients being evaluated now", value=active)
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "pinpoint_queue_oldest_age_seconds", "Age of the oldest dirty mark", value=age
        )
        family = GaugeMetricFamily("pinpoint_outbox_depth", "Outbox entries by status", labels=["status"])
        counts = {str(status): int(n) for status, n in outbox}
        for status in ("pending", "parked", "local", "sent"):
            family.add_metric([status], counts.get(status, 0))
        yield family
        age = (utcnow() - oldest_outbox).total_seconds() if oldest_outbox is not None else 0.0
        yield GaugeMetricFamily(
            "pinpoint_outbox_oldest_age_seconds", "Age of the oldest undelivered outbox entry", value=age
        )
