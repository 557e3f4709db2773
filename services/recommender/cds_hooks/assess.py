"""The ONE seam between the CDS service and the criteria engine.

``assess(resources, policy_name, now)`` returns the CONTRACT §3 assessment document for the raw
FHIR resources of one call (history + draft orders). Everything else in ``cds_hooks`` consumes
that document only, so wiring or swapping the engine touches this file alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from shared.errors import PinpointError

Assessor = Callable[[Sequence[dict[str, Any]], str, datetime], dict[str, Any]]


class EngineUnavailable(PinpointError):
    def __init__(self) -> None:
        super().__init__("The criteria engine is not installed in this build", 503, "not-supported")


@cache
def _policy(name: str) -> Any:
    from services.recommender.engine.policy import load_policy

    return load_policy(name)


def assess(resources: Sequence[dict[str, Any]], policy_name: str, now: datetime) -> dict[str, Any]:
    """Relevance filter → normalise → evaluate → §3 document (the engine's public API)."""
    try:
        from services.recommender.engine import assessment_document, evaluate
        from shared.domain.normalize import normalize
        from shared.domain.relevance import classify
    except ImportError:
        raise EngineUnavailable() from None
    policy = _policy(policy_name)
    kept = [r for r in resources if classify(r).kept]
    facts = normalize(kept)
    results = [evaluate(f, policy, now=now) for f in facts.values()]
    document: dict[str, Any] = assessment_document(results, policy, now)
    return document
