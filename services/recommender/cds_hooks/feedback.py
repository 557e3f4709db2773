"""Feedback on cards (CDS Hooks 2.0 "Feedback"): stored idempotently, counted per pathway.

A repeated (service, card, outcome, outcomeTimestamp) is a re-delivery and changes nothing.
Unknown card uuids are accepted (cards are transient; the EHR may send feedback late).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.recommender.cds_hooks.models import FeedbackRequest
from shared.db.models import AuditLog, CdsFeedback

FEEDBACK = Counter(
    "pinpoint_cds_feedback_total",
    "CDS card feedback received (new, not re-deliveries)",
    ["service", "pathway", "outcome"],
)


_CARD_KEYS = ("pathway", "verdict", "policy", "policyVersion")


def card_context(session: Session, card: str) -> dict[str, str]:
    """What a card was about — pathway, verdict, policy id and version — from the audit row
    written when it was returned (``pathway`` is ``unknown`` for a card Pinpoint never sent)."""
    detail = session.exec(
        select(AuditLog.detail).where(AuditLog.action == "cds.card", AuditLog.target == card).limit(1)
    ).first()
    if not isinstance(detail, dict):
        return {"pathway": "unknown"}
    found = {k: str(detail[k]) for k in _CARD_KEYS if isinstance(detail.get(k), str)}
    return {"pathway": "unknown", **found}


def store_feedback(
    session: Session, service_id: str, request: FeedbackRequest, now: datetime
) -> list[tuple[str, str]]:
    """Insert new feedback rows; returns (pathway, outcome) of each new one (for the metrics)."""
    new: list[tuple[str, str]] = []
    for item in request.feedback:
        exists = session.exec(
            select(CdsFeedback.id).where(
                CdsFeedback.service_id == service_id,
                CdsFeedback.card == item.card,
                CdsFeedback.outcome == item.outcome,
                CdsFeedback.outcome_at == item.outcomeTimestamp,
            )
        ).first()
        if exists is not None:
            continue
        about = card_context(session, item.card)
        pathway = about["pathway"]
        body: dict[str, Any] = item.model_dump(mode="json", exclude_none=True)
        try:
            with session.begin_nested():
                session.add(
                    CdsFeedback(
                        service_id=service_id,
                        card=item.card,
                        outcome=item.outcome,
                        outcome_at=item.outcomeTimestamp,
                        body={**body, "pinpoint": about},
                        received_at=now,
                    )
                )
        except sa.exc.IntegrityError:
            continue  # a concurrent re-delivery won the race
        new.append((pathway, item.outcome))
    return new


def count_feedback(service_id: str, new: list[tuple[str, str]]) -> None:
    """Metrics after the commit (so a rolled-back request counts nothing)."""
    for pathway, outcome in new:
        FEEDBACK.labels(service_id, pathway, outcome).inc()


def override_ratios(session: Session) -> dict[str, float]:
    """Overridden / (accepted + overridden) per pathway over every feedback row in the database:
    the same figure on every replica."""
    pathway = CdsFeedback.body["pinpoint"]["pathway"].as_string()  # type: ignore[index]
    rows = session.exec(
        select(pathway, CdsFeedback.outcome, sa.func.count()).group_by(pathway, CdsFeedback.outcome)
    ).all()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"accepted": 0, "overridden": 0})
    for path, outcome, n in rows:
        if outcome in ("accepted", "overridden"):
            counts[path or "unknown"][outcome] += int(n)
    return {
        p: c["overridden"] / (c["accepted"] + c["overridden"]) for p, c in counts.items() if any(c.values())
    }


class OverrideRatioCollector(Collector):
    """``pinpoint_cds_override_ratio{pathway}`` computed at scrape time from the shared store,
    so every replica reports the same figure (registered on the runtime's registry by the
    composition root)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "pinpoint_cds_override_ratio",
            "Share of card feedback that overrode the card, per pathway, over all replicas (database)",
            labels=["pathway"],
        )
        try:
            with Session(self.engine) as session:
                ratios = override_ratios(session)
        except sa.exc.SQLAlchemyError:
            ratios = {}
        for pathway, ratio in sorted(ratios.items()):
            gauge.add_metric([pathway], ratio)
        yield gauge
