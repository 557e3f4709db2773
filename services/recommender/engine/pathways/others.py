"""Sacroiliac, epidural, knee pathways and cumulative steroid exposure (issue 4; not yet)."""

from __future__ import annotations

from datetime import datetime

from services.recommender.engine.model import Alert, Assessment, OrderCheck
from services.recommender.engine.relief import PatientContext
from shared.domain.facts import Order


def assessments(ctx: PatientContext, now: datetime) -> list[Assessment]:
    return []


def order_check(ctx: PatientContext, order: Order, now: datetime) -> OrderCheck | None:
    return None


def cumulative_steroid_alert(ctx: PatientContext, now: datetime) -> Alert | None:
    return None
