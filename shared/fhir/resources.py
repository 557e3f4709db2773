"""The one import surface of the FHIR models: explicitly R4B (the package top level is R5).

Pinpoint's own output (CarePlan, ServiceRequest, Provenance, DetectedIssue) is checked here
before it is stored; input is validated by ingest on the raw dict first (STYLE.md "FHIR").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

__all__ = ["MODELS", "CarePlan", "DetectedIssue", "Provenance", "ServiceRequest", "validate_r4"]

MODELS: dict[str, Any] = {
    "CarePlan": CarePlan,
    "DetectedIssue": DetectedIssue,
    "Provenance": Provenance,
    "ServiceRequest": ServiceRequest,
}


def validate_r4(resource: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem when ``resource`` is not valid R4(B)."""
    rtype = resource.get("resourceType")
    model = MODELS.get(str(rtype))
    if model is None:
        raise ValueError(f"no R4B model registered for {rtype!r}")
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{rtype} invalid at {where}: {err['msg']}") from None
