"""The pure helpers ingest needs from the facet engine's ``shared.domain`` / ``shared.fhir.bundle``.

Until those modules are merged into this branch, a small local fallback with the same
signatures is used (:mod:`services.ingest.intake._fallback`), so the two branches can move in
parallel. Ingest code imports these names from here only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from services.ingest.intake import _fallback


class RelevanceLike(Protocol):
    @property
    def kept(self) -> bool: ...
    @property
    def category(self) -> str: ...
    @property
    def reason(self) -> str: ...


Classify = Callable[[Mapping[str, Any]], RelevanceLike]
PatientReference = Callable[[Mapping[str, Any]], "str | None"]
Normalize = Callable[[Mapping[str, Any]], "dict[str, Any] | None"]
ResourceId = Callable[[Mapping[str, Any], "str | None"], str]


def _load() -> tuple[Classify, PatientReference, Normalize, ResourceId, bool]:
    try:
        relevance = importlib.import_module("shared.domain.relevance")
        normalize = importlib.import_module("shared.domain.normalize")
        bundle = importlib.import_module("shared.fhir.bundle")
        return (
            relevance.classify,
            relevance.patient_reference,
            normalize.normalize_resource,
            bundle.resource_id,
            True,
        )
    except (ImportError, AttributeError):
        return (
            _fallback.classify,
            _fallback.patient_reference,
            _fallback.normalize_resource,
            _fallback.resource_id,
            False,
        )


classify, patient_reference, normalize_resource, resource_id, USING_SHARED_DOMAIN = _load()
