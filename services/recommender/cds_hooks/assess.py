"""The ONE seam between the CDS service and the criteria engine.

``assess(resources, policy_name, now)`` returns the CONTRACT §3 assessment document for the raw
FHIR resources of one call (history + draft orders). Everything else in ``cds_hooks`` consumes
that document only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from services.recommender.engine import assessment_document, evaluate
from services.recommender.engine.policy import Policy, load_policy
from shared.domain.normalize import normalize

Assessor = Callable[[Sequence[dict[str, Any]], str, datetime], dict[str, Any]]


@cache
def _policy(name: str) -> Policy:
    return load_policy(name)


def assess(resources: Sequence[dict[str, Any]], policy_name: str, now: datetime) -> dict[str, Any]:
    """Normalise (which applies the relevance filter) → evaluate → §3 document (the engine's
    public API, as the worker and the evidence page use it)."""
    policy = _policy(policy_name)
    facts = normalize(resources)
    results = [evaluate(f, policy, now=now) for f in facts.values()]
    document: dict[str, Any] = assessment_document(results, policy, now)
    return document
