"""Feedback on cards (CDS Hooks 2.0 "Feedback"): stored idempotently, counted per pathway.

A repeated (service, card, outcome, outcomeTimestamp) is a re-delivery and changes nothing.
Unknown card uuids are accepted (cards are transient; the EHR may send feedback late).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter, Gauge
from sqlmodel import Session, select

from services.recommender.cds_hooks.models import FeedbackRequest
from shared.db.models import AuditLog, CdsFeedback

FEEDBACK = Counter(
    "pinpoint_cds_feedback_total",
    "CDS card feedback received (new, not re-deliveries)",
    ["service", "pathway", "outcome"],
)
OVERRIDE_RATE = Gauge(
    "pinpoint_cds_override_ratio",
    "Share of card feedback that overrode the card, per pathway, since this process started",
    ["pathway"],
)
_counts: dict[str, dict[str, int]] = defaultdict(lambda: {"accepted": 0, "overridden": 0})


def card_pathway(session: Session, card: str) -> str:
    """The pathway a card was about (from the audit row written when it was returned)."""
    detail = session.exec(
        select(AuditLog.detail).where(AuditLog.action == "cds.card", AuditLog.target == card).limit(1)
    ).first()
    if isinstance(detail, dict) and isinstance(detail.get("pathway"), str):
        return str(detail["pathway"])
    return "unknown"


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
        pathway = card_pathway(session, item.card)
        body: dict[str, Any] = item.model_dump(mode="json", exclude_none=True)
        try:
            with session.begin_nested():
                session.add(
                    CdsFeedback(
                        service_id=service_id,
                        card=item.card,
                        outcome=item.outcome,
                        outcome_at=item.outcomeTimestamp,
                        body={**body, "pinpoint": {"pathway": pathway}},
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
        counts = _counts[pathway]
        counts[outcome] += 1
        total = counts["accepted"] + counts["overridden"]
        OVERRIDE_RATE.labels(pathway).set(counts["overridden"] / total)
