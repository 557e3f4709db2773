"""Resources a subscription worker read from a source, stored through the intake pipeline.

The composition root hands an :class:`IntakeStore` to the subscription worker
(``services.ingest.subscriptions.recovery.FetchedStore``), so subscriptions never import intake.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from services.ingest.intake.bundles import explode, process_entries
from services.ingest.intake.pipeline import Rejection
from services.ingest.intake.push import keep_rejections
from services.ingest.intake.repository import delete_resource
from shared.db.session import session_scope
from shared.settings import Source


@dataclass(frozen=True)
class IntakeStore:
    engine: Engine

    def store_fetched(self, source: Source, resources: Iterable[dict[str, Any]]) -> int:
        """Store resources read from the source like a batch; rejections become dead letters."""
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in resources],
        }
        with session_scope(self.engine) as session:
            result = process_entries(session, source, explode(bundle))
        rejections = [
            Rejection(r.payload, r.reason, r.outcome, {**r.context, "fetched": True})
            for r in result.rejections
        ]
        keep_rejections(self.engine, source, "notification", rejections, "application/fhir+json")
        return sum(1 for s in result.stored if s.outcome in ("created", "updated"))

    def delete_gone(self, source: Source, keys: list[tuple[str, str]]) -> None:
        with session_scope(self.engine) as session:
            for rtype, rid in keys:
                delete_resource(session, source.id, rtype, rid)
