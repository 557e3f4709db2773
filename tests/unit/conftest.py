"""Fixtures for the unit tests: the engine run end to end on raw FHIR resources."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pytest

from services.recommender.engine import assessment_document, evaluate
from services.recommender.policies import load_policy
from shared.domain.normalize import normalize
from shared.fhir.bundle import resolve


def run_engine(resources: Sequence[dict[str, Any]], now: str, policy: str = "cms-lcd") -> dict[str, Any]:
    """Resolve → normalise → evaluate → the CONTRACT §3 document."""
    pol = load_policy(policy)
    when = datetime.fromisoformat(now)
    facts = normalize(resolve((None, r) for r in resources))
    return assessment_document([evaluate(f, pol, now=when) for f in facts.values()], pol, when)


@pytest.fixture(scope="session")
def run() -> Callable[..., dict[str, Any]]:
    """The criteria engine on raw resources (named apart from the database ``engine`` fixture)."""
    return run_engine
