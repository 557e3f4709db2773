"""Pinpoint's criteria engine: pure rules from facts to verdicts (no I/O, no logging, no clock).

Public API: :func:`evaluate` (one patient), :func:`assessment_document` (CONTRACT §3),
:func:`render_text`, :class:`Policy` / :class:`PolicyError` (policies are read by
``services/recommender/policies``).
"""

from __future__ import annotations

from datetime import datetime

from services.recommender.engine import alerts as _alerts
from services.recommender.engine import documentation as _documentation
from services.recommender.engine import outcomes as _outcomes
from services.recommender.engine.document import assessment_document, render_text, used_sources
from services.recommender.engine.model import Alert, Assessment, OrderCheck, PatientResult, Target
from services.recommender.engine.pathways import dispatch, facet, steroid
from services.recommender.engine.policy import Policy, PolicyError
from services.recommender.engine.relief import PatientContext
from shared.domain import terminology as t
from shared.domain._frozen import quick_replace
from shared.domain.facts import PatientFacts

_FACET_KINDS = frozenset({t.FACET_BLOCK, t.FACET_BLOCK_US, t.FACET_RFA})
#: pathways whose procedure injects a corticosteroid
STEROID_PATHWAYS = frozenset({"knee-steroid", "esi", "sij-therapeutic", "facet-therapeutic"})
_GOING_AHEAD = frozenset({"supported", "partially-supported", "deferred", "needs-review"})


def evaluate(
    facts: PatientFacts, policy: Policy, *, now: datetime, ctx: PatientContext | None = None
) -> PatientResult:
    """Assessments, order checks and alerts for one patient at ``now`` (CONTRACT §3, §6).
    ``ctx``: the patient's :class:`PatientContext` when the caller keeps it (its indexes serve
    the evidence snapshot drawn after the answer); built here otherwise."""
    if ctx is None:
        ctx = PatientContext(facts, policy)
    assessments: list[Assessment] = facet.assessments(ctx, now) + dispatch.assessments(ctx, now)
    checks: list[OrderCheck] = []
    for order in facts.orders:
        check = (
            facet.order_check(ctx, order, now)
            if order.kind in _FACET_KINDS
            else dispatch.order_check(ctx, order, now)
        )
        if check is not None:
            checks.append(check)
    alert_list: list[Alert] = _alerts.block_alerts(ctx, now)
    freq = _alerts.steroid_frequency_alert(ctx, now)
    if freq is not None:
        alert_list.append(freq)
    cumulative = steroid.cumulative_steroid_alert(ctx, now)
    if cumulative is not None:
        alert_list.append(cumulative)
        if cumulative.detail is not None:
            # never suggest a steroid silently beside the yearly-steroid alert: name it
            caution = (cumulative.detail,)
            assessments = [
                quick_replace(a, cautions=caution) if a.next_step and a.pathway in STEROID_PATHWAYS else a
                for a in assessments
            ]
            checks = [
                quick_replace(c, cautions=caution)
                if c.pathway in STEROID_PATHWAYS and c.verdict in _GOING_AHEAD
                else c
                for c in checks
            ]
    on = now.date()
    assessments = [
        quick_replace(a, documentation=_documentation.check(ctx, a.pathway, a.evidence, on, a.target.side))
        for a in assessments
    ]
    orders = {o.ref: o for o in facts.orders}
    checks = [
        quick_replace(
            c,
            documentation=_documentation.check(
                ctx,
                c.pathway,
                c.evidence,
                orders[c.order].requested or on,
                orders[c.order].side,
                orders[c.order].codes,
            ),
        )
        for c in checks
    ]
    return PatientResult(
        facts.patient,
        tuple(assessments),
        tuple(checks),
        tuple(alert_list),
        _outcomes.outcomes(ctx, now),
    )


__all__ = [
    "Alert",
    "Assessment",
    "OrderCheck",
    "PatientContext",
    "PatientResult",
    "Policy",
    "PolicyError",
    "Target",
    "assessment_document",
    "evaluate",
    "render_text",
    "used_sources",
]
